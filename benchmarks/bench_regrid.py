"""Accuracy and speed of the conservative lat/lon -> analysis-grid regridding (docs/compare.md).

A 2-degree lat/lon grid (41-89 N) onto a 100-km EPSG:6931 grid of 99 x 99 cells, with
n x n sub-points per analysis cell: how far the sampled overlap areas of the source cells
wholly inside the grid are from their exact ellipsoidal areas (the correction factor), and
the error of the covered-area-weighted mean after the correction (exact by construction).

    PYTHONPATH=src python benchmarks/bench_regrid.py
"""

import time

import numpy as np
from pyproj import CRS

from abzflux import compare as cmp

grid = cmp.LatLonGrid(np.arange(41.0, 90, 2.0), np.arange(-179.0, 180, 2.0))
x = y = np.arange(-4900e3, 4901e3, 100e3)
crs = CRS.from_epsg(6931)
inside = cmp._inside_grid(grid, x, y, crs)
la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
field = np.where(inside, (50 * np.cos(np.radians(3 * lo)) + (90 - la) ** 1.5).ravel(), np.nan)
areas = grid.areas()
exact = np.nansum(field * areas) / areas[inside].sum()
print(f"{inside.sum()} source cells wholly inside the {y.size} x {x.size} grid")
print("n_sub | seconds | |factor-1| median | 95th pct | max | area-weighted | mean rel. error after correction")
for n in (5, 10, 20):
    t = time.perf_counter()
    W, f = cmp.latlon_weights(grid, x, y, crs, n_sub=n)
    dt = time.perf_counter() - t
    out, cov = cmp.regrid(W, field[:, None])
    ok = np.isfinite(out[:, 0])
    mean = (cov[ok, 0] * out[ok, 0]).sum() / cov[ok, 0].sum()
    d, a = np.abs(f[inside] - 1), areas[inside]
    print(f"{n} | {dt:.2f} | {np.median(d):.4f} | {np.percentile(d, 95):.4f} | {d.max():.4f} | "
          f"{(d * a).sum() / a.sum():.4f} | {abs(mean - exact) / abs(exact):.1e}")
