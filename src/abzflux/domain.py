"""The embedded default domain: the Arctic-Boreal Zone on a North Pole LAEA grid.

``data/domain_10km.npz`` is built once, at development time, by ``scripts/build_domain.py``
from real geography that PyPI wheels ship (GLOBE land mask, MODIS MCD12C1 land cover, ERA5
climatology, Natural Earth countries; see ``data/ATTRIBUTION.md``). At run time nothing but
numpy is needed to read it. :func:`load_domain` aggregates it to coarser grids.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .formats import write_crs

if TYPE_CHECKING:
    import scipy.sparse

BASE_RESOLUTION_KM = 10
CRS_EPSG = 6931  # NSIDC EASE-Grid 2.0 North == +proj=laea +lat_0=90 +lon_0=0 +datum=WGS84
BIOMES = ("boreal", "tundra")  # codes 1, 2
REGIONS = ("alaska", "canada", "europe", "siberia")  # codes 1..4


@lru_cache(maxsize=1)
def base_grid() -> dict[str, np.ndarray]:
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


def _overlap(n_src: int, src_res: float, dst_res: float) -> scipy.sparse.csr_matrix:
    """(n_dst, n_src) sparse matrix: the share of each destination cell covered by each source
    cell along one axis, both grids starting at the same edge. Destination cells reaching past
    the source extent are covered only partly (the rest counts as outside the domain)."""
    from scipy import sparse

    n_dst = int(np.ceil(n_src * src_res / dst_res - 1e-9))
    a = np.arange(n_dst + 1) * dst_res  # destination edges
    b = np.arange(n_src + 1) * src_res  # source edges
    rows, cols, vals = [], [], []
    for i in range(n_dst):
        j0 = int(np.searchsorted(b, a[i], side="right")) - 1
        j = max(j0, 0)
        while j < n_src and b[j] < a[i + 1]:
            ov = min(a[i + 1], b[j + 1]) - max(a[i], b[j])
            if ov > 0:
                rows.append(i)
                cols.append(j)
                vals.append(ov / dst_res)
            j += 1
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_dst, n_src))


def _aggregate(b: dict, resolution_km: float):
    """Base 10-km fields on a coarser or finer grid: (land fraction, land-weighted mean of a
    field, majority code by land weight, x centres, y centres).

    A multiple of 10 km aggregates k×k blocks; any other spacing (the paper's 8 km) remaps by
    exact area overlap of the axis-aligned cells (both grids share the projection and the
    upper-left corner), which conserves land area. Below 10 km no new geographic detail
    appears: the finer cells inherit the 10-km fields."""
    lf10 = b["land_fraction"].astype(np.float64)
    dx, dy = b["x"][1] - b["x"][0], b["y"][1] - b["y"][0]
    res = resolution_km * 1000.0
    if resolution_km % BASE_RESOLUTION_KM == 0:
        k = int(resolution_km // BASE_RESOLUTION_KM)
        lf = _blocks(lf10, k).mean(-1)
        wsum = _blocks(lf10, k).sum(-1)
        safe = np.where(wsum > 0, wsum, 1.0)

        def wmean(a):  # land-weighted block mean of a (..., ny, nx) field
            return (_blocks(a.astype(np.float64), k) * _blocks(lf10, k)).sum(-1) / safe

        def majority(codes, ncode):
            return _majority(codes, lf10, k, ncode)

        x = b["x"][0] + (np.arange(lf.shape[1]) * k + (k - 1) / 2) * dx
        y = b["y"][0] + (np.arange(lf.shape[0]) * k + (k - 1) / 2) * dy
        return lf, wmean, majority, x, y
    oy = _overlap(lf10.shape[0], abs(dy), res)
    ox = _overlap(lf10.shape[1], abs(dx), res)

    def remap(a):  # overlap-weighted sum over the source cells, per destination cell
        return np.asarray(oy @ (ox @ a.T).T)

    lf = remap(lf10)
    safe = np.where(lf > 0, lf, 1.0)

    def wmean(a):
        a = a.astype(np.float64)
        if a.ndim == 3:
            return np.stack([remap(m * lf10) for m in a]) / safe
        return remap(a * lf10) / safe

    def majority(codes, ncode):
        score = np.stack([remap(np.where(codes == c, lf10, 0.0)) for c in range(ncode)], axis=-1)
        score[..., 0] = 0.0
        out = score.argmax(-1).astype(codes.dtype)
        out[lf <= 0] = 0
        return out

    x0, y0 = b["x"][0] - dx / 2, b["y"][0] - dy / 2  # the shared corner
    x = x0 + (np.arange(lf.shape[1]) + 0.5) * res * np.sign(dx)
    y = y0 + (np.arange(lf.shape[0]) + 0.5) * res * np.sign(dy)
    return lf, wmean, majority, x, y


def load_domain(resolution_km: float = 50, crop: bool = True) -> xr.Dataset:
    """The ABZ domain on a grid of ``resolution_km`` spacing.

    Multiples of 10 km aggregate the 10-km base grid by blocks; other spacings (e.g. the
    paper's 8 km) remap it by exact cell overlap (land area conserved; see ``_aggregate``).
    Returns a Dataset on (y, x) (metres, cell centres, y descending) with ``land_fraction``
    (share of each cell that is boreal/tundra land without lakes and ice, 0-1), ``biome``
    (1 boreal, 2 tundra), ``region`` (1 Alaska, 2 Canada, 3 Europe incl. Greenland,
    4 Siberia), ``igbp`` (majority MODIS IGBP class), ``t2m`` (ERA5 monthly climatology, degC,
    dims month, y, x), ``tp`` (mm month-1), ``lat``/``lon`` (degrees) and ``cell_area`` (m2).
    With ``crop`` the grid is cut to the bounding box of the domain's cells.
    """
    if not resolution_km > 0:
        raise ValueError(f"resolution_km must be positive, got {resolution_km}")
    b = base_grid()
    lf, wmean, majority, x, y = _aggregate(b, resolution_km)
    t2m = wmean(b["t2m"] / 100.0)
    tp = wmean(b["tp"] / 10.0)
    biome = majority(b["biome"], 3)
    region = majority(b["region"], 5)
    igbp_codes = np.where(b["igbp"] == 255, 0, b["igbp"] + 1).astype(np.int16)  # shift: 0 = none
    igbp = majority(igbp_codes, 18) - 1
    igbp = np.where(igbp < 0, 255, igbp).astype(np.uint8)

    res = resolution_km * 1000.0
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
