"""Tree inference: abzflux's packed numba traversal vs scikit-learn's ``predict``, same forest.

    python benchmarks/bench_inference.py                 # 500 trees, 1,000,000 rows
    python benchmarks/bench_inference.py --quick         # 100 trees, 200,000 rows

A scikit-learn ``RandomForestRegressor`` (500 trees, max_features 5 of 15 predictors, as the
bootstrap forests; min_samples_leaf 5) is fitted on 4,900 cell-months of a 100-km twin
(predictors -> true NEE) and packed into abzflux's node records with
``PackedForest.from_sklearn``. Both predict the same rows (other cell-months of the twin); the
outputs must be bit-identical. Two abzflux layouts are timed: ``PackedForest`` (per-row
traversal of 24-byte node records) and ``LevelForest`` (breadth-first layout, a block of rows
walks each tree level by level, the rows still travelling compacted twice per tree; what
``FluxForest.predict`` uses on batches of >= 1,024 rows),
the latter on float32 rows (its fast kernel) and on float64 rows that are not float32 values
(its float64 kernel, checked against ``PackedForest`` on the same rows). Rows per second per
core are timed with one thread each (sklearn ``n_jobs=1``, its default; numba
``set_num_threads(1)``), best of ``--repeat`` rounds that alternate sklearn and abzflux (so a
busy machine slows both alike), then LevelForest with every core. Last, abzflux's own forest
with the two factor predictors (month, vegetation type: categorical splits), as the final
models are fitted: LevelForest against PackedForest on the same rows (at most 200,000). (sklearn with ``n_jobs > 1`` adds the trees in whatever order the
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

from abzflux._rf import LevelForest, PackedForest, grow_forest
from abzflux.predictors import PREDICTOR_NAMES
from abzflux.twin import TwinSpec, make_twin

COLS = [c for c in PREDICTOR_NAMES if c not in ("month", "veg_type")]


def cell_months(twin: Path, n: int, seed: int, factors: bool = False):
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
    if factors:  # month and vegetation type as level codes 0..n-1
        veg = pred["veg_type"].isel(y=yi, x=xi).values
        codes = np.searchsorted(np.unique(veg[np.isfinite(veg)]), veg).astype(np.float64)
        X = np.column_stack([X, (t % 12).astype(np.float64), codes])
    y = truth["nee"].isel(time=ti, y=yi, x=xi).values.astype(np.float64)
    ok = np.isfinite(X).all(1) & np.isfinite(y)
    return X[ok], y[ok]


def race(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Best wall time of each function over ``repeat`` rounds, the functions alternating."""
    best, out = {k: np.inf for k in fns}, {}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            out[k] = f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trees", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    trees = a.trees or (100 if a.quick else 500)
    rows = a.rows or (200_000 if a.quick else 1_000_000)
    tmp = tempfile.TemporaryDirectory()
    twin_dir = Path(tmp.name) / "twin"
    make_twin(twin_dir, TwinSpec(resolution_km=100))
    Xtr, ytr = cell_months(twin_dir, 5200, 1)
    Xtr, ytr = Xtr[:4900], ytr[:4900]
    X, _ = cell_months(twin_dir, int(rows * 1.05), 2)
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
    # float64 rows that are not float32 values: LevelForest's float64 kernel
    X64 = X32.astype(np.float64) * (1 + 2.0**-40)
    t, p = race({"sklearn": lambda: rf.predict(X), "packed": lambda: packed.predict(X32),
                 "level": lambda: level.predict(X32), "level_f64": lambda: level.predict(X64)}, a.repeat)
    res["identical_packed"] = bool(np.array_equal(p["sklearn"], p["packed"]))
    res["identical_level"] = bool(np.array_equal(p["sklearn"], p["level"]))
    res["identical_level_f64_vs_packed"] = bool(np.array_equal(p["level_f64"], packed.predict(X64)))
    numba.set_num_threads(ncores)
    tn, pn = race({"level": lambda: level.predict(X32)}, a.repeat)
    res["identical_level_all_cores"] = bool(np.array_equal(p["sklearn"], pn["level"]))
    res.update({
        "level_build_s": build_s,
        "sklearn_1thread_rows_per_s": len(X) / t["sklearn"], "packed_1thread_rows_per_s": len(X) / t["packed"],
        "level_1thread_rows_per_s": len(X) / t["level"], "level_f64_1thread_rows_per_s": len(X) / t["level_f64"],
        "speedup_packed_1thread": t["sklearn"] / t["packed"], "speedup_level_1thread": t["sklearn"] / t["level"],
        "speedup_level_f64_1thread": t["sklearn"] / t["level_f64"],
        "level_allcores_rows_per_s": len(X) / tn["level"],
        "level_tree_rows_per_s_per_core": len(X) * trees / t["level"],
    })
    # abzflux's own forest with factor predictors (categorical splits), as the final models
    Xf_tr, yf_tr = cell_months(twin_dir, 5200, 1, factors=True)
    nf_rows = min(rows, 200_000)  # the per-row path is slow on these deeper trees
    Xf, _ = cell_months(twin_dir, int(nf_rows * 1.05), 2, factors=True)
    Xf_tr, yf_tr, Xf = Xf_tr[:4900], yf_tr[:4900], Xf[:nf_rows]
    is_cat = np.r_[np.zeros(len(COLS), bool), True, True]
    n_levels = np.r_[np.zeros(len(COLS)), 12, Xf_tr[:, -1].max() + 1].astype(np.int64)
    numba.set_num_threads(ncores)
    own = grow_forest(Xf_tr, yf_tr, is_cat=is_cat, n_levels=n_levels, n_trees=trees, mtry=5, nodesize=5, seed=1)
    own_level = LevelForest.from_packed(own)
    own_level.predict(Xf[:1000])
    numba.set_num_threads(1)
    Xf32 = Xf.astype(np.float32)
    tf, pf = race({"packed": lambda: own.predict(Xf), "level": lambda: own_level.predict(Xf32)}, a.repeat)
    numba.set_num_threads(ncores)
    res.update({"factor_rows": len(Xf), "factor_forest_nodes": own.n_nodes,
                "factor_forest_categorical_nodes": int((own_level.feat < 0).sum()),
                "factor_packed_1thread_rows_per_s": len(Xf) / tf["packed"],
                "factor_level_1thread_rows_per_s": len(Xf) / tf["level"],
                "factor_level_vs_packed": tf["packed"] / tf["level"],
                "factor_identical": bool(np.array_equal(pf["packed"], pf["level"]))})
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
