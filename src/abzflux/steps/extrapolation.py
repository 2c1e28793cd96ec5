"""(b4) extrapolation: the extrapolation-aware SD term. Per flux the DI model of the LOSO
residuals, and monthly SD maps ``uncertainty/extrapolation_sd.zarr`` (g C m-2 month-1); the
budgets step sums them per zone (fully correlated). Needs the forest step's CV predictions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import _atomic
from .. import layout as L
from ..context import Context
from ..formats import consolidate, grid_crs
from ..predictors import training_rows
from ..uncertainty import flux_extrapolation, sd_block, sd_template
from ..vocab import FLUXES
from .forest import cv_outputs
from .sites import PREDICTOR_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    cfg, lay = ctx.cfg, ctx.layout
    cvp, info, table = cv_outputs(ctx, "the extrapolation term", "uncertainty.extrapolation")
    out = fresh_dir(lay.tmp(L.UNCERTAINTY))  # after the check: a refused run leaves nothing behind
    imp = pd.read_csv(lay.importance) if lay.importance.exists() else None
    models, aoas, errs = {}, {}, []
    for flux in FLUXES:
        pset = ctx.predictor_set
        rows = training_rows(table, flux, pset).reset_index(drop=True)
        multicv = None
        if cfg.uncertainty.extrapolation_cv == "multicv":
            multicv = {
                "x_cols": list(pset.names),
                "y": rows[flux].to_numpy(np.float64),
                "nodesize": cfg.forest.nodesize,
                "categorical": tuple(pset.categorical),
                "seed": cfg.run.seed,
            }
        m, aoa, e = flux_extrapolation(
            rows, cvp, info[flux]["mtry"], imp, flux, cfg.compare.aoa_max_training, pset.continuous, multicv
        )
        models[flux], aoas[flux] = m, aoa
        errs.append(e)
        log.info(
            f"{flux}: |site-mean residual| = {m['a']:.2f} + {m['b']:.2f} DI (g C m-2 month-1, "
            f"{m['n_sites']} site errors, {m['cv']}); term starts at DI {m['di_ref']:.3f}"
        )
    pd.concat(errs, ignore_index=True).to_csv(out / "site_errors.csv", index=False)
    (out / L.inner(L.EXTRAPOLATION_JSON)).write_text(json.dumps(models, indent=2))
    write_sd_maps(ctx, aoas, models, out / L.inner(L.EXTRAPOLATION_SD))
    _atomic.replace(out, lay.uncertainty)


def write_sd_maps(ctx: Context, aoas: dict, models: dict, store: Path) -> None:
    """Monthly extrapolation SD maps over the run's years, written year by year and band by band
    of ``run.tile`` rows (bounded memory)."""
    pred = ctx.predictors()
    land = np.asarray((ctx.raw_zones()["land_fraction"].fillna(0) > 0).values)  # land only: no permafrost rule
    y0, y1 = ctx.years()
    times = pd.DatetimeIndex(pred.time.values)
    tsel = np.nonzero((times.year >= y0) & (times.year <= y1))[0]
    ny, nx = pred.sizes["y"], pred.sizes["x"]
    band = max(1, min(ctx.cfg.run.tile, ny))
    sd_template(pred, tsel, band, grid_crs(pred, ctx.cfg.inputs.predictors)).to_zarr(
        store, compute=False, mode="w", consolidated=False
    )
    blocks = [(k0, i0) for k0 in range(0, len(tsel), 12) for i0 in range(0, ny, band)]
    prog = ctx.progress("extrapolation SD maps: years × row bands")
    try:
        for n, (k0, i0) in enumerate(blocks):
            tk = tsel[k0 : k0 + 12]
            ys = slice(i0, min(i0 + band, ny))
            xr.Dataset(sd_block(pred, land, tk, ys, aoas, models, ctx.predictor_set.continuous)).to_zarr(
                store, region={"time": slice(k0, k0 + len(tk)), "y": ys, "x": slice(0, nx)}, consolidated=False
            )
            if prog is not None:
                prog(n + 1, len(blocks))
    finally:
        if prog is not None:
            prog(None, None)
    consolidate(store)


SPEC = StepSpec(
    "extrapolation",
    run,
    writes=(L.UNCERTAINTY,),
    depends=("forest", "interpret"),
    reads=(L.SITES, L.FOREST_JSON, L.CV_PREDICTIONS, L.IMPORTANCE),
    config_keys=(
        "compare.aoa_max_training",
        "run.years",
        "run.tile",
        "run.seed",
        "forest.nodesize",
        "uncertainty.extrapolation_cv",
    )
    + PREDICTOR_KEYS,
    inputs=("predictors", "zones"),
    enabled=lambda cfg: cfg.uncertainty.extrapolation,
    enabled_by="uncertainty.extrapolation",
    summary="the extrapolation SD term: DI model of the LOSO residuals and monthly SD maps",
)
