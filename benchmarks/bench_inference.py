"""Tree inference: abzflux's packed numba traversal vs scikit-learn's ``predict``, same forest.

    python benchmarks/bench_inference.py                 # 500 trees, 1,000,000 rows
    python benchmarks/bench_inference.py --quick         # 100 trees, 200,000 rows
    python benchmarks/bench_inference.py --shapes-only   # only the site-month forests below

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

Other forest shapes (``shapes`` in the JSON): sklearn forests (500 trees, min_samples_leaf 5)
fitted on the peer site-month table (``benchmarks/peers/make_site_months.py --seed 42``, 4,900
rows) with 17 predictors -- the 15 numeric ones plus month and vegetation type as integer codes
(sklearn splits them as numbers) -- with max_features 9 and 17 of 17; and a deeper, larger one
fitted the same way (max_features 9) on a 20,000-row table of 800 sites (``--n-rows 20000
--n-sites 800``). Each predicts rows drawn from its table with every numeric predictor
jittered by N(0, 0.1 sd) (300,000 rows; 100,000 for the large forest; float32 values, as
sklearn reads them), one thread each, best of ``--repeat`` alternating rounds, outputs
asserted identical. LevelForest is timed at each block size of ``--blocks`` (the first is
LevelForest's default). Shape statistics per forest: nodes, mean and maximum tree depth, mean
depth of the leaf a row reaches, and the mean compaction levels.
"""

from __future__ import annotations

import argparse
import importlib.util
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

from abzflux._rf import _LBLOCK, LevelForest, PackedForest, grow_forest
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


def site_month_table(n_rows: int, n_sites: int):
    """The peer site-month table: 15 numeric predictors, month and vegetation type as codes."""
    spec = importlib.util.spec_from_file_location("make_site_months", Path(__file__).parent / "peers" / "make_site_months.py")
    msm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(msm)
    df, _ = msm.generate(42, n_sites, n_rows, 213)
    veg = np.unique(df["veg_type"].to_numpy(), return_inverse=True)[1]
    X = np.column_stack([df[msm.PREDICTORS].to_numpy(np.float64), df["month"].to_numpy(np.float64) - 1,
                         veg.astype(np.float64)])
    return X, df["NEE"].to_numpy(np.float64), len(msm.PREDICTORS)


def jittered(X: np.ndarray, n_num: int, n: int, seed: int) -> np.ndarray:
    """n rows drawn from X, numeric columns + N(0, 0.1 sd), as float32 values (held in float64)."""
    rng = np.random.default_rng(seed)
    Xq = X[rng.integers(0, len(X), n)].copy()
    Xq[:, :n_num] += rng.normal(0.0, 0.1, (n, n_num)) * X[:, :n_num].std(0)
    return Xq.astype(np.float32).astype(np.float64)


def shape_stats(rf, level: LevelForest, X32: np.ndarray) -> dict:
    """Nodes, tree depths, mean depth of the leaf reached (over 20,000 rows), compaction levels."""
    trees = [e.tree_ for e in rf.estimators_]
    leaf = rf.apply(X32[:20000])
    reached = []
    for k, tr in enumerate(trees):
        d = np.zeros(tr.node_count, np.int64)
        for j in range(tr.node_count):  # children follow their parent in sklearn's numbering
            if tr.children_left[j] >= 0:
                d[tr.children_left[j]] = d[tr.children_right[j]] = d[j] + 1
        reached.append(d[leaf[:, k]].mean())
    depth = np.array([tr.max_depth for tr in trees])
    return {"nodes": int(sum(tr.node_count for tr in trees)), "depth_mean": float(depth.mean()),
            "depth_max": int(depth.max()), "leaf_depth_reached_mean": float(np.mean(reached)),
            "compaction_levels_mean": level.stages.mean(0).tolist()}


