"""Race leave-one-site-out mtry tuning: abzflux vs R caret + randomForest, same CSV and folds.

Both sides read the peer CSV (benchmarks/peers/make_site_months.py), use the same predictors
(15 numeric + factors veg_type and biome = 17), the same grid, 500 trees, nodesize 5, and the same
held-out sites: all of them, or with ``--max-folds K`` the K evenly spaced sites that the R
harness picks (``round(seq(1, n_sites, length.out = K))`` over sorted site ids), each fold still
trained on all other sites. Prints wall times, the speed ratio and both sides' CV skill on the
same folds.

    python benchmarks/peers/make_site_months.py --seed 42 --out /tmp/site_months.csv
    python benchmarks/bench_loso.py --csv /tmp/site_months.csv --response NEE --max-folds 10 --r

``--site-oob FRACTION:TREES`` also runs the grouped out-of-bag CV (``[forest] cv = "site_oob"``)
on all sites of the same table and prints its chosen mtry, skill and wall time next to exact LOSO
(run exact LOSO with ``--max-folds 0``, all 200 folds, for the like-for-like skill comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from abzflux.cv import loso_cv, site_oob_cv

NUMERIC = ["srad", "vpd", "co2", "snow_cover", "soil_temp", "soil_moist", "ndvi", "lst", "cti",
           "nontree_pct", "nonveg_pct", "tree_pct", "soil_ph", "soc_stock", "permafrost_prob"]
FACTORS = ["veg_type", "biome"]
HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--response", default="NEE")
    ap.add_argument("--ntree", type=int, default=500)
    ap.add_argument("--grid", default="2,9,17")
    ap.add_argument("--max-folds", type=int, default=0, help="evaluate K evenly spaced folds (0 = all)")
    ap.add_argument("--r", action="store_true", help="also run the R caret harness on the same folds")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json-out", default="")
    ap.add_argument("--site-oob", default="", help="FRACTION:TREES: also run cv = site_oob on all sites")
    ap.add_argument("--seed", type=int, default=448)
    ap.add_argument("--r-folds", type=int, default=-1,
                    help="R harness: its own K evenly spaced folds (default: the same folds as abzflux)")
    a = ap.parse_args(argv)

    d = pd.read_csv(a.csv).sort_values(["site_id", "year", "month"], kind="mergesort").reset_index(drop=True)
    d = d[["site_id", "year", "month", a.response] + NUMERIC + FACTORS].dropna().reset_index(drop=True)
    sites = np.array(sorted(d.site_id.unique()))
    holdout = None
    if a.max_folds and a.max_folds < len(sites):
        sel = np.unique(np.round(np.linspace(1, len(sites), a.max_folds)).astype(int)) - 1
        holdout = list(sites[sel])
    X = d[NUMERIC + FACTORS].copy()
    for f in FACTORS:  # factor levels as integer codes (sorted labels), like R's factor()
        X[f] = pd.Categorical(X[f]).codes
    grid = [int(g) for g in a.grid.split(",")]
    loso_cv(X.iloc[:300], d[a.response].to_numpy()[:300], d.site_id.to_numpy()[:300], [2], n_trees=5,
            categorical=FACTORS)  # compile numba kernels before timing
    t0 = time.perf_counter()
    res = loso_cv(X, d[a.response].to_numpy(), d.site_id.to_numpy(), grid, n_trees=a.ntree,
                  categorical=FACTORS, holdout=holdout, seed=a.seed)
    py_wall = time.perf_counter() - t0
    n_folds = len(sites) if holdout is None else len(holdout)
    best = res.metrics[res.metrics.selected].iloc[0]
    out = {"python": {"wall_s": py_wall, "folds": n_folds, "chosen_mtry": res.best_mtry,
                      "caret_RMSE": best.caret_RMSE, "caret_Rsquared": best.caret_Rsquared,
                      "pooled_R2": best.pooled_R2, "pooled_RMSE": best.pooled_RMSE, "pooled_bias": best.pooled_bias,
                      "per_mtry": res.metrics[["mtry", "caret_RMSE", "caret_Rsquared", "pooled_R2"]].to_dict("records")}}
    print(f"abzflux: {n_folds} folds x {len(grid)} mtry x {a.ntree} trees in {py_wall:.1f} s; "
          f"mtry {res.best_mtry}, caret RMSE {best.caret_RMSE:.3f}, R2 {best.caret_Rsquared:.3f}, "
          f"pooled R2 {best.pooled_R2:.3f}")
    if a.site_oob:
        frac, trees = float(a.site_oob.split(":")[0]), int(a.site_oob.split(":")[1])
        site_oob_cv(X.iloc[:300], d[a.response].to_numpy()[:300], d.site_id.to_numpy()[:300], [2], n_trees=40,
                    site_fraction=0.5, categorical=FACTORS, min_oob_trees=1)  # compile
        t0 = time.perf_counter()
        so = site_oob_cv(X, d[a.response].to_numpy(), d.site_id.to_numpy(), grid, n_trees=trees,
                         site_fraction=frac, categorical=FACTORS, seed=a.seed)
        so_wall = time.perf_counter() - t0
        sb = so.metrics[so.metrics.selected].iloc[0]
        out["site_oob"] = {"wall_s": so_wall, "fraction": frac, "trees": trees, "chosen_mtry": so.best_mtry,
                           "caret_RMSE": sb.caret_RMSE, "caret_Rsquared": sb.caret_Rsquared,
                           "pooled_R2": sb.pooled_R2, "pooled_RMSE": sb.pooled_RMSE, "pooled_bias": sb.pooled_bias,
                           "per_mtry": so.metrics[["mtry", "caret_RMSE", "caret_Rsquared", "pooled_R2"]].to_dict("records")}
        print(f"abzflux site_oob ({frac}:{trees}, all {len(sites)} sites): {so_wall:.1f} s; mtry {so.best_mtry}, "
              f"caret RMSE {sb.caret_RMSE:.3f}, R2 {sb.caret_Rsquared:.3f}, pooled R2 {sb.pooled_R2:.3f}")
    if a.r:
        with tempfile.TemporaryDirectory() as tmp:
            js = Path(tmp) / "r.json"
            cmd = ["Rscript", str(HERE / "peers" / "caret_rf_loso.R"), "--csv", a.csv, "--response", a.response,
                   "--ntree", str(a.ntree), "--grid", a.grid, "--cores", str(a.cores), "--json-out", str(js)]
            r_folds = a.max_folds if a.r_folds < 0 else a.r_folds
            if r_folds and r_folds < len(sites):
                cmd += ["--max-folds", str(r_folds)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            r_wall = time.perf_counter() - t0
            r = json.loads(js.read_text())
        out["r"] = {"wall_s": r["wall_s"], "process_wall_s": r_wall, "folds": r["folds_evaluated"],
                    "chosen_mtry": r["chosen_mtry"], "caret_RMSE": r["caret_fold_mean"]["RMSE"],
                    "caret_Rsquared": r["caret_fold_mean"]["Rsquared"], "pooled_R2": r["pooled"]["R2_pearson2"],
                    "pooled_RMSE": r["pooled"]["RMSE"], "pooled_bias": r["pooled"]["bias_pred_minus_obs"],
                    "versions": r["versions"]}
        out["speedup"] = r["wall_s"] / py_wall
        out["delta_caret_R2"] = best.caret_Rsquared - r["caret_fold_mean"]["Rsquared"]
        print(f"R caret+randomForest: {r['wall_s']:.1f} s (train()), mtry {r['chosen_mtry']}, "
              f"caret RMSE {r['caret_fold_mean']['RMSE']:.3f}, R2 {r['caret_fold_mean']['Rsquared']:.3f}, "
              f"pooled R2 {r['pooled']['R2_pearson2']:.3f}")
        out["speedup_per_fold"] = (r["wall_s"] / r["folds_evaluated"]) / (py_wall / n_folds)
        print(f"speed-up {out['speedup']:.1f}x ({out['speedup_per_fold']:.1f}x per fold: R {r['folds_evaluated']} folds, "
              f"abzflux {n_folds}); caret-style R2 difference {out['delta_caret_R2']:+.3f}")
    out["cpu_count"] = os.cpu_count()
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
