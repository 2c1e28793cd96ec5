"""Upscaling throughput and peak memory: one run's forests applied to a predictor stack.

    python benchmarks/bench_upscale.py --run demo/run --twin DIR [--tile 128] [--years N] [--scheduler local]

Loads the run's final forests (3) and bootstrap forests, and upscales every complete year of the
twin's predictor stack with ``abzflux.upscale.upscale`` into a temporary directory, as the
pipeline's upscale stage does. Prints wall time, land cell-months (pixel-months), pixel-months
per second, forest-row predictions per second, and this process's peak resident memory.
Run it on twins of different sizes with the same forests to see that peak memory does not grow
with the domain or the number of months.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from abzflux import upscale as up


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--twin", required=True, type=Path)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--years", type=int, default=None, help="only the first N years of the stack")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the upscaled store here (default: a temporary directory); a killed run "
                         "started again with the same --work resumes from its finished chunks")
    ap.add_argument("--progress", action="store_true", help="print a line per finished chunk to stderr")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    models = {f: a.run / "models" / f"{f}.npz" for f in up.FLUXES}
    rec = json.loads((a.run / "bootstrap" / "bootstrap.json").read_text())
    members = {f: [a.run / "bootstrap" / f"{f}_{m['member']:02d}.npz" for m in rec[f]] for f in up.FLUXES}
    pred = xr.open_zarr(a.twin / "predictors.zarr", consolidated=False)
    sel = np.arange(pred.sizes["time"] if a.years is None else 12 * a.years)
    land = (xr.open_dataset(a.twin / "zones.nc", engine="h5netcdf").land_fraction.fillna(0) > 0).values
    client = None
    if a.scheduler:
        from dask.distributed import Client, LocalCluster

        client = Client(LocalCluster(n_workers=2, threads_per_worker=1)) if a.scheduler == "local" else Client(a.scheduler)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()

    def progress(done, total):
        if a.progress:
            print(f"{time.strftime('%H:%M:%S')} chunk {done}/{total} {time.perf_counter() - t0:.0f} s "
                  f"rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as d:
        out = a.work or Path(d)
        info = up.upscale(a.twin / "predictors.zarr", a.twin / "zones.nc", models, members, out, sel,
                          tile=a.tile, client=client, progress=progress, fingerprint=f"bench-{len(sel)}-{a.tile}")
        wall = time.perf_counter() - t0
    n_forests = 3 + sum(len(v) for v in members.values())
    trees = {f: up._load(str(p)).n_estimators for f, p in models.items()}
    pm = int(land.sum()) * len(sel)
    res = {"grid": list(land.shape), "land_cells": int(land.sum()), "months": len(sel), "pixel_months": pm,
           "chunks": info["chunks"], "tile": a.tile, "forests": n_forests, "trees_per_forest": trees,
           "wall_s": round(wall, 2), "pixel_months_per_s": round(pm / wall),
           "forest_row_predictions_per_s": round(pm * n_forests / wall),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "rss_before_upscale_mb": round(rss0), "scheduler": a.scheduler or "in-process",
           "resumed_chunks": info.get("resumed")}
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