def race_shape(name: str, Xtr, ytr, X, max_features: int, trees: int, repeat: int, blocks: list[int]) -> dict:
    """sklearn vs LevelForest (float32 rows, each block size) on one forest, one thread each."""
    ncores = os.cpu_count()
    numba.set_num_threads(ncores)
    rf = RandomForestRegressor(n_estimators=trees, max_features=max_features, min_samples_leaf=5, random_state=0,
                               n_jobs=-1).fit(Xtr, ytr)
    level = LevelForest.from_sklearn(rf)
    X32 = X.astype(np.float32)
    level.predict(X32[:1000])
    rf.set_params(n_jobs=1)
    numba.set_num_threads(1)
    fns = {"sklearn": lambda: rf.predict(X)}
    for b in blocks:
        def run(b=b):
            level.block = b
            return level.predict(X32)
        fns[f"level_block{b}"] = run
    t, p = race(fns, repeat)
    level.block = _LBLOCK
    numba.set_num_threads(ncores)
    res = {"name": name, "train_rows": len(Xtr), "predictors": Xtr.shape[1], "max_features": max_features,
           "trees": trees, "rows": len(X), **shape_stats(rf, level, X32),
           "sklearn_1thread_rows_per_s": len(X) / t["sklearn"]}
    for b in blocks:
        res[f"level_block{b}_1thread_rows_per_s"] = len(X) / t[f"level_block{b}"]
        res[f"speedup_level_block{b}_1thread"] = t["sklearn"] / t[f"level_block{b}"]
        res[f"identical_level_block{b}"] = bool(np.array_equal(p["sklearn"], p[f"level_block{b}"]))
    return res


def shapes(trees: int, rows: int, repeat: int, blocks: list[int]) -> list[dict]:
    """The site-month forests (see the module docstring)."""
    out = []
    Xtr, ytr, n_num = site_month_table(4900, 200)
    X = jittered(Xtr, n_num, rows, 3)
    for mf in (9, 17):
        out.append(race_shape(f"site-month, max_features {mf}/17", Xtr, ytr, X, mf, trees, repeat, blocks))
    Xtr, ytr, n_num = site_month_table(20000, 800)
    X = jittered(Xtr, n_num, rows // 3, 3)
    out.append(race_shape("site-month 20,000 rows (deeper), max_features 9/17", Xtr, ytr, X, 9, trees, repeat, blocks))
    return out


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
    ap.add_argument("--blocks", default=f"{_LBLOCK},256", help="LevelForest block sizes timed on the site-month forests")
    ap.add_argument("--shape-rows", type=int, default=None, help="rows predicted by the site-month forests")
    ap.add_argument("--shapes-only", action="store_true", help="only the site-month forests")
    a = ap.parse_args()
    trees = a.trees or (100 if a.quick else 500)
    rows = a.rows or (200_000 if a.quick else 1_000_000)
    blocks = [int(b) for b in a.blocks.split(",")]
    shape_rows = a.shape_rows or (60_000 if a.quick else 300_000)
    if a.shapes_only:
        res = {"cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "sklearn": sklearn.__version__, "numba": numba.__version__,
               "shapes": shapes(trees, shape_rows, a.repeat, blocks)}
        print(json.dumps(res, indent=2))
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=2))
        return
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
    def level_block256():  # the earlier kernel's blocking: 256 rows, no sub-blocks
        level.block = 256
        out = level.predict(X32)
        level.block = _LBLOCK
        return out

    t, p = race({"sklearn": lambda: rf.predict(X), "packed": lambda: packed.predict(X32),
                 "level": lambda: level.predict(X32), "level_f64": lambda: level.predict(X64),
                 "level_block256": level_block256}, a.repeat)
    res["identical_level_block256"] = bool(np.array_equal(p["sklearn"], p["level_block256"]))
    res["speedup_level_block256_1thread"] = t["sklearn"] / t["level_block256"]
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
    res["shape"] = shape_stats(rf, level, X32)
    res["shapes"] = shapes(trees, shape_rows, a.repeat, blocks)
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
