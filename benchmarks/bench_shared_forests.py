"""Per-node memory of upscaling with the forests shared across worker processes.

    python benchmarks/bench_shared_forests.py --run RUN --twin TWIN [--workers 0 1 2 4] [--chunks 4]
        [--tile 64] [--out result.json]

Upscales the ``--chunks`` tile-years with the most land (of the first year of the twin's stack)
with the run's final and bootstrap forests, once per entry of ``--workers``: 0 = in this process,
n = a dask.distributed LocalCluster of n worker processes with one thread each. While it runs, a
thread samples every 0.25 s, from ``/proc/PID/smaps_rollup``, the memory of this process and
every process it started (nannies, workers): the sum over them of RSS (resident pages, a page
that k processes map counted k times), PSS (proportional: a shared page counted 1/k in each, so
the sum is the node's real use) and USS (private pages), and of the workers alone. Reports the
peak of each sum, and checks that every run's store and member sums are identical to the first.

Forests saved by abzflux >= this version are mapped read-only (abzflux.arrayfile): the workers of
a node share one copy in the page cache. Pass ``--run`` a copy of a run whose model files were
rewritten in the older compressed format to see the per-worker copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import xarray as xr

from abzflux import upscale as up


def smaps(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[k] = int(v.split()[0]) / 1024  # MiB
    except OSError:
        return {}
    return {"rss": out.get("Rss", 0.0), "pss": out.get("Pss", 0.0),
            "uss": out.get("Private_Clean", 0.0) + out.get("Private_Dirty", 0.0)}


class NodeSampler:
    """Peaks of the sums over this process and its descendants (and over the workers alone)."""

    def __init__(self, workers: set | None = None, interval: float = 0.25):
        self.workers = workers or set()
        self.interval, self.peak = interval, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] + me.children(recursive=True)
            tot = {"all": {"rss": 0.0, "pss": 0.0, "uss": 0.0}, "workers": {"rss": 0.0, "pss": 0.0, "uss": 0.0}}
            for p in procs:
                m = smaps(p.pid)
                for k, v in m.items():
                    tot["all"][k] += v
                    if p.pid in self.workers:
                        tot["workers"][k] += v
            tot["n_processes"] = len(procs)
            for g in ("all", "workers"):
                for k, v in tot[g].items():
                    key = f"{g}_{k}_mb"
                    self.peak[key] = max(self.peak.get(key, 0.0), v)
            self.peak["n_processes"] = max(self.peak.get("n_processes", 0), len(procs))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def store_arrays(path: Path) -> dict:
    ds = xr.open_zarr(path / "upscaled.zarr", consolidated=False)
    return {v: ds[v].values for v in ds.data_vars if ds[v].ndim == 3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--twin", required=True, type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--chunks", type=int, default=4, help="tile-years with the most land")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy each run's upscaled.zarr and member sums to KEEP/w<workers>.* (to compare code versions)")
    a = ap.parse_args()
    models = {f: a.run / "models" / f"{f}.npz" for f in up.FLUXES}
    rec = json.loads((a.run / "bootstrap" / "bootstrap.json").read_text())
    members = {f: [a.run / "bootstrap" / f"{f}_{m['member']:02d}.npz" for m in rec[f]] for f in up.FLUXES}
    sel = np.arange(12)  # the first year
    land = (xr.open_dataset(a.twin / "zones.nc", engine="h5netcdf").land_fraction.fillna(0) > 0).values
    plan = up.plan_chunks

    def most_land(land_, times, tile):  # only the --chunks tile-years with the most land cells
        cs = plan(land_, times, tile)
        cs.sort(key=lambda c: -int(land_[c.iy0 : c.iy1, c.ix0 : c.ix1].sum()))
        return sorted(cs[: a.chunks], key=lambda c: (c.iy0, c.ix0, c.year))

    up.plan_chunks = most_land
    cells = sum(int(land[c.iy0 : c.iy1, c.ix0 : c.ix1].sum()) for c in most_land(land, pd.DatetimeIndex(
        xr.open_zarr(a.twin / "predictors.zarr", consolidated=False).time.values[sel]), a.tile))
    results, ref = [], None
    for nw in a.workers:
        client = cluster = None
        wpids: set = set()
        if nw:
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=nw, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            wpids = set(client.run(os.getpid).values())
        with tempfile.TemporaryDirectory() as d, NodeSampler(wpids) as s:
            t0 = time.perf_counter()
            up.upscale(a.twin / "predictors.zarr", a.twin / "zones.nc", models, members, Path(d), sel,
                       tile=a.tile, client=client, fingerprint=f"bench-{nw}")
            wall = time.perf_counter() - t0
            arrays = store_arrays(Path(d))
            mb = pd.read_parquet(Path(d) / "budgets_members_monthly.parquet")
            if a.keep:
                a.keep.mkdir(parents=True, exist_ok=True)
                shutil.copytree(Path(d) / "upscaled.zarr", a.keep / f"w{nw}.zarr", dirs_exist_ok=True)
                shutil.copyfile(Path(d) / "budgets_members_monthly.parquet", a.keep / f"w{nw}.parquet")
        if client is not None:
            client.close()
            cluster.close()
        same = None
        if ref is None:
            ref = (arrays, mb)
        else:
            same = all(np.array_equal(arrays[k], ref[0][k], equal_nan=True) for k in ref[0]) and mb.equals(ref[1])
        r = {"workers": nw or "in-process", "wall_s": round(wall, 1), "chunks": a.chunks, "tile": a.tile,
             "land_cells": cells, "identical_to_first": same, **{k: round(v) for k, v in s.peak.items()}}
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
