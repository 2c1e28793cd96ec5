"""Every input of a model set read and checked against the contract and the config before the
run directory is touched (``abzflux validate``; the bad-input catalogue, docs/errors.md)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import xarray as xr

from . import coverage as coverage_mod
from .context import Context
from .errors import InputError
from .formats import FLUXES, cell_index, check_sites_in_grid

log = logging.getLogger(__name__)


def check_inputs(ctx: Context) -> None:
    """Read and check every input of one model set against the contract and the config, writing
    nothing: a bad input stops the run before the run directory is touched (and before any
    model is fitted), with an error naming the file, the column or variable and where."""
    cfg = ctx.cfg
    table = ctx.sites()
    pred = ctx.predictors()
    check_sites_in_grid(table, pred, cfg.inputs.sites)
    y0, y1 = ctx.years()
    check_flux_sites(table, pd.DatetimeIndex(pred.time.values), cfg.inputs.sites)
    zones = ctx.zones()
    off = sites_without_land(table, pred, zones, cfg.inputs.sites)
    if off:
        log.warning(off_land_message(off, table))
        check_flux_sites(table[~table.site_id.isin(off)], pd.DatetimeIndex(pred.time.values), cfg.inputs.sites)
    fire = ctx.fire()
    if fire is not None:
        fyears = set(pd.DatetimeIndex(fire.time.values).year)
        fs = cfg.fire
        if not fyears:
            raise InputError(
                cfg.inputs.fire,
                f"no fire months from fire.first_year = {fs.first_year} on",
                column="time",
                expected="fire.first_year within the fire record",
            )
        if fs.target_year is not None and not y0 <= fs.target_year <= y1:
            raise InputError(
                cfg.source,
                f"target year {fs.target_year} is outside the run's years {y0}-{y1}",
                column="fire.target_year",
                expected=f"a year in {y0}-{y1}",
            )
        check_fire_on_land(fire, zones, cfg.inputs.fire)
    ctx.references()
    ctx.truth()
    check_coverage(ctx)


def check_coverage(ctx: Context) -> None:
    """The upscaling's coverage, up front (docs/budgets.md): per zone and year, the land where every
    predictor the forests use is finite in every month, against the zones' land; then the fire
    period's months and the fire emissions' coverage of the land (docs/fire.md). Warns above
    ``budgets.coverage_warn``, stops (InputError) above ``budgets.coverage_stop``."""
    cfg, bs = ctx.cfg, ctx.cfg.budgets
    pred, zones, veg = ctx.predictors(), ctx.zones(), ctx.veg()
    y0, y1 = ctx.years()
    t = pd.DatetimeIndex(pred.time.values)
    run = pred.isel(time=np.nonzero((t.year >= y0) & (t.year <= y1))[0])
    layers = {v: run[v] for v in ctx.predictor_set.stack_variables if v in run}
    fire = ctx.fire()
    # the zones' weights are computed once for both checks when they are small (else band by band)
    small = fire is not None and 64 * zones.sizes["y"] * zones.sizes["x"] * 8 <= coverage_mod.READ_BYTES * 8
    weights = coverage_mod.zone_weight_bands(zones, veg) if small else None
    cov = coverage_mod.annual_coverage(coverage_mod.monthly_coverage(layers, zones, veg=veg, weights=weights))
    coverage_mod.check_coverage(cov, bs.coverage_warn, bs.coverage_stop, cfg.inputs.predictors)
    if fire is not None:
        f0, f1 = coverage_mod.check_fire_years(fire.time.values, cfg.fire.first_year, y0, y1, cfg.inputs.fire)
        ft = pd.DatetimeIndex(fire.time.values)
        fe = fire["fire_emissions"].isel(time=np.nonzero((ft.year >= f0) & (ft.year <= f1))[0])
        fcov = coverage_mod.annual_coverage(
            coverage_mod.monthly_coverage({"fire_emissions": fe}, zones, veg=veg, weights=weights)
        )
        coverage_mod.check_coverage(
            fcov,
            bs.coverage_warn,
            bs.coverage_stop,
            cfg.inputs.fire,
            what="fire emissions",
            remedy="0 where nothing burned",
        )


def check_fire_on_land(fire: xr.Dataset, zones: xr.Dataset, file) -> None:
    """No NaN fire value on a land cell (zones' land_fraction > 0): a missing value there would
    count as "no fire" in the budgets. NaN outside the land is allowed."""
    land = xr.DataArray(np.asarray(zones["land_fraction"].fillna(0).values) > 0, dims=("y", "x"))
    for name in ("fire_emissions", "burned_fraction"):
        bad = fire[name].isnull() & land
        n = int(bad.sum().values)
        if n:
            t, iy, ix = (int(i) for i in np.argwhere(np.asarray(bad.values))[0])
            when = pd.Timestamp(fire.time.values[t]).strftime("%Y-%m")
            raise InputError(
                file,
                f"{n} value(s) are NaN on land cells (land_fraction > 0 in the zones)",
                column=name,
                where=f"cell (time={when}, y={float(fire.y.values[iy]):.6g}, x={float(fire.x.values[ix]):.6g}; "
                f"index time={t}, y={iy}, x={ix})",
                expected="a value on every land cell in every month of the fire file (0 where nothing burned)",
            )


def sites_without_land(table: pd.DataFrame, pred: xr.Dataset, zones: xr.Dataset, file) -> list[str]:
    """Sites whose grid cell has no land (zones' ``land_fraction`` 0 or NaN), sorted. Their rows
    are dropped from the training table (documented rule, docs/formats.md §1): the cell is outside
    the upscaling domain, so its predictors describe no mapped land."""
    loc = table.drop_duplicates("site_id")
    iy, ix = cell_index(pred, loc.lat.to_numpy(), loc.lon.to_numpy(), file)
    ok = iy >= 0
    lf = np.zeros(len(loc))
    lf[ok] = np.nan_to_num(np.asarray(zones["land_fraction"].values)[iy[ok], ix[ok]].astype(np.float64))
    return sorted(loc.site_id[~(lf > 0) & ok].tolist())


def off_land_message(off: list, table: pd.DataFrame) -> str:
    rows = int(table.site_id.isin(off).sum())
    shown = ", ".join(off[:5]) + (f" and {len(off) - 5} more" if len(off) > 5 else "")
    return (
        f"{len(off)} site(s) fall in grid cells without land (land_fraction 0): {shown}; "
        f"their {rows} site-month(s) are dropped from the training table"
    )


def check_flux_sites(table: pd.DataFrame, times: pd.DatetimeIndex, file) -> None:
    """Each flux needs at least 3 sites with values in months the predictor stack covers
    (leave-one-site-out CV; the forest stage checks again after the predictors are extracted)."""
    have = (table.year * 100 + table.month).isin(times.year * 100 + times.month)
    for flux in FLUXES:
        n = table.loc[have & table[flux].notna(), "site_id"].nunique()
        if n < 3:
            raise InputError(
                file,
                f"only {n} site(s) have {flux} values in months of the predictor stack "
                f"({times[0]:%Y-%m} to {times[-1]:%Y-%m})",
                column=flux,
                expected="at least 3 sites per flux (gpp, reco and nee are all modelled)",
            )
