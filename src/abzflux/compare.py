"""Comparison with other products, and where the model extrapolates (docs/compare.md).

* Reference products (docs/formats.md §5) on the analysis grid, or on a regular lat/lon grid
  regridded conservatively onto it (:func:`latlon_weights`); restricted to the years they share
  with the run; fire emissions subtracted from products that include them. Per product: Pearson
  r of the mean annual NEE maps and of the per-pixel trend maps on the product's own grid
  (abzflux aggregated onto it, :class:`NativeGrid`; or on the analysis grid), with Dutilleul's
  modified t-test p (:func:`correlation`); zone budget ratios and the share of annual-source
  area on the analysis grid.
* MESS (Elith et al. 2010) of the period-mean continuous predictors against the NEE training
  rows of each period (:func:`mess`); the area of applicability (Meyer & Pebesma 2021,
  :class:`AOA`); bootstrap SD inside vs outside it; k-means environmental clusters with the
  sites and site-months in each.

Everything over the grid is computed in bands of rows (bounded memory) and written into Zarr
band by band.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import xarray as xr
from scipy import sparse, stats
from scipy.spatial import cKDTree

from . import budgets as budgets_mod
from . import trends as trends_mod
from .errors import InputError
from .formats import axis_unit_m, consolidate, read_reference, write_crs
from .predictors import PAPER, PredictorSet, training_rows

log = logging.getLogger(__name__)

#: The paper's continuous predictors (no month, no vegetation-type factor): MESS, AOA and
#: clusters use the run's set's (``PredictorSet.continuous``); this is the default's.
CONTINUOUS: tuple[str, ...] = PAPER.continuous

#: MESS map classes, half-open intervals [lo, hi) (workflow.md §9 with its overlaps removed).
MESS_CLASSES = (
    (-np.inf, -80.0, -3),
    (-80.0, -20.0, -2),
    (-20.0, 0.0, -1),
    (0.0, 5.0, 1),
    (5.0, 40.0, 2),
    (40.0, np.inf, 3),
)

#: Bytes of one predictor band (time x rows x columns, float32) read at a time.
BAND_BYTES = 128 * 2**20

# WGS84, the ellipsoid of the analysis CRS (EPSG:6931) and of lat/lon products.
_A = 6378137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)
_E = np.sqrt(_E2)


# --------------------------------------------------------------------------- regridding
def _q(lat_deg: np.ndarray) -> np.ndarray:
    """Snyder's q(φ) (authalic latitude helper, Map Projections eq. 3-12)."""
    s = np.sin(np.radians(lat_deg))
    return (1 - _E2) * (s / (1 - _E2 * s * s) - np.log((1 - _E * s) / (1 + _E * s)) / (2 * _E))


def latlon_cell_areas(lat_edges: np.ndarray, dlon_deg: float) -> np.ndarray:
    """Exact area (m2) on the WGS84 ellipsoid of lat/lon cells between consecutive
    ``lat_edges`` and ``dlon_deg`` wide: a²/2 · Δλ · |q(φ2) − q(φ1)|."""
    q = _q(np.asarray(lat_edges, dtype=np.float64))
    return 0.5 * _A**2 * np.radians(abs(dlon_deg)) * np.abs(np.diff(q))


