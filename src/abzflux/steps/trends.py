"""(e) trends: Theil–Sen + Mann–Kendall (Zhang) trends per pixel (annual, JJA, non-summer, each
month; drivers' annual, JJA and non-summer means; annual fire emissions and NEE + fire), area
shares, greening overlap, the GPP/Reco attribution of NEE trends, zone budget series (annual,
and per season and calendar month), the drivers' zone means per season and month, and sites
with more than seven years of year-round data (:mod:`abzflux.trends`).

The maps are computed band by band of grid rows and written into the Zarr store region by
region, so memory is bounded by one band's monthly series (``trends.trend_band_rows``), not the
domain (a 1-km domain's 240 months do not fit in memory)."""

from __future__ import annotations

import logging

import pandas as pd
import xarray as xr

from .. import _atomic
from .. import budgets as budgets_mod
from .. import layout as L
from .. import network as network_mod
from .. import trends as trends_mod
from ..context import Context
from ..formats import consolidate, grid_crs, write_crs
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
    fire = ctx.fire()
    if fire is not None:  # the fire years (from fire.first_year) within the run's years
        fire = fire.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    for i, band in enumerate(bands):
        ds = trends_mod.trend_band(up, drv, band, FLUXES, method, preserve, fire=fire)
        if i == 0:  # the store's layout (variables, dtypes) comes from the first band
            tmpl = write_crs(trends_mod.maps_template(ds, up.y, up.x, nrow), crs)
            tmpl.attrs.update(
                Conventions="CF-1.8",
                title="abzflux pixel-wise trends (Theil-Sen slope, Mann-Kendall p with "
                + ("Zhang" if method == "zhang" else "Yue-Pilon")
                + " prewhitening)",
                period=f"{y0}-{y1}",
                preserve_range_for_sig_test=int(preserve),
                history="abzflux trends: per-pixel Theil-Sen slopes and Mann-Kendall tests of the yearly series",
            )
            tmpl.to_zarr(store, mode="w", compute=False, consolidated=False)
        ds.drop_vars([c for c in ds.coords if c not in ("y", "x")]).drop_vars(["y", "x"]).to_zarr(
            store, region={"y": band, "x": slice(0, nx)}, consolidated=False
        )
        if progress is not None:
            progress(i + 1, len(bands))
    consolidate(store)
    ds = xr.open_zarr(store, consolidated=False)
    pd.concat(
        [trends_mod.trend_area_shares(ds, zones), trends_mod.fire_area_shares(ds, zones)], ignore_index=True
    ).to_csv(out / "area_shares.csv", index=False)
    _season_tables(ctx, drv, out, method, preserve)
    bt = trends_mod.budget_trends(pd.read_csv(lay.budgets_annual), method, preserve)
    if lay.members_monthly.exists():  # the bootstrap ± of each trend: SD of the members' slopes
        members = trends_mod.member_annual(pd.read_parquet(lay.members_monthly))
        bt = bt.merge(trends_mod.budget_trend_sd(members, method, preserve), on=["zone", "flux"], how="left")
    if ctx.cfg.uncertainty.network and lay.network_trends.exists():
        bt = network_mod.add_trend_term(bt, pd.read_csv(lay.network_trends))
        if "slope_sd" in bt:  # the trend's total ±: bootstrap and network terms in quadrature
            bt["slope_sd_total"] = network_mod.total_sd(bt.slope_sd, bt.slope_sd_network)
    bt.to_csv(out / L.inner(L.BUDGET_TRENDS), index=False)
    trends_mod.site_trends(pd.read_parquet(lay.sites), method=method, preserve_range_for_sig_test=preserve).to_csv(
        out / L.inner(L.SITE_TRENDS), index=False
    )
    _atomic.replace(out, lay.trends)


def _season_tables(ctx: Context, drv: xr.Dataset, out, method: str, preserve: bool) -> None:
    """The zone budgets' trends per season and month, and the drivers' zone means (land-area
    weighted, monthly) with their trends per season and month."""
    lay = ctx.layout
    trends_mod.seasonal_budget_trends(
        pd.read_csv(lay / L.BUDGETS_SEASONAL), pd.read_csv(lay / L.BUDGETS_MONTHLY), method, preserve
    ).to_csv(out / L.inner(L.SEASONAL_BUDGET_TRENDS), index=False)
    names = [v for v in trends_mod.DRIVERS if v in drv]
    if not names:
        return
    zones = ctx.zones()
    mon = budgets_mod.monthly_budgets(drv[names], zones)  # veg=None: no vegetation-type zones
    means = trends_mod.driver_zone_means(mon, budgets_mod.zone_areas_m2(zones), budgets_mod.TG)
    means.to_csv(out / L.inner(L.DRIVER_MEANS), index=False)
    units = {v: str(drv[v].attrs.get("units", "")) for v in names}
    trends_mod.driver_trends(trends_mod.driver_season_means(means), method, preserve, units).to_csv(
        out / L.inner(L.DRIVER_TRENDS), index=False
    )


SPEC = StepSpec(
    "trends",
    run,
    writes=(L.TRENDS,),
    depends=("budgets", "network"),
    reads=(
        L.UPSCALED,
        L.BUDGETS_ANNUAL,
        L.BUDGETS_SEASONAL,
        L.BUDGETS_MONTHLY,
        L.SITES,
        L.MEMBERS_MONTHLY,
        L.NETWORK_TRENDS,
    ),
    config_keys=(
        "run.years",
        "trends.prewhitening",
        "trends.preserve_range_for_sig_test",
        "fire.first_year",
        "uncertainty.network",
    )
    + PERMAFROST_KEYS,
    inputs=("predictors", "zones", "fire"),
    summary="per-pixel, zone-budget (annual, seasonal, monthly) and driver Theil–Sen/Mann–Kendall trends, "
    "area shares, attribution, site trends",
)
