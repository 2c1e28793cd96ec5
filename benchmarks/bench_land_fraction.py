"""Speed and memory of the land fraction from a finer land-cover raster (docs/prepare_products.md).

A 9000 x 9000 1-km EPSG:6931 uint8 raster (10 % of cells ESA CCI class 210, water; written
first, in a child process) averaged onto 8-km and 1-km target grids of +-4,500 km.

    PYTHONPATH=src python benchmarks/bench_land_fraction.py
"""

import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

N = 9000


def write(path):
    import rasterio
    from rasterio.transform import from_origin

    codes = np.where(np.random.default_rng(0).random((N, N)) < 0.1, 210, 70).astype(np.uint8)
    profile = dict(driver="GTiff", width=N, height=N, count=1, dtype="uint8", crs="EPSG:6931", tiled=True,
                   transform=from_origin(-4.5e6, 4.5e6, 1000, 1000), compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(codes[None])


if __name__ == "__main__":
    from abzflux.formats import write_crs
    from abzflux.prepare.layer import LayerSpec
    from abzflux.prepare.vector import land_fraction_from_raster

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lc.tif"
        p = multiprocessing.get_context("spawn").Process(target=write, args=(path,))
        p.start()
        p.join()
        for step in (8000.0, 1000.0):
            x = np.arange(-4.5e6 + step / 2, 4.5e6, step)
            t = write_crs(xr.Dataset(coords={"y": x[::-1].copy(), "x": x}), "EPSG:6931")
            t0 = time.perf_counter()
            lf = land_fraction_from_raster(LayerSpec(name="land_fraction", files=(path,)), t)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{step / 1e3:g} km ({x.size} x {x.size}): {time.perf_counter() - t0:.1f} s, "
                  f"mean land fraction {float(lf.mean()):.4f}, peak RSS {rss:.0f} MB")  # fmt: skip
