"""(d2) fire: emissions by zone and year, years in which fire emissions exceeded the net uptake,
the map of cells burned during the fire period, residual diagnostics at burned vs unburned
sites, and the years-since-fire bias correction (per-month mixed models of the NEE model's LOSO
residuals, applied to the target year). Tables and maps in ``fire/``; the arithmetic is
:mod:`abzflux.fire`."""

from __future__ import annotations

import json
import logging

import pandas as pd
import xarray as xr

from .. import _atomic
from .. import budgets as budgets_mod
from .. import fire as fire_mod
from .. import layout as L
from ..context import Context
from ..formats import grid_crs, write_crs
from .budgets import PERMAFROST_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    lay, fs = ctx.layout, ctx.cfg.fire
    out = fresh_dir(lay.tmp(L.FIRE))
    y0, y1 = ctx.years()
    fds = ctx.fire()
    assert fds is not None  # the step runs only with a fire input (SPEC.optional)
    ft = pd.DatetimeIndex(fds.time.values)
    f0 = fs.first_year if fs.first_year is not None else int(ft.year.min())
    target = fs.target_year if fs.target_year is not None else y1
    ann = pd.read_csv(lay.budgets_annual)
    fire_mod.emissions_by_zone(ann, f0).to_csv(out / L.inner(L.EMISSIONS_BY_ZONE))
    vs = fire_mod.fire_vs_uptake(ann, f0)
    if vs is not None:
        vs.to_csv(out / "fire_vs_uptake.csv", index=False)
    # cells burned during the fire period (Fig. 2d)
    maps, last, frac = fire_mod.burned_maps(fds, f0, target)
    maps = write_crs(maps, grid_crs(ctx.predictors(), ctx.cfg.inputs.predictors))
    # Loaded first (three 2-D maps): dask would write the variables in thread order, and HDF5
    # would place them at other offsets in each run (same values, different bytes).
    # No fill value on the coordinates (CF-1.8; xarray would give the float ones NaN).
    enc = {c: {"_FillValue": None} for c in ("x", "y")}
    maps.load().to_netcdf(out / L.inner(L.BURNED_CELLS), engine="h5netcdf", encoding=enc)
    # residuals of the NEE model at burned vs unburned sites, and the mixed models
    info = json.loads(lay.forest_json.read_text())
    report: dict = {
        "fire_period": [f0, target],
        "target_year": target,
        "max_years_since_fire": fs.max_years_since_fire,
    }
    if lay.cv_predictions.exists():
        r = fire_mod.site_residuals(
            pd.read_parquet(lay.cv_predictions), pd.read_parquet(lay.sites), info["nee"]["mtry"]
        )
        fire_mod.residual_diagnostics(r).to_csv(out / "residual_diagnostics.csv", index=False)
        models = fire_mod.fit_bias_models(r[r.burned], alpha=fs.alpha, max_years_since_fire=fs.max_years_since_fire)
        models.to_csv(out / "bias_models.csv", index=False)
        report["significant_months"] = fire_mod.significant_months(models)
        for flag, key in (("singular", "singular_months"), ("converged", "unconverged_months")):
            col = models[flag] if flag in models else pd.Series(dtype=bool)
            sel = col.astype(bool) if flag == "singular" else ~col.astype(bool)
            report[key] = [int(m) for m in models.loc[sel, "month"]] if len(models) else []
        months = fire_mod.correctable_months(models, fs.months)
        report["corrected_months"] = months
        up = xr.open_zarr(lay.upscaled, consolidated=False)
        if target in set(pd.DatetimeIndex(up.time.values).year):
            nee = up["nee"].sel(time=str(target)).load()
            corr = fire_mod.correct_nee(
                nee, models, last, frac, target, months=months, max_years_since_fire=fs.max_years_since_fire
            )
            # Only the correction's budget is computed here; "before" is the budgets step's.
            change = (
                budgets_mod.monthly_budgets(xr.Dataset({"nee": corr - nee}), ctx.zones())
                .groupby("zone")
                .tg_c.sum()
                .rename("change")
            )
            t = fire_mod.correction_table(change, ann, target)
            t.to_csv(out / L.inner(L.BIAS_CORRECTION), index=False)
            dom = t.set_index("zone").loc["domain"]
            report.update(domain_nee_before=float(dom.nee_before), domain_nee_after=float(dom.nee_after))
    (out / L.inner(L.FIRE_JSON)).write_text(json.dumps(report, indent=2))
    _atomic.replace(out, lay.fire)


SPEC = StepSpec(
    "fire",
    run,
    writes=(L.FIRE,),
    depends=("budgets", "forest", "sites"),
    reads=(L.BUDGETS_ANNUAL, L.FOREST_JSON, L.CV_PREDICTIONS, L.SITES, L.UPSCALED),
    config_keys=(
        "fire.first_year",
        "fire.target_year",
        "fire.alpha",
        "fire.months",
        "fire.max_years_since_fire",
        "run.years",
    )
    + PERMAFROST_KEYS,
    inputs=("fire", "predictors", "zones"),
    optional="fire",
    summary="fire emissions, fire vs uptake, burned cells, residual diagnostics, years-since-fire bias correction",
)
