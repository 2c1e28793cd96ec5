"""Tree inference: abzflux's packed numba traversal vs scikit-learn's ``predict``, same forest.

    python benchmarks/bench_inference.py                 # 500 trees, 1,000,000 rows
    python benchmarks/bench_inference.py --quick         # 100 trees, 200,000 rows

A scikit-learn ``RandomForestRegressor`` (500 trees, max_features 5 of 15 predictors, as the
bootstrap forests; min_samples_leaf 5) is fitted on 4,900 cell-months of a 100-km twin
(predictors -> true NEE) and packed into abzflux's node records with
``PackedForest.from_sklearn``. Both predict the same rows (other cell-months of the twin); the
outputs must be bit-identical. Two abzflux layouts are timed: ``PackedForest`` (per-row
traversal of 24-byte node records, what FluxForest uses) and ``LevelForest`` (breadth-first
layout, a block of rows walks each tree level by level). Rows per second per core are timed
with one thread each (sklearn ``n_jobs=1``, its default; numba ``set_num_threads(1)``), then
LevelForest with every core. (sklearn with ``n_jobs > 1`` adds the trees in whatever order the
threads finish, so its output can differ in the last bits from run to run; it is not timed.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import sklearn
import xarray as xr
from sklearn.ensemble import RandomForestRegressor

from abzflux._rf import LevelForest, PackedForest
from abzflux.predictors import PREDICTOR_NAMES
from abzflux.twin import TwinSpec, make_twin

COLS = [c for c in PREDICTOR_NAMES if c not in ("month", "veg_type")]


def cell_months(twin: Path, n: int, seed: int):
    pred = xr.open_zarr(twin / "predictors.zarr", consolidated=False)
    truth = xr.open_dataset(twin / "truth.nc", engine="h5netcdf")
    land = (xr.open_dataset(twin / "zones.nc", engine="h5netcdf").land_fraction.fillna(0) > 0).values
    iy, ix = np.nonzero(land)
    rng = np.random.default_rng(seed)
    t = rng.integers(0, pred.sizes["time"], n)
    c = rng.integers(0, len(iy), n)
    ti, yi, xi = (xr.DataArray(a, dims="row") for a in (t, iy[c], ix[c]))
    X = np.column_stack([(pred[v].isel(time=ti, y=yi, x=xi) if "time" in pred[v].dims
                          else pred[v].isel(y=yi, x=xi)).values for v in COLS]).astype(np.float64)
    y = truth["nee"].isel(time=ti, y=yi, x=xi).values.astype(np.float64)
    ok = np.isfinite(X).all(1) & np.isfinite(y)
    return X[ok], y[ok]


def timed(f, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = f()
        best = min(best, time.perf_counter() - t0)
    return best, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trees", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    trees = a.trees or (100 if a.quick else 500)
    rows = a.rows or (200_000 if a.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as d:
        twin = Path(d) / "twin"
        make_twin(twin, TwinSpec(resolution_km=100))
        Xtr, ytr = cell_months(twin, 5200, 1)
        Xtr, ytr = Xtr[:4900], ytr[:4900]
        X, _ = cell_months(twin, int(rows * 1.05), 2)
        X = X[:rows]
    rf = RandomForestRegressor(n_estimators=trees, max_features=5, min_samples_leaf=5, random_state=0,
                               n_jobs=-1).fit(Xtr, ytr)
    packed = PackedForest.from_sklearn(rf)
    t0 = time.perf_counter()
    level = LevelForest.from_packed(packed)
    build_s = time.perf_counter() - t0
    X32 = X.astype(np.float32)
    ncores = os.cpu_count()
    res = {"trees": trees, "rows": len(X), "nodes": packed.n_nodes, "cores": ncores,
           "machine": platform.processor() or platform.machine(), "sklearn": sklearn.__version__,
           "numba": numba.__version__}
    packed.predict(X32[:1000])  # compile / load the cached kernels outside the timing
    level.predict(X32[:1000])
    rf.set_params(n_jobs=1)
    numba.set_num_threads(1)
    t_sk1, p_sk = timed(lambda: rf.predict(X), 1)
    t_pk1, p_pk = timed(lambda: packed.predict(X32), 2)
    t_lv1, p_lv = timed(lambda: level.predict(X32), 2)
    res["identical_packed"] = bool(np.array_equal(p_sk, p_pk))
    res["identical_level"] = bool(np.array_equal(p_sk, p_lv))
    numba.set_num_threads(ncores)
    t_lvn, p3 = timed(lambda: level.predict(X32), 2)
    res["identical_level_all_cores"] = bool(np.array_equal(p_sk, p3))
    res.update({
        "level_build_s": build_s,
        "sklearn_1thread_rows_per_s": len(X) / t_sk1, "packed_1thread_rows_per_s": len(X) / t_pk1,
        "level_1thread_rows_per_s": len(X) / t_lv1,
        "speedup_packed_1thread": t_sk1 / t_pk1, "speedup_level_1thread": t_sk1 / t_lv1,
        "level_allcores_rows_per_s": len(X) / t_lvn,
        "level_tree_rows_per_s_per_core": len(X) * trees / t_lv1,
    })
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
