"""(b2) interpret: permutation importance and partial dependence of every predictor, per flux."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .. import _atomic, plots
from .. import layout as L
from ..context import Context
from ..forest import FluxForest, partial_dependence, permutation_importance
from ..layout import RunLayout
from ..predictors import training_rows
from ..vocab import FLUXES
from .spec import StepSpec, fresh_dir, with_progress

log = logging.getLogger(__name__)


def load_models(run_dir) -> dict[str, FluxForest]:
    """The forest stage's final forests, by flux."""
    lay = RunLayout(run_dir)
    return {f: FluxForest.load(lay.model(f)) for f in FLUXES}


def run(ctx: Context) -> None:
    lay = ctx.layout
    table = pd.read_parquet(lay.sites)
    fs = ctx.cfg.forest
    out = fresh_dir(lay.tmp(L.INTERPRET))
    imps, pdps = [], []
    names = list(ctx.predictor_set.names)
    for flux, model in load_models(ctx.out).items():
        rows = training_rows(table, flux, ctx.predictor_set).reset_index(drop=True)
        X = rows[names]
        if fs.importance_repeats > 0:
            imp = with_progress(
                ctx,
                f"{flux}: importance, {fs.importance_repeats} repeats",
                permutation_importance,
                model,
                X,
                rows[flux].to_numpy(),
                fs.importance_repeats,
                ctx.cfg.run.seed,
            )
            imps.append(imp.assign(flux=flux))
        sub = None
        if fs.pdp_rows and fs.pdp_rows < len(rows):
            sub = np.unique(np.linspace(0, len(rows) - 1, fs.pdp_rows).round().astype(int))
        prog = ctx.progress(f"{flux}: partial dependence")
        try:
            for i, c in enumerate(names):
                pdps.append(partial_dependence(model, X, c, fs.pdp_points, rows=sub).assign(flux=flux))
                if prog is not None:
                    prog(i + 1, len(names))
        finally:
            if prog is not None:
                prog(None, None)
        log.info(f"{flux}: importance ({fs.importance_repeats} repeats) and partial dependence done")
    if imps:
        imp = pd.concat(imps, ignore_index=True)
        imp.to_csv(out / L.inner(L.IMPORTANCE), index=False)
        plots.importance_bars(imp, out / "importance.png")
    pdp = pd.concat(pdps, ignore_index=True)
    pdp.to_csv(out / L.inner(L.PARTIAL_DEPENDENCE), index=False)
    for flux in FLUXES:
        plots.partial_dependence_panels(pdp, flux, out / f"partial_dependence_{flux}.png")
    _atomic.replace(out, lay.interpret)


SPEC = StepSpec(
    "interpret",
    run,
    writes=(L.INTERPRET,),
    depends=("forest",),
    reads=(L.SITES, "models/"),
    config_keys=("forest.importance_repeats", "forest.pdp_points", "forest.pdp_rows", "run.seed"),
    summary="permutation importance and partial dependence of every predictor, per flux",
)
