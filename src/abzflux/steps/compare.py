"""(f) compare: extrapolation diagnostics (MESS, AOA, environmental clusters) always; the
comparison with reference products when ``inputs.references`` are given. Writes ``compare/``
(docs/compare.md); the methods are :mod:`abzflux.compare`."""

from __future__ import annotations

import logging

import pandas as pd
import xarray as xr

from .. import _atomic, seeds
from .. import budgets as budgets_mod
from .. import compare as cmp
from .. import layout as L
from ..context import Context
from ..formats import consolidate, grid_crs
from .budgets import PERMAFROST_KEYS
from .sites import PREDICTOR_KEYS
from .spec import StepSpec, fresh_dir, with_progress

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    cfg, cs, lay = ctx.cfg, ctx.cfg.compare, ctx.layout
    pred, zones = ctx.predictors(), budgets_mod.with_cell_area(ctx.zones())
    crs = grid_crs(pred, cfg.inputs.predictors)
    out = fresh_dir(lay.tmp(L.COMPARE))
    importance = None
    if lay.importance.exists():
        importance = pd.read_csv(lay.importance)
    else:
        log.info("AOA: no permutation importance (forest.importance_repeats = 0): equal weights")
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    tables = with_progress(
        ctx,
        "compare: MESS/AOA row bands, 2 passes",
        cmp.extrapolation_diagnostics,
        pred,
        zones,
        up,
        pd.read_parquet(lay.sites),
        importance,
        ctx.years(),
        crs,
        out / L.inner(L.EXTRAPOLATION_MAPS),
        period_length=cs.mess_period_length,
        cluster_sample=cs.cluster_sample,
        max_training=cs.aoa_max_training,
        n_clusters=cs.n_clusters,
        seed=seeds.integer(cfg.run.seed, "kmeans"),
        predictor_set=ctx.predictor_set,
    )
    up.close()
    for rel in (L.MESS_AREA, L.AOA_SD, L.CLUSTERS):  # the tables are named as their files
        name = L.inner(rel)
        tables[name.removesuffix(".csv")].to_csv(out / name, index=False)
    refs = ctx.references()
    if refs:
        metrics, budgets, maps = cmp.compare_products(
            refs,
            xr.open_zarr(lay.upscaled, consolidated=False),
            zones,
            ctx.fire(),
            crs,
            cfg.budgets.source_threshold,
            cs.regrid_subsamples,
            grid=cs.grid,
            min_cover=cs.min_cover,
            trend_method=cfg.trends.prewhitening,
            trend_preserve=cfg.trends.preserve_range_for_sig_test,
        )
        metrics.to_csv(out / L.inner(L.COMPARE_METRICS), index=False)
        budgets.to_csv(out / L.inner(L.COMPARE_BUDGETS), index=False)
        maps.to_zarr(out / L.inner(L.PRODUCT_MAPS), mode="w", consolidated=False)
        consolidate(out / L.inner(L.PRODUCT_MAPS))
    _atomic.replace(out, lay.compare)


SPEC = StepSpec(
    "compare",
    run,
    writes=(L.COMPARE,),
    depends=("trends", "upscale", "interpret", "sites"),
    reads=(L.SITES, L.IMPORTANCE, L.UPSCALED),
    config_keys=(
        "compare.subtract_fire",
        "compare.regrid_subsamples",
        "compare.mess_period_length",
        "compare.n_clusters",
        "compare.cluster_sample",
        "compare.aoa_max_training",
        "compare.grid",
        "compare.min_cover",
        "trends.prewhitening",
        "trends.preserve_range_for_sig_test",
        "budgets.source_threshold",
        "fire.first_year",
        "run.years",
        "run.seed",
    )
    + PREDICTOR_KEYS
    + PERMAFROST_KEYS,
    inputs=("predictors", "zones", "fire", "references"),
    summary="extrapolation (MESS, AOA, clusters); comparison with reference products when given",
)
