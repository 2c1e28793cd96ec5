"""Comparison with reference products on their own grids (issue 23 item 1): conservative
aggregation of abzflux onto a product's grid, fire on the product's grid, the covered-share
threshold, Dutilleul's modified t-test, and the analysis-grid option (abzflux.compare)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import sparse, stats
from scipy.ndimage import gaussian_filter
from test_compare import LAEA, _monthly, _zones

from abzflux import compare as cmp


# --------------------------------------------------------------------------- aggregation
def _toy():
    """5 analysis cells, a 2 x 2 product grid (cells 0..3, areas 10, 10, 20, 20)."""
    W = np.zeros((5, 4))
    W[0, 0], W[1, 0], W[1, 1], W[2, 1], W[3, 2], W[4, 3] = 6, 4, 2, 8, 5, 10
    lf = np.array([1.0, 0.5, 1.0, 0.4, 1.0])
    ours = np.array([[1.0, 2, 3, 4, 5], [2, 3, np.nan, 6, 8]])  # cell 2 lacks year 2
    fire = np.array([[1.0, 1, 1, 1, 1], [0, 2, 4, 0, 0]])
    return W, lf, ours, fire, np.array([10.0, 10, 20, 20])


def test_native_grid_aggregation_hand_computed():
    W, lf, ours, fire, areas = _toy()
    acc = cmp.NativeGrid(4, 2, fire=True)
    for rows in (slice(0, 3), slice(3, 5)):  # two bands of analysis cells
        acc.add(sparse.csr_matrix(W[rows]), lf[rows], ours[:, rows], fire[:, rows])
    o, f, cover = acc.result(areas)
    # Land areas A_ij = W_ij lf_i: j0 <- cell 0 (6), cell 1 (2); j1 <- cell 1 (1), cell 2 (8, no data);
    # j2 <- cell 3 (2); j3 <- cell 4 (10).
    np.testing.assert_allclose(o[:, 0], [(6 * 1 + 2 * 2) / 8, (6 * 2 + 2 * 3) / 8])
    np.testing.assert_allclose(o[:, 1], [2, 3])  # cell 2 has no complete series: only cell 1
    np.testing.assert_allclose(o[:, 2], [4, 6])
    np.testing.assert_allclose(o[:, 3], [5, 8])
    # Fire over all land of the product cell (cell 2 included)
    np.testing.assert_allclose(f[:, 0], [1, (6 * 0 + 2 * 2) / 8])
    np.testing.assert_allclose(f[:, 1], [1, (1 * 2 + 8 * 4) / 9])
    np.testing.assert_allclose(f[:, 2:], [[1, 1], [0, 0]])
    # Covered share: (area inside / cell area) x (land with data / land)
    np.testing.assert_allclose(cover, [1.0, 1 / 9, 5 / 20, 10 / 20])


def _latlon_product(up, zones, fire, factor=1.5, noise=0.0, seed=0):
    """A lat/lon product = factor x abzflux aggregated onto it (land-area weights) + the fire
    emissions aggregated the same way, month by month: what the twin's inversion-like product is
    made of, with abzflux standing in for the truth."""
    lat = np.array([85.0, 87.0, 89.0])
    lon = np.arange(-150.0, 180, 60.0)
    grid = cmp.LatLonGrid(lat, lon)
    W, _ = cmp.latlon_weights(grid, up.x.values, up.y.values, LAEA, n_sub=6)
    A = (W.T @ sparse.diags(zones.land_fraction.values.ravel())).tocsr()
    land = np.asarray(A.sum(1)).ravel()
    T = up.sizes["time"]
    v = up.nee.values.reshape(T, -1)
    fe = fire.fire_emissions.values.reshape(T, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prod = np.where(land > 0, (A @ (factor * v + fe).T).T / land, np.nan)
    prod = prod + np.random.default_rng(seed).normal(0, noise, prod.shape)
    ds = xr.Dataset(
        {"nee": (("time", "lat", "lon"), prod.reshape(T, lat.size, lon.size))},
        coords={"time": up.time.values, "lat": lat, "lon": lon},
        attrs={"product": "coarse", "fire_included": 1},
    )
    return ds, grid, W


def _fire(up, seed=5):
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"fire_emissions": (("time", "y", "x"), rng.exponential(3.0, up.nee.shape))},
        coords={"time": up.time, "y": up.y, "x": up.x},
    )


def _ref(ds, years, latlon=True, sub=True):
    return cmp.Reference(
        None, str(ds.attrs["product"]), ds, latlon=latlon, fire_included=sub, subtract_fire=sub, years=list(years)
    )


def test_product_grid_comparison_of_an_aggregated_product(tmp_path):
    """A product that is exactly 1.5 x abzflux aggregated onto its grid plus fire: on the
    product's grid (fire subtracted there) the maps and trends agree perfectly; regridded onto
    the analysis grid they do not (each coarse value stands for many cells)."""
    years = range(2003, 2009)
    zones, up = _zones(), _monthly(years)
    fire = _fire(up)
    ds, grid, W = _latlon_product(up, zones, fire)
    ref = _ref(ds, years)
    m = cmp.compare_products([ref], up, zones, fire, LAEA, 0.0, 6, grid="product", min_cover=0.0)[0].iloc[0]
    assert m.grid == "product" and m.product_grid == "lat/lon 2x60 deg"
    assert m.map_r == pytest.approx(1.0, abs=1e-9) and m.trend_r == pytest.approx(1.0, abs=1e-9)
    n_touched = int((np.asarray(W.sum(0)).ravel() > 0).sum())
    assert m.n_cells == m.trend_n_cells <= n_touched and m.n_cells >= 8
    a = cmp.compare_products([ref], up, zones, fire, LAEA, 0.0, 6, grid="analysis")[0].iloc[0]
    assert a.grid == "analysis" and a.n_cells == 6 * 7 and a.map_r < 0.9
    # Without subtracting fire on the product's grid the agreement is no longer exact.
    ref_nf = _ref(ds, years, sub=False)
    m_nf = cmp.compare_products([ref_nf], up, zones, None, LAEA, 0.0, 6, min_cover=0.0)[0].iloc[0]
    assert m_nf.map_r < 1 - 1e-6
    # min_cover drops the product cells whose land abzflux covers less: fewer cells, the
    # covered share computed as in NativeGrid.
    acc = cmp.NativeGrid(W.shape[1], 1)
    acc.add(W, zones.land_fraction.values.ravel(), np.zeros((1, W.shape[0])))
    cover = acc.result(grid.areas())[2]
    for mc in (0.3, 0.9):
        k = cmp.compare_products([ref], up, zones, fire, LAEA, 0.0, 6, min_cover=mc)[0].iloc[0]
        assert k.n_cells == int((cover >= mc).sum()) and k.map_r == pytest.approx(1.0, abs=1e-9)
    assert (cover >= 0.9).sum() < (cover >= 0.3).sum()


def test_analysis_grid_option_reproduces_the_previous_metrics():
    """grid = "analysis" gives the previous (fine-grid) numbers: the product regridded onto the
    analysis grid, fire subtracted there, r and the naive p over all common cells."""
    years = list(range(2003, 2009))
    zones, up = _zones(), _monthly(years)
    fire = _fire(up)
    ds, grid, W = _latlon_product(up, zones, fire, noise=4.0)
    m = cmp.compare_products([_ref(ds, years)], up, zones, fire, LAEA, 0.0, 6, grid="analysis")[0].iloc[0]
    T = up.sizes["time"]
    src = ds.nee.values.reshape(T, -1).T
    p = cmp.regrid(W, src)[0].T.reshape(up.nee.shape) - fire.fire_emissions.values
    ao, ap = cmp.annual_sums(up.nee.values), cmp.annual_sums(p)
    to, tp = cmp._trend(ao, years), cmp._trend(ap, years)
    acc = cmp.ProductStats(["domain"], len(years), 0.0)
    w = np.ones((1, ao[0].size))
    acc.add(ao.reshape(len(years), -1), ap.reshape(len(years), -1), w, to.ravel(), tp.ravel())
    old = acc.result()[0]
    for k in ("map_r", "trend_r"):
        assert m[k] == pytest.approx(old[k], rel=1e-12)
    assert m.map_p_naive == pytest.approx(old["map_p"], rel=1e-9)
    assert m.trend_p_naive == pytest.approx(old["trend_p"], rel=1e-9)
    assert m.n_cells == old["n_cells"]
    # A projected product is on the analysis grid already: both settings give the same numbers.
    proj = up.assign(nee=2 * up.nee + np.random.default_rng(1).normal(0, 20, up.nee.shape)).assign_attrs(product="p")
    rp = _ref(proj, years, latlon=False, sub=False)
    a = cmp.compare_products([rp], up, zones, None, LAEA, 0.0, 6, grid="analysis")[0].iloc[0]
    b = cmp.compare_products([rp], up, zones, None, LAEA, 0.0, 6, grid="product")[0].iloc[0]
    assert b.product_grid == "analysis"
    for k in ("n_cells", "map_r", "map_p", "map_p_naive", "map_n_eff", "trend_r", "trend_p"):
        assert a[k] == pytest.approx(b[k], rel=1e-12)


# --------------------------------------------------------------------------- Dutilleul
def test_dutilleul_hand_computed():
    """4 points on a line at 0, 1, 2, 3: largest distance 3, 2 classes (d <= 1.5: the 3
    neighbours; 1.5 < d <= 3: the pairs at 2 and 3)."""
    px, py = np.array([0.0, 1, 2, 3]), np.zeros(4)
    x = np.array([1.0, 2, 4, 3])  # centred -1.5, -0.5, 1.5, 0.5; variance (divisor n) 1.25
    y = np.array([0.0, 1, 0, 1])  # centred ±0.5; variance 0.25
    # Moran's index per class, by hand: mean product of centred pairs / variance
    ix = [(0.75 - 0.75 + 0.75) / 3 / 1.25, (-2.25 - 0.25 - 0.75) / 3 / 1.25]  # 0.2, -0.8667
    iy = [(-0.25 - 0.25 - 0.25) / 3 / 0.25, (0.25 + 0.25 - 0.25) / 3 / 0.25]  # -1, 1/3
    cls = np.array([[-1, 0, 1, 1], [0, -1, 0, 1], [1, 0, -1, 0], [1, 1, 0, -1]])
    Rx, Ry = np.eye(4), np.eye(4)
    for i in range(4):
        for j in range(4):
            if i != j:
                Rx[i, j], Ry[i, j] = ix[cls[i, j]], iy[cls[i, j]]
    B = np.eye(4) - 1 / 4
    n_eff = 1 + np.trace(B @ Rx) * np.trace(B @ Ry) / np.trace(B @ Rx @ B @ Ry)
    assert cmp.dutilleul_n_eff(x, y, px, py, n_classes=2) == pytest.approx(n_eff, rel=1e-12)
    # The p-value: F = (n_eff - 2) r² / (1 - r²) on 1 and n_eff - 2 df.
    r = np.corrcoef(x, y)[0, 1]
    c = cmp.correlation(x, y, px, py, n_classes=2)
    assert c.r == pytest.approx(r) and c.n == 4 and c.n_eff == pytest.approx(n_eff)
    df = n_eff - 2
    assert c.p == pytest.approx(stats.f.sf(df * r * r / (1 - r * r), 1, df), rel=1e-12)
    assert c.p_naive == pytest.approx(stats.pearsonr(x, y)[1], rel=1e-9)


def test_dutilleul_matches_the_dense_matrices_on_random_points():
    """The blockwise row sums against the n x n matrices of Dutilleul's formula (13 classes)."""
    rng = np.random.default_rng(0)
    n = 60
    px, py, x, y = rng.uniform(0, 10, n), rng.uniform(0, 10, n), rng.normal(size=n), rng.normal(size=n)
    D = np.hypot(px[:, None] - px, py[:, None] - py)
    ub = D.max() / 13 * np.arange(1, 14)
    cls = np.minimum(np.searchsorted(ub, D), 12)

    def R(v):
        vc = v - v.mean()
        I = np.array([np.outer(vc, vc)[(cls == k) & ~np.eye(n, dtype=bool)].mean() for k in range(13)])
        out = I[cls] / (vc**2).mean()
        np.fill_diagonal(out, 1.0)
        return out

    B = np.eye(n) - 1 / n
    Rx, Ry = R(x), R(y)
    want = 1 + np.trace(B @ Rx) * np.trace(B @ Ry) / np.trace(B @ Rx @ B @ Ry)
    assert cmp.dutilleul_n_eff(x, y, px, py) == pytest.approx(want, rel=1e-10)


