"""Which predictors carry the modelled budget trends (docs/uncertainty.md, "What carries the
modelled trend").

The forests map predictors to fluxes; a budget trend comes from the predictors that change over
the years. To see which, the domain is upscaled again with one time-varying predictor held at
its first-year values (each later year gets the first year's value of the same month, cell by
cell; the other predictors as observed) and the zone budget trends are compared with those of
the unchanged upscaling: the change is the part of the modelled trend that runs through that
predictor (with the others as they are; the parts need not add up, the forest is not additive).

:func:`hold_at_first_year` is pure; :func:`trend_attribution` runs the upscaling (the final
forests only, no bootstrap members) into a work directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import budgets as budgets_mod
from . import upscale as upscale_mod
from .calibrate import ZONES, annual_trends
from .context import Context
from .layout import RunLayout
from .vocab import FLUXES

log = logging.getLogger(__name__)

#: Label of the unchanged upscaling in the attribution table.
BASELINE = "none"


def time_varying(ds: xr.Dataset) -> list[str]:
    """The data variables of a predictor stack that change with time (have a ``time`` dim)."""
    return [str(v) for v in ds.data_vars if "time" in ds[v].dims]


def hold_at_first_year(da: xr.DataArray, first_year: int) -> xr.DataArray:
    """``da`` (with ``time``) with every time step replaced by the value of the same calendar
    month in ``first_year`` (cell by cell). ``first_year`` must have all 12 months."""
    t = pd.DatetimeIndex(da.time.values)
    ref = np.nonzero(t.year == first_year)[0]
    if len(ref) != 12 or sorted(t.month[ref]) != list(range(1, 13)):
        raise ValueError(f"{da.name}: {first_year} does not have all 12 months in the stack")
    by_month = {int(m): int(i) for m, i in zip(t.month[ref], ref)}
    idx = np.array([by_month[int(m)] for m in t.month])
    held = da.isel(time=idx)
    return held.assign_coords(time=da.time)


def _write_held(src: Path, dst: Path, name: str | None, first_year: int) -> Path:
    """A copy of the predictor store ``src`` with ``name`` held at ``first_year`` (``None``:
    the store itself)."""
    if name is None:
        return src
    ds = xr.open_zarr(src, consolidated=False)
    out = ds.assign({name: hold_at_first_year(ds[name], first_year)})
    for v in out.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
    shutil.rmtree(dst, ignore_errors=True)
    out.chunk({"time": 12}).to_zarr(dst, mode="w", consolidated=False)
    ds.close()
    return dst


def upscaled_trends(ctx: Context, predictors: Path, models: dict, work: Path) -> pd.DataFrame:
    """Upscale ``predictors`` with the final forests ``models`` (flux -> model file) into
    ``work`` and return the annual zone budgets (zone, flux, year, tg_c) of the run's years."""
    pred = ctx.predictors()
    y0, y1 = ctx.years()
    times = pd.DatetimeIndex(pred.time.values)
    sel = np.nonzero((times.year >= y0) & (times.year <= y1))[0]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    upscale_mod.upscale(
        predictors,
        ctx.cfg.inputs.zones,
        models,
        {},
        work,
        sel,
        tile=ctx.cfg.run.tile,
        predictor_set=ctx.predictor_set,
        permafrost=(ctx.cfg.budgets.permafrost, ctx.cfg.budgets.permafrost_threshold),
    )
    up = xr.open_zarr(RunLayout(work).upscaled, consolidated=False)
    try:
        ann = budgets_mod.annual_budgets(up[list(FLUXES)], ctx.zones())
    finally:
        up.close()
    return ann[ann.zone.isin(ZONES)][["zone", "flux", "year", "tg_c"]]


def trend_attribution(
    ctx: Context,
    models: dict,
    work: Path,
    names: list[str] | None = None,
    *,
    keep: bool = False,
) -> pd.DataFrame:
    """Budget trends (Tg C yr-2) of the upscaling with the run's predictors (``predictor`` =
    :data:`BASELINE`) and with each predictor of ``names`` (default: every time-varying one the
    models use) held at the first run year's values. Columns: predictor, zone, flux, slope,
    change (slope − baseline slope), change_pct (100 · change / baseline slope: −40 means the
    trend is 40 % weaker, whatever its sign). ``keep``:
    leave the held predictor stores and upscalings in ``work``."""
    src = Path(ctx.cfg.inputs.predictors)
    y0, _ = ctx.years()
    raw = xr.open_zarr(src, consolidated=False)
    used = set(ctx.predictor_set.names)
    avail = [v for v in time_varying(raw) if v in used]
    raw.close()
    names = avail if names is None else list(names)
    bad = [n for n in names if n not in avail]
    if bad:
        raise ValueError(f"not time-varying predictors of the models: {bad} (those are {avail})")
    method = ctx.cfg.trends.prewhitening
    rows = []
    for name in [None, *names]:
        label = name or BASELINE
        t0 = time.perf_counter()
        d = work / label
        store = _write_held(src, d / "predictors.zarr", name, y0)
        ann = upscaled_trends(ctx, store, models, d / "run")
        rows.append(annual_trends(ann, method=method).assign(predictor=label))
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
        log.info(f"[attribution] {label}: {time.perf_counter() - t0:.0f} s")
    t = pd.concat(rows, ignore_index=True)
    base = t[t.predictor == BASELINE].set_index(["zone", "flux"]).slope
    b = base.reindex(pd.MultiIndex.from_frame(t[["zone", "flux"]])).to_numpy()
    t["change"] = t.slope.to_numpy() - b
    with np.errstate(divide="ignore", invalid="ignore"):
        t["change_pct"] = 100 * t.change / b
    return t[["predictor", "zone", "flux", "first_year", "last_year", "slope", "change", "change_pct"]]
