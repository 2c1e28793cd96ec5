"""Pixel-wise trends: abzflux.trends.trend_grid vs a per-pixel Python loop.

    python benchmarks/bench_trends.py            # (20, 200, 200) = 40,000 pixels
    python benchmarks/bench_trends.py --quick    # (20, 60, 60) = 3,600 pixels, smaller loop

The grid is synthetic annual data shaped like the reference series (tests/data): per pixel a
linear trend (N(0, 0.05) per year) plus AR(1) noise with phi ~ U(0, 0.6), 1% of values
missing. trend_grid (Zhang, zyp 0.11-1 semantics) is timed on the whole grid, once on a
numpy array (one thread) and once dask-chunked over space (threads scheduler, all cores).
The per-pixel loop calls pymannkendall.original_test + pymannkendall.sens_slope on the first
--loop-pixels pixels (no prewhitening at all: less work per pixel than Zhang) and, for the
same semantics, abzflux.trends.zyp_trend; loop rates are per pixel, extrapolated.
The loop pixels are also checked to be identical between trend_grid and zyp_trend.
trend_grid with method="yuepilon" (one Mann-Kendall and two Sen fits per pixel, like the
pymannkendall loop does once) is timed too, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import xarray as xr

from abzflux import trends


def make_grid(n_years: int, ny: int, nx: int, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    P = ny * nx
    phi = rng.uniform(0.0, 0.6, P)
    e = rng.normal(size=(P, n_years))
    ar = np.empty((P, n_years))
    ar[:, 0] = e[:, 0]
    for t in range(1, n_years):
        ar[:, t] = phi * ar[:, t - 1] + e[:, t]
    y = rng.normal(0.0, 0.05, (P, 1)) * np.arange(n_years) + ar
    y[rng.random(y.shape) < 0.01] = np.nan
    return xr.DataArray(
        y.T.reshape(n_years, ny, nx),
        dims=("year", "y", "x"),
        coords={"year": np.arange(2001, 2001 + n_years)},
        name="nee",
        attrs={"units": "g C m-2 yr-1"},
    )


def timed(fn, repeat: int = 1):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="(20, 60, 60) grid, 100 loop pixels")
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--ny", type=int, default=200)
    ap.add_argument("--nx", type=int, default=200)
    ap.add_argument("--loop-pixels", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=0,
                    help="dask chunk size along y (default: ny / cores, rounded up)")
    ap.add_argument("--scheduler", default="threads", choices=("threads", "processes"),
                    help="dask scheduler for the chunked run")
    ap.add_argument("--repeat", type=int, default=2, help="timed repeats of the grid runs (best)")
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    if a.quick:
        a.ny, a.nx, a.loop_pixels, a.repeat = 60, 60, 100, 1

    da = make_grid(a.years, a.ny, a.nx, a.seed)
    P = a.ny * a.nx
    cores = os.cpu_count() or 1
    chunk = a.chunk_rows or max(1, -(-a.ny // cores))
    print(f"grid {a.years} x {a.ny} x {a.nx} = {P:,} pixels; {cores} cores; "
          f"numba kernels: {'on' if trends.USE_NUMBA else 'off (numpy path)'}")

    # compile / load the kernels outside the timings
    t_warm, _ = timed(lambda: trend_grid_np(da.isel(y=slice(0, 1))))
    print(f"warm-up (numba compile or cache load): {t_warm:.2f} s")

    t_np, ds = timed(lambda: trend_grid_np(da), a.repeat)
    lazy = da.chunk({"y": chunk, "x": -1})
    t_dask, ds_dask = timed(lambda: trends.trend_grid(lazy).compute(scheduler=a.scheduler),
                            a.repeat)
    same_dask = all(np.array_equal(ds[v].values, ds_dask[v].values, equal_nan=True)
                    for v in ds.data_vars)
    t_yp, _ = timed(lambda: trends.trend_grid(da, method="yuepilon"), a.repeat)
    nruns = ds["nruns"].values.ravel()
    ok = np.isfinite(nruns)
    print(f"trend_grid zhang, numpy input (1 thread):      {t_np:7.3f} s  "
          f"{P / t_np:10,.0f} px/s")
    print(f"trend_grid zhang, dask chunks of {chunk} rows ({a.scheduler}): {t_dask:7.3f} s  "
          f"{P / t_dask:10,.0f} px/s  (identical to numpy input: {same_dask})")
    print(f"trend_grid yuepilon (one MK + two Sen fits per pixel, no iteration), 1 thread: "
          f"{t_yp:7.3f} s  {P / t_yp:10,.0f} px/s")
    print(f"  Zhang runs per pixel: 1 run {np.mean(nruns[ok] == 1):.1%}, median "
          f"{np.median(nruns[ok]):.0f}, mean {np.mean(nruns[ok]):.1f}, hit the 500-run cap "
          f"{np.mean(nruns[ok] == 500):.2%}; NA pixels {np.mean(~ok):.2%}")

    Y = da.values.reshape(a.years, -1).T
    sub = Y[: a.loop_pixels]
    loops = {}
    try:
        import pymannkendall as mk

        def pmk_loop():
            for y in sub:
                mk.original_test(y)
                mk.sens_slope(y)

        t_pmk, _ = timed(pmk_loop)
        loops["pymannkendall original_test + sens_slope"] = t_pmk / len(sub)
    except ImportError:
        print("pymannkendall not installed: loop baseline is zyp_trend only")

    t_zyp, scal = timed(lambda: [trends.zyp_trend(y) for y in sub])
    loops["abzflux zyp_trend (zhang), scalar"] = t_zyp / len(sub)
    fields = [trends.GRID_VARIABLES[v] for v in trends.GRID_VARIABLES]
    S = np.array([[r[f] for f in fields] for r in scal])
    G = np.stack([ds[v].values.ravel()[: a.loop_pixels] for v in trends.GRID_VARIABLES], 1)
    same_scalar = np.array_equal(G, S, equal_nan=True)

    best_grid = P / min(t_np, t_dask)
    print(f"per-pixel loops over the first {len(sub)} pixels (extrapolated):")
    result = {"pixels": P, "years": a.years, "cores": cores, "numba": trends.USE_NUMBA,
              "grid_numpy_s": t_np, "grid_dask_s": t_dask, "chunk_rows": chunk,
              "scheduler": a.scheduler,
              "grid_px_per_s": best_grid, "loops": {}, "grid_equals_scalar": bool(same_scalar)}
    for name, per_px in loops.items():
        rate = 1.0 / per_px
        print(f"  {name:45s} {per_px * 1e6:9.0f} us/px {rate:10,.0f} px/s   "
              f"trend_grid zhang is {best_grid / rate:5.0f}x faster "
              f"(yuepilon {P / t_yp / rate:5.0f}x)")
        result["loops"][name] = {"us_per_px": per_px * 1e6, "ratio": best_grid / rate,
                                 "ratio_yuepilon": P / t_yp / rate}
    result["grid_yuepilon_s"] = t_yp
    print(f"trend_grid == zyp_trend on the loop pixels (bit for bit): {same_scalar}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {platform.processor() or platform.platform()}")
    if a.json_out:
        with open(a.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


def trend_grid_np(da: xr.DataArray) -> xr.Dataset:
    return trends.trend_grid(da)


if __name__ == "__main__":
    main()