def test_dutilleul_white_noise_and_smooth_fields():
    """Independent white noise: n_eff ≈ n. Independent smooth fields: n_eff << n, and the
    modified test rejects the (true) null about 5% of the time at the 5% level while the naive
    t-test rejects it most of the time (200 seeded pairs on a 20 x 20 grid, Gaussian smoothing
    with sigma 2 cells; measured 11.5% and 66.5%, median n_eff 27: Dutilleul's test is somewhat
    liberal when n_eff is this small)."""
    g = np.arange(20.0)
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    rng = np.random.default_rng(42)
    ne = [cmp.dutilleul_n_eff(rng.normal(size=400), rng.normal(size=400), gx, gy) for _ in range(10)]
    assert np.mean(ne) == pytest.approx(400, rel=0.05)
    rej = rej_naive = 0
    n_eff = []
    for _ in range(200):
        a = gaussian_filter(rng.normal(size=(20, 20)), 2.0).ravel()
        b = gaussian_filter(rng.normal(size=(20, 20)), 2.0).ravel()
        c = cmp.correlation(a, b, gx, gy)
        rej += c.p < 0.05
        rej_naive += c.p_naive < 0.05
        n_eff.append(c.n_eff)
    assert np.median(n_eff) < 400 / 8
    assert 0.02 <= rej / 200 <= 0.15
    assert rej_naive / 200 > 0.5


def test_correlation_subsamples_beyond_max_cells():
    rng = np.random.default_rng(3)
    n = 500
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    px, py = rng.uniform(size=n), rng.uniform(size=n)
    full = cmp.correlation(x, y, px, py)
    sub = cmp.correlation(x, y, px, py, max_cells=100)
    assert sub.r == full.r and sub.n == n  # r over every cell
    idx = np.unique(np.linspace(0, n - 1, 100).round().astype(int))
    assert sub.n_eff == pytest.approx(cmp.dutilleul_n_eff(x[idx], y[idx], px[idx], py[idx]))
    assert sub.n_eff < 110 and full.n_eff > 400
