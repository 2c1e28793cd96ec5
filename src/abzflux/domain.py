"""The embedded default domain: the Arctic-Boreal Zone on a North Pole LAEA grid.

``data/domain_10km.npz`` is built once, at development time, by ``scripts/build_domain.py``
from real geography that PyPI wheels ship (GLOBE land mask, MODIS MCD12C1 land cover, ERA5
climatology, Natural Earth countries; see ``data/ATTRIBUTION.md``). At run time nothing but
numpy is needed to read it. :func:`load_domain` aggregates it to coarser grids.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import xarray as xr

from .formats import write_crs

BASE_RESOLUTION_KM = 10
CRS_EPSG = 6931  # NSIDC EASE-Grid 2.0 North == +proj=laea +lat_0=90 +lon_0=0 +datum=WGS84
BIOMES = ("boreal", "tundra")  # codes 1, 2
REGIONS = ("alaska", "canada", "europe", "siberia")  # codes 1..4


@lru_cache(maxsize=1)
def _base() -> dict[str, np.ndarray]:
    with resources.files("abzflux").joinpath("data/domain_10km.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _blocks(a: np.ndarray, k: int) -> np.ndarray:
    """View (..., ny, nx) as (..., ceil(ny/k), ceil(nx/k), k*k) blocks, zero-padding the edge."""
    *lead, ny, nx = a.shape
    ny2, nx2 = -(-ny // k), -(-nx // k)
    pad = [(0, 0)] * len(lead) + [(0, ny2 * k - ny), (0, nx2 * k - nx)]
    a = np.pad(a, pad).reshape(*lead, ny2, k, nx2, k)
    a = np.moveaxis(a, -3, -2)
    return a.reshape(*lead, ny2, nx2, k * k)


def _majority(codes: np.ndarray, weight: np.ndarray, k: int, ncode: int) -> np.ndarray:
    """Code with the largest summed weight in each k×k block (0 where the block has no weight)."""
    cb, wb = _blocks(codes, k), _blocks(weight, k)
    score = np.stack([np.where(cb == c, wb, 0.0).sum(-1) for c in range(ncode)], axis=-1)
    score[..., 0] = 0.0  # code 0 means "outside": never the majority of a block with weight
    out = score.argmax(-1).astype(codes.dtype)
    out[wb.sum(-1) <= 0] = 0
    return out


def load_domain(resolution_km: int = 50, crop: bool = True) -> xr.Dataset:
    """The ABZ domain aggregated to ``resolution_km`` (a multiple of 10 km).

    Returns a Dataset on (y, x) (metres, cell centres, y descending) with ``land_fraction``
    (share of each cell that is boreal/tundra land without lakes and ice, 0-1), ``biome``
    (1 boreal, 2 tundra), ``region`` (1 Alaska, 2 Canada, 3 Europe incl. Greenland,
    4 Siberia), ``igbp`` (majority MODIS IGBP class), ``t2m`` (ERA5 monthly climatology, degC,
    dims month, y, x), ``tp`` (mm month-1), ``lat``/``lon`` (degrees) and ``cell_area`` (m2).
    With ``crop`` the grid is cut to the bounding box of the domain's cells.
    """
    if resolution_km % BASE_RESOLUTION_KM or resolution_km < BASE_RESOLUTION_KM:
        raise ValueError(f"resolution_km must be a multiple of {BASE_RESOLUTION_KM}, got {resolution_km}")
    b = _base()
    k = resolution_km // BASE_RESOLUTION_KM
    lf10 = b["land_fraction"].astype(np.float64)
    lf = _blocks(lf10, k).mean(-1)
    wsum = _blocks(lf10, k).sum(-1)
    safe = np.where(wsum > 0, wsum, 1.0)

    def wmean(a):  # land-weighted block mean of a (..., ny, nx) field
        return (_blocks(a.astype(np.float64), k) * _blocks(lf10, k)).sum(-1) / safe

    t2m = wmean(b["t2m"] / 100.0)
    tp = wmean(b["tp"] / 10.0)
    biome = _majority(b["biome"], lf10, k, 3)
    region = _majority(b["region"], lf10, k, 5)
    igbp_codes = np.where(b["igbp"] == 255, 0, b["igbp"] + 1).astype(np.int16)  # shift: 0 = none
    igbp = _majority(igbp_codes, lf10, k, 18) - 1
    igbp = np.where(igbp < 0, 255, igbp).astype(np.uint8)

    res = resolution_km * 1000.0
    x = b["x"][0] + (np.arange(lf.shape[1]) * k + (k - 1) / 2) * (b["x"][1] - b["x"][0])
    y = b["y"][0] + (np.arange(lf.shape[0]) * k + (k - 1) / 2) * (b["y"][1] - b["y"][0])
    if crop:
        rows, cols = np.nonzero(lf > 0)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    else:
        r0, r1, c0, c1 = 0, lf.shape[0], 0, lf.shape[1]
    sl = (slice(r0, r1), slice(c0, c1))
    yy, xx = y[r0:r1], x[c0:c1]
    lon, lat = _lonlat(xx, yy)
    outside = lf[sl] <= 0
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), lf[sl].astype(np.float32)),
            "biome": (("y", "x"), np.where(outside, 0, biome[sl]).astype(np.uint8)),
            "region": (("y", "x"), np.where(outside, 0, region[sl]).astype(np.uint8)),
            "igbp": (("y", "x"), np.where(outside, 255, igbp[sl]).astype(np.uint8)),
            "t2m": (("month", "y", "x"), t2m[(slice(None),) + sl].astype(np.float32)),
            "tp": (("month", "y", "x"), tp[(slice(None),) + sl].astype(np.float32)),
            "lat": (("y", "x"), lat.astype(np.float32)),
            "lon": (("y", "x"), lon.astype(np.float32)),
            "cell_area": (("y", "x"), np.full(outside.shape, res * res, np.float32)),
        },
        coords={"y": yy, "x": xx, "month": np.arange(1, 13)},
        attrs={"resolution_m": res, "crs_epsg": CRS_EPSG},
    )
    ds = write_crs(ds, CRS_EPSG)
    ds["t2m"].attrs["units"] = "degC"
    ds["tp"].attrs["units"] = "mm month-1"
    ds["cell_area"].attrs["units"] = "m2"
    return ds


def _lonlat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    tr = Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)
    X, Y = np.meshgrid(x, y)
    return tr.transform(X, Y)


def domain_area_km2(resolution_km: int = 10) -> float:
    """Domain area (km2): sum over cells of land_fraction × cell area."""
    d = load_domain(resolution_km)
    return float((d.land_fraction * d.cell_area).sum()) / 1e6
