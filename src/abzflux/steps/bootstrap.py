"""(b3) bootstrap: the uncertainty ensemble, ``forest.n_bootstrap`` forests per flux, each on a
resample of the training rows (month and vegetation type dropped). ``uncertainty.method``:
resample the rows (the paper's: same n, with replacement), whole sites, or whole spatial blocks
of sites (:mod:`abzflux.uncertainty`)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from .. import _atomic, seeds
from .. import cv as cv_mod
from .. import layout as L
from ..context import Context
from ..forest import FluxForest
from ..predictors import training_rows
from ..uncertainty import resample_rows, site_blocks
from ..vocab import FLUXES
from .forest import FOREST_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    lay = ctx.layout
    table = pd.read_parquet(lay.sites)
    fs = ctx.cfg.forest
    info = json.loads(lay.forest_json.read_text())
    out = fresh_dir(lay.tmp(L.BOOTSTRAP))
    pset = ctx.predictor_set
    cols = list(pset.bootstrap_names)  # the set's factors dropped: a resample can lose a level
    unc = ctx.cfg.uncertainty
    blocks = None
    if unc.method == "blocks":
        pred = ctx.predictors()
        sites = table.drop_duplicates("site_id")
        lab = site_blocks(pred.x.values[sites.ix.to_numpy()], pred.y.values[sites.iy.to_numpy()], unc.block_km)
        blocks = dict(zip(sites.site_id, lab))
    record: dict = {"method": unc.method, "block_km": unc.block_km if blocks else None}
    for flux in FLUXES:
        rows = training_rows(table, flux, pset).reset_index(drop=True)
        record[flux] = []
        prog = ctx.progress(f"{flux}: bootstrap forests" + (" (mtry retuned)" if fs.bootstrap_mtry == "retune" else ""))
        try:
            for b in range(fs.n_bootstrap):
                rng = seeds.rng(ctx.cfg.run.seed, "bootstrap_rows", b)
                idx = resample_rows(rows.site_id.to_numpy(), unc.method, rng, blocks)
                sample = rows.iloc[idx].reset_index(drop=True)
                if fs.bootstrap_mtry == "retune":
                    res = cv_mod.loso_cv(
                        sample[cols],
                        sample[flux].to_numpy(),
                        sample.site_id.to_numpy(),
                        fs.mtry_grid or cv_mod.mtry_grid(len(cols)),
                        n_trees=fs.n_estimators,
                        nodesize=fs.nodesize,
                        seed=seeds.integer(ctx.cfg.run.seed, "bootstrap_cv", b),
                        categorical=(),
                        central=fs.central,
                    )
                    m = res.best_mtry
                else:
                    m = min(info[flux]["mtry"], len(cols))
                model = FluxForest(
                    n_estimators=fs.n_estimators,
                    mtry=m,
                    nodesize=fs.nodesize,
                    categorical=(),
                    central=fs.central,
                    random_state=seeds.integer(ctx.cfg.run.seed, "bootstrap_forest", b),
                )
                model.fit(sample[cols], sample[flux].to_numpy())
                model.save(out / f"{flux}_{b:02d}.npz")
                record[flux].append(
                    {
                        "member": b,
                        "mtry": m,
                        "rows": len(sample),
                        "distinct_rows": int(len(np.unique(idx))),
                        "distinct_sites": int(sample.site_id.nunique()),
                    }
                )
                if prog is not None:
                    prog(b + 1, fs.n_bootstrap)
        finally:
            if prog is not None:
                prog(None, None)
        log.info(f"{flux}: {fs.n_bootstrap} bootstrap forests ({len(cols)} predictors, {unc.method} resampled)")
    (out / L.inner(L.BOOTSTRAP_JSON)).write_text(json.dumps(record, indent=2))
    _atomic.replace(out, lay.bootstrap)


SPEC = StepSpec(
    "bootstrap",
    run,
    writes=(L.BOOTSTRAP,),
    depends=("forest",),
    reads=(L.SITES, L.FOREST_JSON),
    config_keys=FOREST_KEYS
    + ("forest.n_bootstrap", "forest.bootstrap_mtry", "run.seed", "uncertainty.method", "uncertainty.block_km"),
    summary="the uncertainty ensemble: bootstrap forests per flux on resampled rows, sites or blocks",
)