@dataclass
class LatLonGrid:
    """A regular lat/lon grid, ascending axes (the caller sorts the data the same way)."""

    lat: np.ndarray
    lon: np.ndarray

    @property
    def dlat(self) -> float:
        return float(self.lat[1] - self.lat[0])

    @property
    def dlon(self) -> float:
        return float(self.lon[1] - self.lon[0])

    @property
    def lat0(self) -> float:
        return float(self.lat[0]) - self.dlat / 2

    @property
    def lon0(self) -> float:
        return float(self.lon[0]) - self.dlon / 2

    def index(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Flat index (lat-major) of the cell holding each point; -1 outside the grid."""
        iy = np.floor((lat - self.lat0) / self.dlat).astype(np.int64)
        lon = self.lon0 + np.mod(lon - self.lon0, 360.0)  # the grid's longitude convention
        ix = np.floor((lon - self.lon0) / self.dlon).astype(np.int64)
        ok = (iy >= 0) & (iy < self.lat.size) & (ix >= 0) & (ix < self.lon.size)
        return np.where(ok, iy * self.lon.size + ix, -1)

    def areas(self) -> np.ndarray:
        edges = np.append(self.lat - self.dlat / 2, self.lat[-1] + self.dlat / 2)
        edges = np.clip(edges, -90, 90)
        return np.repeat(latlon_cell_areas(edges, self.dlon), self.lon.size)


def latlon_weights(
    grid: LatLonGrid, x: np.ndarray, y: np.ndarray, crs, n_sub: int = 10, block_cells: int = 200_000
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Conservative regridding weights from a lat/lon grid onto a projected equal-area grid.

    Each analysis cell is sampled with ``n_sub`` x ``n_sub`` points at the centres of equal
    sub-cells (each stands for 1/n² of the cell's area, exact on an equal-area grid); the
    points are transformed to lat/lon and counted per source cell. The overlap areas of every
    source cell that lies wholly inside the analysis grid are then rescaled so that they add up
    to its exact ellipsoidal area (:func:`latlon_cell_areas`). Returns W (analysis cells x
    source cells, m², y-major) and the factor applied per source cell (1 for cells not wholly
    inside). The regridded value of cell i is Σ_j W_ij v_j / Σ_j W_ij over finite v_j; then
    Σ_i (Σ_j W_ij) x_i = Σ_j area_j v_j: the area-weighted mean over the covered area equals
    the source's exact area-weighted mean.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    cell_area = abs(dx * dy) * axis_unit_m(pyproj.CRS.from_user_input(crs)) ** 2  # m2 (a grid in km too)
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    off = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    sx, sy = np.meshgrid(off * dx, off * dy)
    sx, sy = sx.ravel(), sy.ravel()
    nx, ny = x.size, y.size
    n_src = grid.lat.size * grid.lon.size
    rows_per = max(1, block_cells // nx)
    ii, jj, cc = [], [], []
    for r0 in range(0, ny, rows_per):
        yy = y[r0 : r0 + rows_per]
        cy, cx = np.meshgrid(yy, x, indexing="ij")
        px = (cx.ravel()[:, None] + sx[None, :]).ravel()
        py = (cy.ravel()[:, None] + sy[None, :]).ravel()
        lon, lat = tr.transform(px, py)
        j = grid.index(np.asarray(lat), np.asarray(lon))
        i = np.repeat(np.arange(r0 * nx, r0 * nx + yy.size * nx), sx.size)
        ok = j >= 0
        key = i[ok] * n_src + j[ok]
        u, c = np.unique(key, return_counts=True)
        ii.append(u // n_src)
        jj.append(u % n_src)
        cc.append(c)
    ii, jj, cc = np.concatenate(ii), np.concatenate(jj), np.concatenate(cc)
    w = cc * (cell_area / n_sub**2)
    sampled = np.bincount(jj, weights=w, minlength=n_src)
    factor = np.ones(n_src)
    inside = _inside_grid(grid, x, y, crs)
    true = grid.areas()
    fix = inside & (sampled > 0)
    factor[fix] = true[fix] / sampled[fix]
    W = sparse.csr_matrix((w * factor[jj], (ii, jj)), shape=(nx * ny, n_src))
    return W, factor


def _inside_grid(grid: LatLonGrid, x, y, crs, n_edge: int = 8) -> np.ndarray:
    """Whether each source cell's boundary (n_edge points per side) lies inside the analysis
    grid's extent (cell edges)."""
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    dx, dy = abs(float(x[1] - x[0])), abs(float(y[1] - y[0]))
    xmin, xmax = x.min() - dx / 2, x.max() + dx / 2
    ymin, ymax = y.min() - dy / 2, y.max() + dy / 2
    t = np.linspace(0, 1, n_edge)
    ok = np.ones(grid.lat.size * grid.lon.size, bool)
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    la, lo = la.ravel(), lo.ravel()
    h, k = grid.dlat / 2, grid.dlon / 2
    for a, b in ((-1, None), (1, None), (None, -1), (None, 1)):
        if a is not None:  # a parallel at lat ± h, all longitudes along it
            plat = np.clip(la[:, None] + a * h, -90, 90) + 0 * t[None, :]
            plon = lo[:, None] - k + 2 * k * t[None, :]
        else:
            plat = la[:, None] - h + 2 * h * t[None, :]
            plat = np.clip(plat, -90, 90)
            plon = lo[:, None] + b * k + 0 * t[None, :]
        px, py = tr.transform(plon.ravel(), plat.ravel())
        px, py = np.asarray(px).reshape(plat.shape), np.asarray(py).reshape(plat.shape)
        ok &= ((px >= xmin) & (px <= xmax) & (py >= ymin) & (py <= ymax)).all(axis=1)
    return ok


def regrid(W: sparse.csr_matrix, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply :func:`latlon_weights`: ``values`` (n_src, T) -> (n_cells, T) means over the
    finite source values, and the covered area (m², n_cells, T). NaN where nothing covers."""
    v = np.asarray(values, dtype=np.float64)
    fin = np.isfinite(v)
    num = W @ np.where(fin, v, 0.0)
    den = W @ fin.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / den, np.nan)
    return out, den


class NativeGrid:
    """Conservative aggregation of annual values on the analysis grid onto a product's grid.

    With W the overlap areas (:func:`latlon_weights`: analysis cells x product cells, m²) and
    lf_i the land fraction of analysis cell i, the land area of cell i inside product cell j is
    A_ij = W_ij · lf_i. Over bands of analysis cells, :meth:`add` sums

    * abzflux: Σ_i A_ij x_i and Σ_i A_ij over the cells i with a value every year (x = annual
      sums, years x cells), giving x_j = Σ A_ij x_i / Σ A_ij;
    * fire emissions (optional): Σ_i A_ij f_i over every land cell, giving the land-area-weighted
      mean f_j = Σ A_ij f_i / Σ A_ij over all land (what a product that includes fire holds);
    * the land area Σ_i A_ij and the area Σ_i W_ij of the product cell inside the analysis grid.

    The covered share of product cell j (:meth:`result`) is (Σ_i W_ij / area_j) × (Σ_{i with
    data} A_ij / Σ_i A_ij): the share of the cell inside the analysis grid times the share of
    its land there where abzflux has every year (land outside the grid counts as uncovered at
    the cell's land share)."""

    def __init__(self, n_src: int, n_years: int, fire: bool = False):
        self.num = np.zeros((n_src, n_years))
        self.data = np.zeros(n_src)
        self.land = np.zeros(n_src)
        self.inside = np.zeros(n_src)
        self.fire = np.zeros((n_src, n_years)) if fire else None

    def add(self, W_rows: sparse.spmatrix, land_fraction: np.ndarray, ours: np.ndarray, fire=None) -> None:
        """``W_rows``: the band's rows of W (cells, n_src); ``land_fraction`` (cells,);
        ``ours`` and ``fire``: annual sums (years, cells), NaN unless all 12 months."""
        lf = np.nan_to_num(np.asarray(land_fraction, np.float64).ravel())
        Wt = sparse.csr_matrix(W_rows).T.tocsr()  # (n_src, cells)
        At = Wt @ sparse.diags(lf)
        ok = np.isfinite(ours).all(0)
        self.num += At @ np.where(ok, ours, 0.0).T
        self.data += At @ ok.astype(np.float64)
        self.land += np.asarray(At.sum(1)).ravel()
        self.inside += np.asarray(Wt.sum(1)).ravel()
        if self.fire is not None and fire is not None:
            self.fire += At @ np.nan_to_num(np.asarray(fire, np.float64)).T  # fire is finite on land

    def result(self, src_areas: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(abzflux (years, n_src), fire (years, n_src) or None, covered share (n_src,))."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ours = np.where(self.data > 0, self.num.T / self.data, np.nan)
            fire = None if self.fire is None else np.where(self.land > 0, self.fire.T / self.land, np.nan)
            cover = np.where(self.land > 0, np.minimum(self.inside / src_areas, 1.0) * (self.data / self.land), 0.0)
        return ours, fire, cover


# --------------------------------------------------------------------------- Dutilleul's modified t-test
#: Distance classes of the modified t-test (SpatialPack::modified.ttest's default ``nclass``).
DUTILLEUL_CLASSES = 13
#: The modified t-test costs cells²: beyond this many cells, its effective sample size comes
#: from an evenly spaced subset of the compared cells (docs/compare.md).
DUTILLEUL_MAX_CELLS = 6000


@dataclass
class Correlation:
    """Pearson r of two maps, with the naive t-test p (n − 2 df) and Dutilleul's modified
    t-test p (n_eff − 2 df)."""

    r: float
    n: int
    n_eff: float
    p: float
    p_naive: float


def dutilleul_n_eff(
    x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray, n_classes: int = DUTILLEUL_CLASSES
) -> float:
    """Effective sample size of Dutilleul's (1993) modified t-test, as SpatialPack's
    ``modified.ttest`` (Vallejos, Osorio & Bevilacqua 2020) computes it.

    Distances are Euclidean between the points (px, py); ``n_classes`` classes of equal width
    up to the largest distance (a pair at distance d is in the first class whose upper bound
    is ≥ d). Per class k, Moran's index I_k = mean over the class's pairs of (x_i − x̄)(x_j − x̄)
    / var(x) (var with divisor n); the same for y. R_x has 1 on the diagonal and I_k(x) where
    the pair is in class k; with B = I − 11ᵀ/n,

        n_eff = 1 + tr(B R_x) tr(B R_y) / tr(B R_x B R_y).

    Computed in blocks of rows (memory ~ block x n), never forming the n x n matrices: with
    c_jk the number of other points in class k of point j, row sums s_j = 1 + Σ_k c_jk I_k,
    tr(B R) = n − Σ_j s_j / n and tr(B R_x B R_y) = Σ_ij R_x,ij R_y,ij − 2 Σ_j s_xj s_yj / n
    + (Σ_j s_xj)(Σ_j s_yj) / n²."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    px, py = np.asarray(px, np.float64), np.asarray(py, np.float64)
    n = x.size
    if n < 3:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    vx, vy = (xc * xc).mean(), (yc * yc).mean()
    if vx <= 0 or vy <= 0:
        return float("nan")
    K = int(n_classes)
    block = max(1, 2_000_000 // n)
    dmax = 0.0
    for j0 in range(0, n, block):
        d = np.hypot(px[j0 : j0 + block, None] - px[None, :], py[j0 : j0 + block, None] - py[None, :])
        dmax = max(dmax, float(d.max()))
    upper = dmax / K * np.arange(1, K + 1)
    counts = np.zeros((n, K))  # c_jk
    sx, sy = np.zeros(K), np.zeros(K)  # Σ over ordered pairs in class k of the centred products
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        b = j1 - j0
        d = np.hypot(px[j0:j1, None] - px[None, :], py[j0:j1, None] - py[None, :])
        k = np.minimum(np.searchsorted(upper, d, side="left"), K - 1)
        k[np.arange(b), np.arange(j0, j1)] = K  # the point itself: no class
        flat = (np.arange(b)[:, None] * (K + 1) + k).ravel()
        counts[j0:j1] = np.bincount(flat, minlength=b * (K + 1)).reshape(b, K + 1)[:, :K]
        wx = np.bincount(flat, weights=np.broadcast_to(xc, (b, n)).ravel(), minlength=b * (K + 1))
        wy = np.bincount(flat, weights=np.broadcast_to(yc, (b, n)).ravel(), minlength=b * (K + 1))
        sx += (xc[j0:j1, None] * wx.reshape(b, K + 1)[:, :K]).sum(0)
        sy += (yc[j0:j1, None] * wy.reshape(b, K + 1)[:, :K]).sum(0)
    card = counts.sum(0)  # ordered pairs per class
    with np.errstate(invalid="ignore", divide="ignore"):
        ix = np.where(card > 0, sx / card / vx, 0.0)
        iy = np.where(card > 0, sy / card / vy, 0.0)
    rx, ry = 1.0 + counts @ ix, 1.0 + counts @ iy
    sxx, syy = rx.sum(), ry.sum()
    trx, tr_y = n - sxx / n, n - syy / n
    trxy = n + (card * ix * iy).sum() - 2.0 * (rx * ry).sum() / n + sxx * syy / n**2
    return float(trx * tr_y / trxy + 1.0)


def correlation(
    a: np.ndarray,
    b: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    n_classes: int = DUTILLEUL_CLASSES,
    max_cells: int = DUTILLEUL_MAX_CELLS,
) -> Correlation:
    """Pearson r of ``a`` and ``b`` over the cells where both are finite, its naive two-sided
    t-test p (n − 2 df) and Dutilleul's modified t-test p: F = (n_eff − 2) r² / (1 − r²) on
    1 and n_eff − 2 df (:func:`dutilleul_n_eff` at the cells' coordinates px, py). Beyond
    ``max_cells`` cells n_eff is computed on an evenly spaced subset of them (conservative:
    n_eff of a subset is at most the subset's size)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, px, py = a[ok], b[ok], np.asarray(px, np.float64).ravel()[ok], np.asarray(py, np.float64).ravel()[ok]
    n = int(a.size)
    r, p_naive = ProductStats._r(ProductStats._sums(a, b))
    if not np.isfinite(r):
        return Correlation(r, n, float("nan"), float("nan"), p_naive)
    sel = _evenly_spaced(n, max_cells)
    n_eff = dutilleul_n_eff(a[sel], b[sel], px[sel], py[sel], n_classes)
    return Correlation(r, n, n_eff, modified_p(r, n_eff), p_naive)


def modified_p(r: float, n_eff: float) -> float:
    """Dutilleul's p: P(F(1, n_eff − 2) > (n_eff − 2) r² / (1 − r²)); NaN when n_eff ≤ 2."""
    df = n_eff - 2.0
    if not (np.isfinite(df) and np.isfinite(r)) or df <= 0:
        return float("nan")
    if abs(r) >= 1 - 1e-12:
        return 0.0
    return float(stats.f.sf(df * r * r / (1 - r * r), 1.0, df))


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most k evenly spaced items of n (all of them when n <= k)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def grid_correlation(
    sums: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int = DUTILLEUL_CLASSES,
    max_cells: int = DUTILLEUL_MAX_CELLS,
) -> Correlation:
    """:func:`correlation` of two maps on the analysis grid without holding more than them:
    r and the naive p from the streamed Pearson sums ``sums`` (:class:`ProductStats`, exact
    over every compared cell), n_eff from the maps ``a``, ``b`` (y, x; NaN where not compared)
    at an evenly spaced subset of at most ``max_cells`` of the compared cells."""
    r, p_naive = ProductStats._r(sums)
    idx = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    idx = idx[_evenly_spaced(idx.size, max_cells)]
    nx = a.shape[1]
    n_eff = float("nan")
    if np.isfinite(r):
        av, bv = np.asarray(a, np.float64).ravel()[idx], np.asarray(b, np.float64).ravel()[idx]
        px, py = np.asarray(x, np.float64)[idx % nx], np.asarray(y, np.float64)[idx // nx]
        n_eff = dutilleul_n_eff(av, bv, px, py, n_classes)
    return Correlation(r, int(sums[0]), n_eff, modified_p(r, n_eff), p_naive)


# --------------------------------------------------------------------------- reference products
@dataclass
class Reference:
    path: Path
    product: str
    ds: xr.Dataset
    latlon: bool
    fire_included: bool
    subtract_fire: bool
    years: list  # complete years shared with the run (and the fire record when subtracting)


def _flag(v) -> bool:
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode()
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(np.asarray(v).ravel()[0]) if v is not None else False


def _complete_years(times) -> set:
    t = pd.DatetimeIndex(times)
    n = pd.Series(1, index=t).groupby(t.year).size()
    return {int(y) for y in n[n == 12].index}


def read_references(
    paths, pred: xr.Dataset, run_years: tuple[int, int], fire: xr.Dataset | None, subtract_fire: bool, config_file=None
) -> list[Reference]:
    """Read and check every reference product before any stage runs: the contract (formats.md
    §5), the analysis grid for projected products, unique product names, fire emissions
    available when they must be subtracted, and at least one complete year shared with the run."""
    out, names = [], {}
    run = set(range(run_years[0], run_years[1] + 1))
    fire_years = _complete_years(fire.time.values) if fire is not None else set()
    for p in paths or []:
        ds = read_reference(p, like=None)
        latlon = "lat" in ds["nee"].dims
        if not latlon:
            ds = read_reference(p, like=pred)  # a projected product must be on the analysis grid
        else:
            ds = ds.sortby(["lat", "lon"])
            for c in ("lat", "lon"):
                if ds.sizes[c] < 2:
                    raise InputError(
                        p, f"coordinate `{c}` has fewer than 2 values", column=c, expected="a regular lat/lon grid"
                    )
        name = str(ds.attrs["product"]).strip()
        if name in names:
            raise InputError(
                p,
                f"product name {name!r} is also the name of {names[name]}",
                column="product",
                expected="a distinct global attribute `product` per reference file",
            )
        names[name] = p
        inc = _flag(ds.attrs.get("fire_included", 0))
        sub = inc and subtract_fire
        years = run & _complete_years(ds.time.values)
        if sub:
            if fire is None:
                raise InputError(
                    p,
                    f"product {name!r} includes fire emissions (fire_included = 1) but the run has "
                    "no fire file to subtract",
                    column="fire_included",
                    expected="inputs.fire, or compare.subtract_fire = false",
                )
            years &= fire_years
        if not years:
            raise InputError(
                p,
                f"no complete calendar year of {name!r} overlaps the run's years "
                f"{run_years[0]}-{run_years[1]}" + (" and the fire record" if sub else ""),
                column="time",
                expected="12 monthly steps in at least one run year",
            )
        out.append(Reference(Path(p), name, ds, latlon, inc, sub, sorted(years)))
    return out


class ProductStats:
    """Streaming comparison of one product with abzflux over bands of rows: Pearson sums of the
    mean annual and trend maps, zone budgets and source areas over the cells where both have
    every year."""

    def __init__(self, zones_names: list, n_years: int, threshold: float):
        self.zones = zones_names
        self.threshold = threshold
        self.map = np.zeros(6)
        self.trend = np.zeros(6)
        self.budget = np.zeros((2, len(zones_names), n_years))  # abzflux, product; g C
        self.src = np.zeros(3)  # area, source area abzflux, source area product (domain)
        self.n = 0

    @staticmethod
    def _sums(a, b):
        return np.array([a.size, a.sum(), b.sum(), (a * a).sum(), (b * b).sum(), (a * b).sum()])

    def add(self, ours: np.ndarray, prod: np.ndarray, w: np.ndarray, ours_trend=None, prod_trend=None) -> np.ndarray:
        """``ours``/``prod``: annual sums (years, cells); ``w``: zone weights (zone, cells, m²).
        Returns the common-cell mask."""
        ok = np.isfinite(ours).all(0) & np.isfinite(prod).all(0)
        self.n += int(ok.sum())
        ma, mb = ours[:, ok].mean(0), prod[:, ok].mean(0)
        self.map += self._sums(ma, mb)
        if ours_trend is not None:
            t = ok & np.isfinite(ours_trend) & np.isfinite(prod_trend)
            self.trend += self._sums(ours_trend[t], prod_trend[t])
        wk = w[:, ok]
        self.budget[0] += wk @ ours[:, ok].T
        self.budget[1] += wk @ prod[:, ok].T
        d = wk[0]
        self.src += [d.sum(), d[ma > self.threshold].sum(), d[mb > self.threshold].sum()]
        return ok

    @staticmethod
    def _r(s):
        n, sx, sy, sxx, syy, sxy = s
        if n < 3:
            return np.nan, np.nan
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        if vx <= 0 or vy <= 0:
            return np.nan, np.nan
        r = float(np.clip((n * sxy - sx * sy) / np.sqrt(vx * vy), -1, 1))
        if abs(r) >= 1 - 1e-12:
            return r, 0.0
        t = r * np.sqrt((n - 2) / (1 - r * r))
        return r, float(2 * stats.t.sf(abs(t), n - 2))

    def result(self):
        map_r, map_p = self._r(self.map)
        trend_r, trend_p = self._r(self.trend)
        tg = self.budget.mean(axis=2) / budgets_mod.TG
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = tg[1] / tg[0]
            share = self.src[1:] / self.src[0] if self.src[0] > 0 else np.full(2, np.nan)
        metrics = {
            "map_r": map_r,
            "map_p": map_p,
            "trend_r": trend_r,
            "trend_p": trend_p,
            "source_share_abzflux": float(share[0]),
            "source_share_product": float(share[1]),
            "n_cells": self.n,
        }
        budgets = pd.DataFrame({"zone": self.zones, "abzflux_tg_c": tg[0], "product_tg_c": tg[1], "ratio": ratio})
        return metrics, budgets


def annual_sums(monthly: np.ndarray) -> np.ndarray:
    """(12 * years, ...) -> (years, ...) annual sums; NaN unless all 12 months are finite."""
    a = monthly.reshape(-1, 12, *monthly.shape[1:])
    return np.where(np.isfinite(a).all(1), np.nansum(a, 1), np.nan)


def _trend(ann: np.ndarray, years: list, method: str = "zhang", preserve: bool = False) -> np.ndarray:
    """Per-pixel Theil-Sen slope (zyp, with the run's [trends] prewhitening) of annual sums
    (years, ...cells)."""
    if len(years) < 4:
        return np.full(ann.shape[1:], np.nan)
    dims = ("year",) + tuple(f"d{i}" for i in range(ann.ndim - 1))
    da = xr.DataArray(ann, dims=dims)
    res = trends_mod.trend_grid(
        da, "year", method, conf_intervals=False, preserve_range_for_sig_test=preserve, x=list(years)
    )
    return np.asarray(res["slope"].values)


#: ``compare.grid`` values: correlate on each product's own grid, or on the analysis grid.
GRIDS = ("product", "analysis")


def compare_products(
    refs: list[Reference],
    upscaled: xr.Dataset,
    zones: xr.Dataset,
    fire: xr.Dataset | None,
    crs,
    threshold: float,
    n_sub: int,
    *,
    grid: str = "product",
    min_cover: float = 0.5,
    trend_method: str = "zhang",
    trend_preserve: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, xr.Dataset]:
    """Every reference product against the run: ``(metrics, budgets, product_maps)``.

    ``metrics``: one row per product: Pearson r of the mean annual and of the trend maps with
    the naive and Dutilleul p (:func:`correlation`), on the product's own grid (``grid =
    "product"``: abzflux's annual sums aggregated conservatively onto a lat/lon product's cells,
    :class:`NativeGrid`, product cells with a covered share below ``min_cover`` dropped; a
    projected product is on the analysis grid already) or on the analysis grid (``grid =
    "analysis"``: the product regridded onto it, as before); source shares. ``budgets``: zone
    budgets of both over the product's years (Tg C yr-1), always on the analysis grid.
    ``product_maps``: the products' mean annual and trend maps on the analysis grid (display)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, not {grid!r}")
    ny, nx = zones.sizes["y"], zones.sizes["x"]
    x, y = zones.x.values, zones.y.values
    zones = budgets_mod.with_cell_area(zones)
    lf_all = np.asarray(zones["land_fraction"].fillna(0).values, np.float64)
    zone_names = [z for z in budgets_mod.zone_weights(zones.isel(y=slice(0, 2), x=slice(0, 2))).zone.values]
    mrows, brows = [], []
    maps = {
        "mean_annual": np.full((len(refs), ny, nx), np.nan, np.float32),
        "trend": np.full((len(refs), ny, nx), np.nan, np.float32),
    }
    for k, ref in enumerate(refs):
        years = ref.years
        times = pd.DatetimeIndex([f"{yr}-{m:02d}-01" for yr in years for m in range(1, 13)])
        prod = ref.ds["nee"].sel(time=times)
        native = None
        if ref.latlon:
            lgrid = LatLonGrid(ref.ds.lat.values.astype(np.float64), ref.ds.lon.values.astype(np.float64))
            W, factor = latlon_weights(lgrid, x, y, crs, n_sub)
            src = np.asarray(prod.values, np.float64).reshape(len(times), -1).T  # (n_src, T)
            fixed = factor != 1
            dev = float(np.median(np.abs(factor[fixed] - 1))) if fixed.any() else 0.0
            log.info(
                f"{ref.product}: regridded from a {lgrid.dlat:g} x {lgrid.dlon:g} degree grid "
                f"({n_sub} x {n_sub} sub-points per cell; sampled overlap areas rescaled to the exact cell "
                f"areas by {100 * dev:.1f}% in the median)"
            )
            if grid == "product":
                native = NativeGrid(src.shape[0], len(years), fire=ref.subtract_fire)
        ours_da = upscaled["nee"].sel(time=times)
        fire_da = fire["fire_emissions"].sel(time=times) if ref.subtract_fire else None
        acc = ProductStats(zone_names, len(years), threshold)
        # abzflux's compared maps on the analysis grid (the product's are in `maps`): for n_eff
        ours_ma = np.full((ny, nx), np.nan, np.float32)
        ours_tr = np.full((ny, nx), np.nan, np.float32)
        band = max(1, min(ny, BAND_BYTES // max(1, 3 * 8 * len(times) * nx)))  # ours, product, fire
        for i0 in range(0, ny, band):
            ys = slice(i0, min(i0 + band, ny))
            nb = ys.stop - ys.start
            if ref.latlon:
                rows = W[ys.start * nx : ys.stop * nx]
                p = regrid(rows, src)[0].T.reshape(len(times), nb, nx)
            else:
                p = np.asarray(prod.isel(y=ys).values, np.float64)
            f = np.asarray(fire_da.isel(y=ys).values, np.float64) if fire_da is not None else None
            if f is not None:
                p = p - f
            o = np.asarray(ours_da.isel(y=ys).values, np.float64)
            ao, ap = annual_sums(o), annual_sums(p)
            if native is not None:
                native.add(
                    rows,
                    lf_all[ys].ravel(),
                    ao.reshape(len(years), -1),
                    annual_sums(f).reshape(len(years), -1) if f is not None else None,
                )
            to = _trend(ao, years, trend_method, trend_preserve)
            tp = _trend(ap, years, trend_method, trend_preserve)
            w = budgets_mod.zone_weights(zones.isel(y=ys)).values.reshape(len(zone_names), -1)
            ok = acc.add(ao.reshape(len(years), -1), ap.reshape(len(years), -1), w, to.ravel(), tp.ravel())
            ok = ok.reshape(nb, nx)
            maps["mean_annual"][k, ys] = np.where(ok, ap.mean(0), np.nan)
            maps["trend"][k, ys] = np.where(ok & np.isfinite(tp), tp, np.nan)
            ours_ma[ys] = np.where(ok, ao.mean(0), np.nan)
            ours_tr[ys] = np.where(ok & np.isfinite(tp), to, np.nan)
        m, b = acc.result()
        if native is not None:
            ours_n, fire_n, cover = native.result(lgrid.areas())
            prod_n = annual_sums(src.T)  # (years, n_src)
            if fire_n is not None:
                prod_n = prod_n - fire_n
            keep = (cover >= min_cover) & np.isfinite(ours_n).all(0) & np.isfinite(prod_n).all(0)
            ours_n[:, ~keep], prod_n[:, ~keep] = np.nan, np.nan
            la, lo = np.meshgrid(lgrid.lat, lgrid.lon, indexing="ij")
            cx, cy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lo.ravel(), la.ravel())
            pts = (np.asarray(cx), np.asarray(cy))
            cm = correlation(ours_n.mean(0), prod_n.mean(0), *pts)
            ct = correlation(
                _trend(ours_n, years, trend_method, trend_preserve),
                _trend(prod_n, years, trend_method, trend_preserve),
                *pts,
            )
            product_grid = f"lat/lon {lgrid.dlat:g}x{lgrid.dlon:g} deg"
            log.info(
                f"{ref.product}: {int(keep.sum())} of {int((cover > 0).sum())} product cells with abzflux "
                f"land cover >= {min_cover:g} compared on the product's grid"
            )
        else:
            cm = grid_correlation(acc.map, ours_ma, maps["mean_annual"][k], x, y)
            ct = grid_correlation(acc.trend, ours_tr, maps["trend"][k], x, y)
            product_grid = "analysis" if not ref.latlon else f"lat/lon {lgrid.dlat:g}x{lgrid.dlon:g} deg"
        metrics = {
            "product": ref.product,
            "first_year": years[0],
            "last_year": years[-1],
            "fire_subtracted": ref.subtract_fire,
            "grid": grid,
            "product_grid": product_grid,
            "n_cells": cm.n,
            "map_r": cm.r,
            "map_p": cm.p,
            "map_p_naive": cm.p_naive,
            "map_n_eff": cm.n_eff,
            "trend_n_cells": ct.n,
            "trend_r": ct.r,
            "trend_p": ct.p,
            "trend_p_naive": ct.p_naive,
            "trend_n_eff": ct.n_eff,
            "source_share_abzflux": m["source_share_abzflux"],
            "source_share_product": m["source_share_product"],
        }
        mrows.append(metrics)
        brows.append(b.assign(product=ref.product, first_year=years[0], last_year=years[-1]))
        log.info(
            f"{ref.product} {years[0]}-{years[-1]} on the {'product' if native is not None else 'analysis'} grid "
            f"({cm.n} cells, n_eff {cm.n_eff:.0f}): map r {cm.r:.2f} (Dutilleul p {cm.p:.2g}, naive {cm.p_naive:.2g}), "
            f"trend r {ct.r:.2f} (p {ct.p:.2g}, naive {ct.p_naive:.2g}); domain budget ratio {b.ratio.iloc[0]:.2f}"
        )
    cols = ["product", "zone", "first_year", "last_year", "abzflux_tg_c", "product_tg_c", "ratio"]
    budgets = pd.concat(brows, ignore_index=True)[cols]
    ds = xr.Dataset(
        {k: (("product", "y", "x"), v) for k, v in maps.items()},
        coords={
            "product": np.array([r.product for r in refs], dtype=object),
            "y": y,
            "x": x,
            "first_year": ("product", [r.years[0] for r in refs]),
            "last_year": ("product", [r.years[-1] for r in refs]),
            "fire_subtracted": ("product", [int(r.subtract_fire) for r in refs]),
        },
    )
    ds["mean_annual"].attrs.update(
        units="g m-2 yr-1",  # CF / UDUNITS: the carbon is in carbon_units and long_name
        carbon_units="g C m-2 yr-1",
        long_name="product mean annual NEE (carbon mass per unit area) over the overlap years "
        "(fire subtracted where flagged), cells where abzflux and the product have every year; "
        "regridded onto the analysis grid for display",
    )
    ds["trend"].attrs.update(
        units="g m-2 yr-2",
        carbon_units="g C m-2 yr-2",
        long_name="product per-pixel Theil-Sen trend of annual NEE as carbon (Mann-Kendall, the run's prewhitening); "
        "on the analysis grid for display",
    )
    ds.first_year.attrs.update(long_name="first year of the overlap with abzflux")
    ds.last_year.attrs.update(long_name="last year of the overlap with abzflux")
    ds.fire_subtracted.attrs.update(long_name="1: the run's fire emissions were subtracted from the product")
    ds = write_crs(ds, crs)
    ds.attrs.update(
        Conventions="CF-1.8",
        title="abzflux: reference products on the analysis grid (display)",
        history="abzflux compare: reference products regridded onto the analysis grid",
    )
    return pd.DataFrame(mrows), budgets, ds


# --------------------------------------------------------------------------- MESS
def mess(X: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multivariate environmental similarity surface (Elith et al. 2010).

    ``X`` (points, variables), ``ref`` (reference rows, variables). For each variable, with
    f = percent of the (finite) reference values <= x, min/max of the reference values:
    f = 0: 100 (x − min)/(max − min); 0 < f <= 50: 2f; 50 < f < 100: 2(100 − f);
    f = 100: 100 (max − x)/(max − min). MESS = the minimum over variables (negative: outside
    the reference range); MoD = the index of the variable that attains it (-1 where no
    variable has a value). A variable whose reference values are all equal (or missing) has
    no scale and is left out (NaN similarity).
    """
    X = np.asarray(X, np.float64)
    ref = np.asarray(ref, np.float64)
    n, V = X.shape
    sim = np.full((n, V), np.nan)
    for j in range(V):
        r = np.sort(ref[:, j][np.isfinite(ref[:, j])])
        if r.size == 0 or r[-1] == r[0]:
            continue
        lo, hi = r[0], r[-1]
        x = X[:, j]
        f = 100.0 * np.searchsorted(r, x, side="right") / r.size
        s = np.where(
            f == 0,
            100 * (x - lo) / (hi - lo),
            np.where(f <= 50, 2 * f, np.where(f < 100, 2 * (100 - f), 100 * (hi - x) / (hi - lo))),
        )
        sim[:, j] = np.where(np.isfinite(x), s, np.nan)
    has = np.isfinite(sim).any(1)
    out = np.full(n, np.nan)
    mod = np.full(n, -1, np.int16)
    if has.any():
        out[has] = np.nanmin(sim[has], axis=1)
        mod[has] = np.nanargmin(sim[has], axis=1)
    return out, mod


def mess_class(m: np.ndarray) -> np.ndarray:
    """MESS map classes (:data:`MESS_CLASSES`): -3..-1 extrapolation, 1..3 similarity; 0 = no value."""
    c = np.zeros(np.shape(m), np.int8)
    for lo, hi, code in MESS_CLASSES:
        c[(m >= lo) & (m < hi)] = code
    return c


def mess_periods(y0: int, y1: int, length: int) -> list[tuple[int, int]]:
    """Consecutive periods of ``length`` years from y0; the last absorbs the remainder
    (1990-2020 in 5-year periods: ..., 2010-2014, 2015-2020, as the paper)."""
    n = max(1, (y1 - y0 + 1) // length)
    out = [(y0 + i * length, y0 + (i + 1) * length - 1) for i in range(n)]
    out[-1] = (out[-1][0], y1)
    return out


# --------------------------------------------------------------------------- AOA
def boxplot_upper_whisker(v: np.ndarray) -> float:
    """R's ``boxplot.stats(v)$stats[5]``: the largest value within upper hinge + 1.5 × the
    hinge spread (Tukey's hinges, as ``fivenum``), the threshold CAST::aoa uses."""
    x = np.sort(np.asarray(v, np.float64)[np.isfinite(v)])
    n = x.size
    n4 = np.floor((n + 3) / 2) / 2
    d = np.array([1, n4, (n + 1) / 2, n + 1 - n4, n])
    five = 0.5 * (x[np.floor(d).astype(int) - 1] + x[np.ceil(d).astype(int) - 1])
    lim = five[3] + 1.5 * (five[3] - five[1])
    return float(x[x <= lim].max())


class AOA:
    """Area of applicability (Meyer & Pebesma 2021; CAST::trainDI/aoa semantics).

    Predictors are standardised with the training mean and SD and multiplied by their
    importance weights (negative importance -> 0; variables without spread get weight 0).
    DI of a point = distance to the nearest training point / the mean distance between all
    pairs of training points. The training DI of a row uses the nearest row of another CV fold
    (here: another site, the leave-one-site-out folds); the threshold is the upper whisker of
    the training DIs (:func:`boxplot_upper_whisker`).
    """

    def __init__(self, X: np.ndarray, groups: np.ndarray, weights: np.ndarray):
        X = np.asarray(X, np.float64)
        self.mean = X.mean(0)
        sd = X.std(0, ddof=1)
        sd = np.where(sd > 1e-9 * np.maximum(np.abs(self.mean), 1.0), sd, 0.0)
        w = np.clip(np.asarray(weights, np.float64), 0, None)
        self.w = np.where(sd > 0, w, 0.0)
        if not (self.w > 0).any():
            raise ValueError("AOA: no predictor has both spread and a positive weight")
        self.sd = np.where(sd > 0, sd, 1.0)
        Z = self._z(X)
        self.tree = cKDTree(Z)
        n = len(Z)
        tot = 0.0
        for i in range(0, n, 2000):  # mean pairwise distance, in blocks (bounded memory)
            from scipy.spatial.distance import cdist

            tot += cdist(Z[i : i + 2000], Z).sum()
        self.mean_dist = tot / (n * (n - 1))
        groups = np.asarray(groups)
        _, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
        k = int(min(n, counts.max() + 1))
        dist, idx = self.tree.query(Z, k=k)
        dist, idx = dist.reshape(n, k), idx.reshape(n, k)
        other = codes[idx] != codes[:, None]
        first = other.argmax(1)
        d = np.where(other.any(1), dist[np.arange(n), first], np.nan)
        self.train_di = d / self.mean_dist
        self.threshold = boxplot_upper_whisker(self.train_di)

    def _z(self, X):
        return (np.asarray(X, np.float64) - self.mean) / self.sd * self.w

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The DI space: predictors standardised with the training mean and SD and weighted;
        DI = nearest distance in this space / :attr:`mean_dist`."""
        return self._z(X)

    def di(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        out = np.full(len(X), np.nan)
        ok = np.isfinite(X).all(1)
        if ok.any():
            out[ok] = self.tree.query(self._z(X[ok]), k=1)[0] / self.mean_dist
        return out


# --------------------------------------------------------------------------- clusters
def fit_clusters(sample: np.ndarray, n_clusters: int, seed: int):
    """k-means on standardised predictors (sample mean/SD; variables without spread dropped).
    Clusters are numbered by decreasing size in the sample. Returns (predict, centres, used)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    sample = sample[np.isfinite(sample).all(1)]
    mu, sd = sample.mean(0), sample.std(0)
    used = sd > 1e-9 * np.maximum(np.abs(mu), 1.0)  # spatially constant (e.g. CO2), up to rounding
    Z = (sample[:, used] - mu[used]) / sd[used]
    k = int(min(n_clusters, len(np.unique(Z, axis=0))))
    # One OpenMP thread: k-means' centre sums are reduced per thread, so their last bits (and then
    # clusters.csv) depend on the thread count, which differs between a laptop, a cluster worker
    # and a process where something limited OpenMP already.
    with threadpool_limits(limits=1, user_api="openmp"):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(Z)
    order = np.argsort(-np.bincount(km.labels_, minlength=k), kind="stable")
    relabel = np.empty(k, np.int16)
    relabel[order] = np.arange(k)

    def predict(X):
        X = np.asarray(X, np.float64)
        lab = np.full(len(X), -1, np.int16)
        ok = np.isfinite(X).all(1)
        if ok.any():
            lab[ok] = relabel[km.predict((X[ok][:, used] - mu[used]) / sd[used])]
        return lab

    centres = np.full((k, len(used)), np.nan)
    centres[:, used] = km.cluster_centers_[order]
    return predict, centres, used


def cluster_table(
    labels: np.ndarray, area: np.ndarray, site_labels: np.ndarray, site_ids: np.ndarray, centres: np.ndarray, names
) -> pd.DataFrame:
    """Per cluster: area share, cells, distinct sites and site-months (rows) in its cells, and
    the centre of every standardised predictor."""
    k = len(centres)
    land = labels >= 0
    a = np.bincount(labels[land], weights=area[land], minlength=k)
    n = np.bincount(labels[land], minlength=k)
    s = pd.DataFrame({"cluster": site_labels, "site": site_ids})
    s = s[s.cluster >= 0]
    rows = pd.DataFrame(
        {
            "cluster": np.arange(k),
            "area_share": a / a.sum(),
            "n_cells": n,
            "n_sites": s.groupby("cluster").site.nunique().reindex(range(k), fill_value=0).to_numpy(),
            "n_site_months": s.groupby("cluster").size().reindex(range(k), fill_value=0).to_numpy(),
        }
    )
    for j, name in enumerate(names):
        rows[name] = centres[:, j]
    return rows


# --------------------------------------------------------------------------- the stage
def band_rows(ny: int, nx: int, nt: int) -> int:
    return int(max(1, min(ny, BAND_BYTES // max(1, 8 * nt * nx))))


def band_summaries(pred: xr.Dataset, ys: slice, tsel, times, periods, continuous=CONTINUOUS):
    """Per-period means (P, cells, V), calendar-month means (12, cells, V) and the overall mean
    (cells, V) of every continuous predictor over a band of rows (cells y-major)."""
    nb, nx = ys.stop - ys.start, pred.sizes["x"]
    V = len(continuous)
    per = np.empty((len(periods), nb * nx, V))
    clim = np.empty((12, nb * nx, V))
    mean = np.empty((nb * nx, V))
    for j, v in enumerate(continuous):
        da = pred[v].isel(y=ys)
        if "time" in da.dims:
            a = np.asarray(da.isel(time=tsel).values, np.float64).reshape(len(times), -1)
            per[:, :, j], clim[:, :, j], mean[:, j] = _summaries(a, times, periods)
        else:
            a = np.asarray(da.values, np.float64).ravel()
            per[:, :, j], clim[:, :, j], mean[:, j] = a, a, a
    return per, clim, mean


def _summaries(arr: np.ndarray, times: pd.DatetimeIndex, periods) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From (T, ...) monthly values: per-period means, calendar-month means, overall mean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (water)
        per = np.stack([np.nanmean(arr[(times.year >= a) & (times.year <= b)], 0) for a, b in periods])
        clim = np.stack([np.nanmean(arr[times.month == m], 0) for m in range(1, 13)])
        return per, clim, np.nanmean(arr, 0)


def extrapolation_diagnostics(
    pred: xr.Dataset,
    zones: xr.Dataset,
    up: xr.Dataset,
    table: pd.DataFrame,
    importance: pd.DataFrame | None,
    years: tuple[int, int],
    crs,
    store: Path,
    *,
    period_length: int,
    cluster_sample: int,
    max_training: int,
    n_clusters: int,
    seed: int,
    predictor_set: PredictorSet = PAPER,
    progress=None,
) -> dict[str, pd.DataFrame]:
    """Where the model extrapolates (docs/compare.md): MESS per period against the NEE training
    rows, the AOA (importance-weighted when ``importance`` is given, else equal weights) and
    k-means environmental clusters, written band by band of grid rows into the Zarr store
    ``store``. Returns the tables ``mess_area`` (share extrapolated per period and zone),
    ``aoa_sd`` (bootstrap SD inside vs outside the AOA, from the ``*_sd`` variables of ``up``) and
    ``clusters``. ``zones`` needs a ``cell_area`` (:func:`abzflux.budgets.with_cell_area`).
    ``progress(done, total)``: called after each band of each of the two passes."""
    y0, y1 = years
    ny, nx = pred.sizes["y"], pred.sizes["x"]
    times_all = pd.DatetimeIndex(pred.time.values)
    tsel = np.nonzero((times_all.year >= y0) & (times_all.year <= y1))[0]
    times = times_all[tsel]
    periods = mess_periods(y0, y1, period_length)
    pnames = [f"{a}-{b}" for a, b in periods]
    continuous = predictor_set.continuous
    V = len(continuous)
    rows = training_rows(table, "nee", predictor_set).reset_index(drop=True)
    land = np.asarray((zones["land_fraction"].fillna(0) > 0).values)

    # ---- pass 0 (bands of rows): MESS reference sets at the training cells, k-means sample
    cells = np.unique(rows.iy.to_numpy() * nx + rows.ix.to_numpy())
    ref_per = np.empty((len(periods), len(cells), V))
    flat = np.flatnonzero(land.ravel())
    samp = flat[np.unique(np.linspace(0, flat.size - 1, min(cluster_sample, flat.size)).round().astype(int))]
    sample = np.empty((len(samp), V))
    band = band_rows(ny, nx, len(times))
    n_steps, n_done = 2 * len(range(0, ny, band)), 0
    cached = None
    for i0 in range(0, ny, band):
        ys = slice(i0, min(i0 + band, ny))
        per, clim, mean = band_summaries(pred, ys, tsel, times, periods, continuous)
        for idx, dest in ((cells, "ref"), (samp, "sample")):
            sel = (idx >= ys.start * nx) & (idx < ys.stop * nx)
            loc = idx[sel] - ys.start * nx
            if dest == "ref":
                ref_per[:, sel] = per[:, loc]
            else:
                sample[sel] = mean[loc]
        if ys.stop - ys.start == ny:
            cached = (per, clim, mean)  # one band holds the grid: pass 1 reuses it
        n_done += 1
        if progress is not None:
            progress(n_done, n_steps)
    pos = pd.Series(np.arange(len(cells)), index=cells)
    row_cell = pos[rows.iy.to_numpy() * nx + rows.ix.to_numpy()].to_numpy()
    refs_by_period = [
        ref_per[p][row_cell[(rows.year >= a).to_numpy() & (rows.year <= b).to_numpy()]]
        for p, (a, b) in enumerate(periods)
    ]
    for name, r in zip(pnames, refs_by_period):
        if len(r) == 0:
            log.info(f"MESS {name}: no NEE training rows in this period; its MESS is missing")

    weights = np.ones(V)
    if importance is not None:
        imp = importance[importance.flux == "nee"].set_index("predictor").importance
        weights = np.array([imp.get(v, 0.0) for v in continuous], np.float64)
    trows = rows
    if len(rows) > max_training:
        trows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, max_training).round().astype(int))]
        log.info(f"AOA: {len(trows)} of {len(rows)} training rows (compare.aoa_max_training)")
    aoa = AOA(trows[list(continuous)].to_numpy(np.float64), trows.site_id.to_numpy(), weights)
    predict_cluster, centres, used = fit_clusters(sample, n_clusters, seed)
    n_found = len(centres)

    # ---- pass 1: bands of rows -> extrapolation.zarr, area shares, SD inside/outside
    extrapolation_template(pred, crs, pnames, aoa.threshold, n_found, continuous).to_zarr(
        store, compute=False, mode="w", consolidated=False
    )
    import zarr  # the band writes go straight to the arrays

    g: Any = zarr.open_group(str(store), mode="r+")
    sd_vars = [v for v in ("gpp_sd", "reco_sd", "nee_sd", "nee_derived_sd") if v in up]
    zone_names = list(budgets_mod.zone_weights(zones.isel(y=slice(0, 2), x=slice(0, 2))).zone.values)
    mess_acc = np.zeros((2, len(periods), len(zone_names)))  # area with MESS, area with MESS < 0
    sd_acc = {v: np.zeros(4) for v in sd_vars}  # inside: sum w*sd, sum w; outside: same
    for i0 in range(0, ny, band):
        ys = slice(i0, min(i0 + band, ny))
        nb = ys.stop - ys.start
        per, clim, mean = cached if cached is not None else band_summaries(pred, ys, tsel, times, periods, continuous)
        lb = land[ys].ravel()
        per[:, ~lb], clim[:, ~lb], mean[~lb] = np.nan, np.nan, np.nan
        w = budgets_mod.zone_weights(zones.isel(y=ys)).values.reshape(len(zone_names), -1)
        ms = np.full((len(periods), nb * nx), np.nan, np.float32)
        mod = np.full((len(periods), nb * nx), -1, np.int16)
        for p in range(len(periods)):
            if len(refs_by_period[p]):
                ms[p], mod[p] = mess(per[p], refs_by_period[p])
                fin = np.isfinite(ms[p])
                mess_acc[0, p] += w[:, fin].sum(1)
                mess_acc[1, p] += w[:, fin & (ms[p] < 0)].sum(1)
        di_m = np.stack([aoa.di(clim[m]) for m in range(12)])
        with np.errstate(invalid="ignore"):
            di = np.where(np.isfinite(di_m).all(0), di_m.max(0), np.nan)
        inside = np.where(np.isfinite(di), (di <= aoa.threshold).astype(np.int8), -1).astype(np.int8)
        lab = predict_cluster(mean)
        for v in sd_vars:
            ann = annual_sums(np.asarray(up[v].isel(y=ys).values, np.float64).reshape(len(up.time), -1))
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # cells without SD (water)
                sd = np.nanmean(ann, 0)
            fin = np.isfinite(sd)
            for k, sel in ((0, fin & (inside == 1)), (2, fin & (inside == 0))):
                sd_acc[v][k] += (w[0][sel] * sd[sel]).sum()
                sd_acc[v][k + 1] += w[0][sel].sum()
        sh = (nb, nx)
        g["mess"][:, ys] = ms.reshape(len(periods), *sh)
        g["mess_mod"][:, ys] = mod.reshape(len(periods), *sh)
        g["mess_class"][:, ys] = np.stack([np.where(np.isfinite(m_), mess_class(m_), 0) for m_ in ms]).reshape(
            len(periods), *sh
        )
        g["di"][ys] = di.reshape(sh).astype(np.float32)
        g["di_month"][:, ys] = di_m.reshape(12, *sh).astype(np.float32)
        g["aoa"][ys] = inside.reshape(sh)
        g["cluster"][ys] = lab.reshape(sh)
        n_done += 1
        if progress is not None:
            progress(n_done, n_steps)
    consolidate(store)  # the maps are complete (the tables below only read them)

    with np.errstate(invalid="ignore", divide="ignore"):
        share = mess_acc[1] / mess_acc[0]
    mess_area = pd.DataFrame(
        [
            {"period": pn, "zone": z, "share_extrapolated": share[p, k]}
            for p, pn in enumerate(pnames)
            for k, z in enumerate(zone_names)
        ]
    )
    sd_rows = []
    for v, (si, wi, so, wo) in sd_acc.items():
        a = si / wi if wi > 0 else np.nan
        b = so / wo if wo > 0 else np.nan
        sd_rows.append(
            {
                "flux": v[:-3],
                "inside_mean_sd": a,
                "outside_mean_sd": b,
                "ratio": b / a if a and np.isfinite(a) and a > 0 else np.nan,
            }
        )
    aoa_sd = pd.DataFrame(sd_rows, columns=["flux", "inside_mean_sd", "outside_mean_sd", "ratio"])
    lab_grid = np.asarray(g["cluster"][:])
    all_rows = table[table[["gpp", "reco", "nee"]].notna().any(axis=1)]
    site_lab = lab_grid[all_rows.iy.to_numpy(), all_rows.ix.to_numpy()]
    ct = cluster_table(
        np.where(lab_grid.ravel() >= 0, lab_grid.ravel(), -1),
        np.asarray((zones["land_fraction"].fillna(0) * zones["cell_area"]).values).ravel(),
        site_lab,
        all_rows.site_id.to_numpy(),
        centres,
        continuous,
    )
    clusters = ct.drop(columns=[c for c, u in zip(continuous, used) if not u])
    inside_share = aoa_share(g, zones)
    log.info(
        f"extrapolation: {len(periods)} MESS periods; AOA threshold {aoa.threshold:.3f}, "
        f"{100 * inside_share:.0f}% of the land area inside; {n_found} clusters"
    )
    return {"mess_area": mess_area, "aoa_sd": aoa_sd, "clusters": clusters}


def aoa_share(g, zones) -> float:
    a = np.asarray(g["aoa"][:])
    w = np.asarray((zones["land_fraction"].fillna(0) * zones["cell_area"]).values)
    tot = w[a >= 0].sum()
    return float(w[a == 1].sum() / tot) if tot > 0 else float("nan")


def extrapolation_template(
    pred: xr.Dataset, crs, pnames: list, threshold: float, n_clusters: int, continuous=CONTINUOUS
) -> xr.Dataset:
    import dask.array as dsa

    ny, nx = pred.sizes["y"], pred.sizes["x"]
    P = len(pnames)
    band = band_rows(ny, nx, 12)

    def full(shape, dtype, fill):
        return dsa.full(shape, fill, dtype=dtype, chunks=tuple([1] * (len(shape) - 2) + [min(band, ny), nx]))

    ds = xr.Dataset(
        coords={
            "period": np.array(pnames, dtype=object),
            "month": np.arange(1, 13),
            "y": pred.y.values,
            "x": pred.x.values,
        }
    )
    ds["mess"] = (
        ("period", "y", "x"),
        full((P, ny, nx), np.float32, np.nan),
        {
            "units": "%",
            "long_name": "MESS (Elith et al. 2010) of the period-mean continuous predictors "
            "against the NEE training rows of the period; < 0 = extrapolation",
        },
    )
    ds["mess_mod"] = (
        ("period", "y", "x"),
        full((P, ny, nx), np.int16, -1),
        {
            "long_name": "most dissimilar variable (-1: no value)",
            "flag_values": np.arange(len(continuous), dtype=np.int16),
            "flag_meanings": " ".join(continuous),
        },
    )
    ds["mess_class"] = (
        ("period", "y", "x"),
        full((P, ny, nx), np.int8, 0),
        {
            "long_name": "MESS class",
            "flag_values": np.array([-3, -2, -1, 0, 1, 2, 3], np.int8),
            "flag_meanings": "below_-80 -80_to_-20 -20_to_0 no_value 0_to_5 5_to_40 40_and_above",
        },
    )
    ds["di"] = (
        ("y", "x"),
        full((ny, nx), np.float32, np.nan),
        {
            "units": "1",
            "long_name": "AOA dissimilarity index (Meyer & Pebesma 2021): largest over the 12 "
            "calendar-month climatologies",
        },
    )
    ds["di_month"] = (
        ("month", "y", "x"),
        full((12, ny, nx), np.float32, np.nan),
        {"units": "1", "long_name": "AOA dissimilarity index of each calendar month's climatology"},
    )
    ds["aoa"] = (
        ("y", "x"),
        full((ny, nx), np.int8, -1),
        {
            "long_name": "area of applicability: 1 inside (di <= threshold), 0 outside, -1 no predictors",
            "threshold": float(threshold),
            "flag_values": np.array([-1, 0, 1], np.int8),
            "flag_meanings": "no_data outside inside",
        },
    )
    ds["cluster"] = (
        ("y", "x"),
        full((ny, nx), np.int16, -1),
        {"long_name": "k-means environmental cluster (-1: water / no predictors)", "n_clusters": int(n_clusters)},
    )
    for v in ("mess_mod", "mess_class", "aoa", "cluster"):
        ds[v].encoding["_FillValue"] = None
    ds.y.attrs.update(units="m", standard_name="projection_y_coordinate", axis="Y")
    ds.x.attrs.update(units="m", standard_name="projection_x_coordinate", axis="X")
    ds.month.attrs.update(long_name="calendar month (1-12) of the climatology")
    ds = write_crs(ds, crs)
    ds.attrs.update(
        Conventions="CF-1.8",
        title="abzflux extrapolation diagnostics",
        history="abzflux compare: MESS, AOA and clusters of the predictors",
    )
    return ds
