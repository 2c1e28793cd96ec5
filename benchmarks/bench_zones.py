"""Speed and exactness of the polygon zones (abzflux.prepare.vector, docs/prepare_products.md).

Natural Earth 110m countries (the copy in pyogrio's test fixtures) onto square EPSG:6931 grids
of +-4,500 km: the paper's region rule (wall time, peak memory, area per region), and the land
area of the polygons from exact coverage fractions (exactextract) and from centre-burning
(rasterio.features.rasterize), against the polygons' own area in the projection.

    PYTHONPATH=src python benchmarks/bench_zones.py 100 10 1     # cell sizes in km
"""

import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import shapely
import xarray as xr

from abzflux.formats import write_crs
from abzflux.prepare.layer import LayerSpec
from abzflux.prepare.vector import coverage_tiles, rasterise_zone, read_features, target_grid

SHP = Path(pyogrio.__file__).parent / "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
HALF = 4.5e6


def grid(step):
    x = np.arange(-HALF + step / 2, HALF, step)
    return write_crs(xr.Dataset(coords={"y": x[::-1].copy(), "x": x}), "EPSG:6931")


for km in (float(a) for a in sys.argv[1:] or ["100", "10"]):
    step = km * 1e3
    t = grid(step)
    cell_km2 = step * step / 1e6
    t0 = time.perf_counter()
    r = rasterise_zone(LayerSpec(name="region", files=(SHP,), options={"field": "iso_a3"}), t)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    areas = {
        n: float((r.values == i).sum()) * cell_km2 / 1e6 for i, n in enumerate(r.attrs["flag_meanings"].split(), 1)
    }
    print(f"{km:g} km ({t.x.size} x {t.y.size} cells): region {dt:.1f} s, peak RSS {rss:.0f} MB; Mkm2 " +
          ", ".join(f"{n} {a:.2f}" for n, a in areas.items()))  # fmt: skip
    if t.x.size > 2000:
        continue
    lf = rasterise_zone(LayerSpec(name="land_fraction", files=(SHP,)), t)
    g = target_grid(t)
    feats = read_features(LayerSpec(name="land_fraction", files=(SHP,)), g, None)
    exact = float(shapely.area(shapely.intersection(feats.geoms, shapely.box(*g.bounds))).sum()) / 1e6
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    burned = rasterize(
        [(geom, 1) for geom in feats.geoms],
        out_shape=(g.y.size, g.x.size),
        transform=from_origin(-HALF, HALF, step, step),
    )
    cov = float(lf.sum()) * cell_km2
    print(f"    land area: polygons {exact / 1e6:.4f} Mkm2; exact coverage {cov / 1e6:.4f} ({(cov / exact - 1) * 100:+.3f} %); "
          f"centre-burned {burned.sum() * cell_km2 / 1e6:.4f} ({(burned.sum() * cell_km2 / exact - 1) * 100:+.2f} %)")  # fmt: skip
    # per country (area in the grid >= 1e5 km2): the zone-area error of each method
    n = feats.geoms.size
    own = shapely.area(shapely.intersection(feats.geoms, shapely.box(*g.bounds))) / 1e6
    by_cov = np.zeros(n)
    for _rs, _cs, c in coverage_tiles(feats, np.arange(n), n, g):
        by_cov += c.reshape(n, -1).sum(axis=1) * cell_km2
    ids = rasterize([(geom, i + 1) for i, geom in enumerate(feats.geoms)], out_shape=(g.y.size, g.x.size),
                    transform=from_origin(-HALF, HALF, step, step), dtype="int32")  # fmt: skip
    by_burn = np.bincount(ids.ravel(), minlength=n + 1)[1:] * cell_km2
    big = own >= 1e5
    e_cov, e_burn = np.abs(by_cov[big] / own[big] - 1) * 100, np.abs(by_burn[big] / own[big] - 1) * 100
    print(
        f"    {big.sum()} countries >= 1e5 km2 in the grid, |area error| median / max: exact coverage "
        f"{np.median(e_cov):.4f} / {e_cov.max():.4f} %, centre-burned {np.median(e_burn):.2f} / {e_burn.max():.2f} %"
    )
