"""The reference-product comparison on the analysis grid vs on each product's own grid
(docs/compare.md, "The twin: analysis grid vs the products' grids").

RUN_COPY holds a finished demo run's ``twin/`` (inputs, config.toml) and ``run/`` (at least
sites.parquet, interpret/, upscaled.zarr, trends/) — a copy, never the original: the compare
stage is rerun there with each ``compare.grid`` and ``RUN_COPY/metrics_<grid>.csv`` written;
then ``compare_products`` alone for the lat/lon products at several ``compare.min_cover``.

    cp -r DEMO/twin DEMO/run RUN_COPY/
    PYTHONPATH=src python benchmarks/bench_compare_grids.py RUN_COPY
"""

import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abzflux import budgets as budgets_mod
from abzflux import compare as cmp
from abzflux.config import load_config
from abzflux.context import Context
from abzflux.formats import grid_crs
from abzflux.steps.compare import run as stage

logging.basicConfig(level=logging.INFO, format="%(message)s")
root = Path(sys.argv[1])
cols = ["product", "grid", "n_cells", "map_r", "map_n_eff", "map_p", "map_p_naive"]
cols += ["trend_r", "trend_n_eff", "trend_p", "trend_p_naive"]
for grid in cmp.GRIDS:
    cfg = load_config(root / "twin" / "config.toml")
    cfg.compare.grid = grid
    stage(Context(cfg=cfg, out=root / "run"))
    shutil.copy(root / "run" / "compare" / "metrics.csv", root / f"metrics_{grid}.csv")
    print(pd.read_csv(root / f"metrics_{grid}.csv")[cols].to_string(index=False))

cfg = load_config(root / "twin" / "config.toml")
ctx = Context(cfg=cfg, out=root / "run")
pred, zones = ctx.predictors(), budgets_mod.with_cell_area(ctx.zones())
crs = grid_crs(pred, cfg.inputs.predictors)
refs = [r for r in ctx.references() if r.latlon]
up = xr.open_zarr(ctx.layout.upscaled, consolidated=False)
for mc in (0.0, 0.25, 0.5, 0.75, 0.95):
    m = cmp.compare_products(refs, up, zones, ctx.fire(), crs, 0.0, cfg.compare.regrid_subsamples, min_cover=mc)[0]
    for r in m.itertuples():
        print(
            f"min_cover {mc:g} {r.product}: {r.n_cells} cells, map r {r.map_r:.3f} (n_eff {r.map_n_eff:.0f}, "
            f"p {r.map_p:.2g}), trend r {r.trend_r:.3f} (n_eff {r.trend_n_eff:.0f}, p {r.trend_p:.2g})"
        )

fire = ctx.fire()
for grid in cmp.GRIDS + cmp.GRIDS:
    t = time.perf_counter()
    cmp.compare_products(ctx.references(), up, zones, fire, crs, 0.0, cfg.compare.regrid_subsamples, grid=grid)
    print(f"compare_products, grid = {grid}: {time.perf_counter() - t:.1f} s")
rng = np.random.default_rng(0)
for n in (3043, cmp.DUTILLEUL_MAX_CELLS):
    t = time.perf_counter()
    cmp.dutilleul_n_eff(rng.normal(size=n), rng.normal(size=n), rng.uniform(size=n), rng.uniform(size=n))
    print(f"n_eff of {n} cells: {time.perf_counter() - t:.2f} s")
