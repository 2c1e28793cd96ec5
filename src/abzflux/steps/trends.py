"""(e) trends: Theil–Sen + Mann–Kendall (Zhang) trends per pixel (annual, JJA, non-summer, each
month; drivers), area shares, greening overlap, the GPP/Reco attribution of NEE trends, zone
budget series, and sites with more than seven years of year-round data (:mod:`abzflux.trends`).

The maps are computed band by band of grid rows and written into the Zarr store region by
region, so memory is bounded by one band's monthly series (``trends.trend_band_rows``), not the
domain (a 1-km domain's 240 months do not fit in memory)."""

from __future__ import annotations

import logging

import pandas as pd
import xarray as xr

from .. import _atomic
from .. import layout as L
from .. import trends as trends_mod
from ..context import Context
from ..formats import grid_crs, write_crs
from ..vocab import FLUXES
from .budgets import PERMAFROST_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def run(ctx: Context, progress=None, band_rows: int | None = None) -> None:
    own_bar = progress is None
    if own_bar:
        progress = ctx.progress("trends: row bands")
    try:
        _run(ctx, progress, band_rows)
    finally:
        if own_bar and progress is not None:
            progress(None, None)


def _run(ctx: Context, progress, band_rows: int | None) -> None:
    lay = ctx.layout
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    zones = ctx.zones()
    pred = ctx.predictors()
    y0, y1 = ctx.years()
    out = fresh_dir(lay.tmp(L.TRENDS))
    drv = pred.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    ny, nx = up.sizes["y"], up.sizes["x"]
    nrow = band_rows or trends_mod.trend_band_rows(ny, nx, up.sizes["time"], ctx.cfg.run.tile)
    bands = [slice(a, min(a + nrow, ny)) for a in range(0, ny, nrow)]
    store = out / L.inner(L.TREND_MAPS)
    crs = grid_crs(pred, ctx.cfg.inputs.predictors)
    method, preserve = ctx.cfg.trends.prewhitening, ctx.cfg.trends.preserve_range_for_sig_test
    for i, band in enumerate(bands):
        ds = trends_mod.trend_band(up, drv, band, FLUXES, method, preserve)
        if i == 0:  # the store's layout (variables, dtypes) comes from the first band
            tmpl = write_crs(trends_mod.maps_template(ds, up.y, up.x, nrow), crs)
            tmpl.attrs.update(
                Conventions="CF-1.8",
                title="abzflux pixel-wise trends (Theil-Sen slope, Mann-Kendall p with "
                + ("Zhang" if method == "zhang" else "Yue-Pilon")
                + " prewhitening)",
                period=f"{y0}-{y1}",
                preserve_range_for_sig_test=int(preserve),
            )
            tmpl.to_zarr(store, mode="w", compute=False, consolidated=False)
        ds.drop_vars([c for c in ds.coords if c not in ("y", "x")]).drop_vars(["y", "x"]).to_zarr(
            store, region={"y": band, "x": slice(0, nx)}, consolidated=False
        )
        if progress is not None:
            progress(i + 1, len(bands))
    ds = xr.open_zarr(store, consolidated=False)
    trends_mod.trend_area_shares(ds, zones).to_csv(out / "area_shares.csv", index=False)
    trends_mod.budget_trends(pd.read_csv(lay.budgets_annual), method, preserve).to_csv(
        out / L.inner(L.BUDGET_TRENDS), index=False
    )
    trends_mod.site_trends(pd.read_parquet(lay.sites), method=method, preserve_range_for_sig_test=preserve).to_csv(
        out / L.inner(L.SITE_TRENDS), index=False
    )
    _atomic.replace(out, lay.trends)


SPEC = StepSpec(
    "trends",
    run,
    writes=(L.TRENDS,),
    depends=("budgets",),
    reads=(L.UPSCALED, L.BUDGETS_ANNUAL, L.SITES),
    config_keys=("run.years", "trends.prewhitening", "trends.preserve_range_for_sig_test") + PERMAFROST_KEYS,
    inputs=("predictors", "zones"),
    summary="per-pixel and zone-budget Theil–Sen/Mann–Kendall trends, area shares, attribution, site trends",
)
