"""Trends (abzflux.trends) against R's zyp 0.11-1 / Kendall 2.2.1 output and by hand.

Reference: tests/data/zyp_refs_public.csv (80 series of n = 20, values R returned; see
tests/data/README.md). Tolerances:

* Quantities R computes in double precision (Sen slopes, intercepts, CI bounds, autocor,
  linear, trendp, valid_frac): relative 1e-12 (the CSV carries 15 significant digits; the
  largest difference seen is 5e-15 relative, 1e-15 absolute).
* tau and p come from Kendall's Fortran, which works in single precision (inputs cast to
  float32, p from AS 66 in float32). Our default is double precision, so R's values differ by
  float32 rounding: tau within 3e-7 relative (a few float32 ulps), p within 2**-22 absolute
  (R's p = 2 * (1 - P) with P a float32 near 1 is quantised in steps of 2**-23 and is 0 for
  the strongest trends). With ``r_float32=True`` the emulation reproduces R's tau and p to the
  last bit (checked at 1e-13 relative, the CSV's printing precision).
* S, varS and nruns are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import xarray as xr

import abzflux.trends as T
from abzflux.trends import (
    GRID_VARIABLES,
    ZYP_FIELDS,
    kendall_test,
    sen_slope,
    trend_grid,
    trend_series,
    zyp_rows,
    zyp_trend,
)

REF = Path(__file__).parent / "data" / "zyp_refs_public.csv"
METHODS = ("zhang", "yuepilon")
DOUBLE_FIELDS = ("lbound", "trend", "trendp", "ubound", "autocor", "valid_frac", "linear", "intercept")
P_ATOL = 2.0**-22  # R's float32 p-values (see module docstring)
TAU_RTOL = 3e-7


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    d = pd.read_csv(REF)
    d["y"] = [np.array([float(v) for v in s.split(";")]) for s in d["values"]]
    return d


@pytest.fixture(scope="module")
def ours(ref):
    """Scalar results for every reference row, both methods, double and float32 modes."""
    out = {}
    for m in METHODS:
        for r32 in (False, True):
            out[m, r32] = [zyp_trend(y, method=m, r_float32=r32) for y in ref["y"]]
    return out


def _close(a, b, rtol, atol=0.0):
    return abs(a - b) <= atol + rtol * abs(b)


# ------------------------------------------------------------------------- reference rows


def test_reference_file_shape(ref):
    assert len(ref) == 80
    assert all(len(y) == 20 for y in ref["y"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("field", DOUBLE_FIELDS)
def test_reference_double_fields(ref, ours, method, field):
    bad = []
    for i, r in ref.iterrows():
        got, want = ours[method, False][i][field], r[f"r_zyp_{method}_{field}"]
        if not _close(got, want, 1e-12, 1e-13):
            bad.append((r.series_id, got, want))
    assert not bad, bad


@pytest.mark.parametrize("method", METHODS)
def test_reference_nruns_exact(ref, ours, method):
    got = [o["nruns"] for o in ours[method, False]]
    assert got == list(ref[f"r_zyp_{method}_nruns"].astype(float))


@pytest.mark.parametrize("method", METHODS)
def test_reference_tau_sig_double(ref, ours, method):
    for i, r in ref.iterrows():
        o = ours[method, False][i]
        assert _close(o["tau"], r[f"r_zyp_{method}_tau"], TAU_RTOL), r.series_id
        assert _close(o["sig"], r[f"r_zyp_{method}_sig"], 1e-6, P_ATOL), r.series_id


@pytest.mark.parametrize("method", METHODS)
def test_reference_tau_sig_float32_emulation_is_bit_exact(ref, ours, method):
    for i, r in ref.iterrows():
        o = ours[method, True][i]
        assert _close(o["tau"], r[f"r_zyp_{method}_tau"], 1e-13), r.series_id
        assert _close(o["sig"], r[f"r_zyp_{method}_sig"], 1e-13), r.series_id


def test_reference_float32_mode_changes_only_tau_and_sig(ours):
    for m in METHODS:
        for a, b in zip(ours[m, False], ours[m, True]):
            for f in ZYP_FIELDS:
                if f not in ("tau", "sig"):
                    assert a[f] == b[f]


def test_reference_mann_kendall(ref):
    for _, r in ref.iterrows():
        k = kendall_test(r.y)
        assert k.S == r.r_kendall_S and k.varS == r.r_kendall_varS, r.series_id
        assert _close(k.tau, r.r_kendall_tau, TAU_RTOL), r.series_id
        assert _close(k.p, r.r_kendall_p, 1e-6, P_ATOL), r.series_id
        k32 = kendall_test(r.y, r_float32=True)
        assert _close(k32.tau, r.r_kendall_tau, 1e-13), r.series_id
        assert _close(k32.p, r.r_kendall_p, 1e-13), r.series_id


def test_reference_kendall_p_is_never_exact(ref):
    """Kendall 2.2.1 uses the normal approximation with continuity correction even without
    ties (its exact branch is unreachable): R's p is far from the exact p for strong trends."""
    r = ref.set_index("series_id").loc["T001"]
    k = kendall_test(r.y)
    assert k.S == 142
    z = (142 - 1) / np.sqrt(950.0)
    assert k.p == pytest.approx(2 * st.norm.sf(z), rel=1e-12)
    assert r.r_kendall_p == pytest.approx(k.p, rel=1e-3)  # float32-quantised copy of it
    assert r.r_cortest_p == pytest.approx(3.05210526407862e-07, rel=1e-12)  # exact: 15x less


def test_reference_exact_p_matches_cor_test(ref):
    """p_method="exact" is the exact null distribution: R's cor.test(method="kendall") on the
    tie-free rows (cor.test's 1 - cdf loses ~1e-16 absolute, hence the atol)."""
    n_checked = 0
    for _, r in ref.iterrows():
        if len(np.unique(r.y)) < len(r.y):
            continue
        k = kendall_test(r.y, p_method="exact")
        assert _close(k.p, r.r_cortest_p, 1e-9, 2e-15), r.series_id
        assert k.tau == pytest.approx(r.r_cortest_tau, rel=1e-14, abs=1e-15)
        n_checked += 1
    assert n_checked >= 70


def test_reference_sen(ref):
    for _, r in ref.iterrows():
        s = sen_slope(r.y)
        assert _close(s.slope, r.r_zyp_sen_slope, 1e-12, 1e-13), r.series_id
        assert _close(s.intercept, r.r_zyp_sen_intercept, 1e-12, 1e-13), r.series_id


@pytest.mark.parametrize("method", METHODS)
def test_reference_through_the_grid(ref, ours, method):
    """The vectorised kernel gives the scalar numbers (bit for bit) on the reference rows."""
    G = zyp_rows(np.stack(ref["y"]), method=method)
    S = np.array([[o[f] for f in ZYP_FIELDS] for o in ours[method, False]])
    np.testing.assert_array_equal(G, S)


# ------------------------------------------------------------------------- by hand


def test_sen_by_hand():
    s = sen_slope([1, 2, 3, 4, 5])
    assert (s.slope, s.intercept) == (1.0, 0.0)
    # slopes of (1, 3, 2): 2, 0.5, -1 -> median 0.5; intercept median(1-0.5, 3-1, 2-1.5) = 0.5
    assert sen_slope([1, 3, 2]) == (0.5, 0.5)
    assert sen_slope([2, 4, 8], x=[0, 1, 3]).slope == 2.0  # slopes 2, 2, 3
    assert sen_slope([1, np.nan, 3, 4]) == (1.0, 0.0)  # NaN left out, positions kept


def test_kendall_by_hand():
    k = kendall_test([1, 2, 3, 4, 5])
    assert (k.tau, k.S, k.n) == (1.0, 10.0, 5)
    assert k.varS == pytest.approx(5 * 4 * 15 / 18)
    assert k.p == pytest.approx(2 * st.norm.sf(9 / np.sqrt(5 * 4 * 15 / 18)), rel=1e-14)
    ke = kendall_test([1, 2, 3, 4, 5], p_method="exact")
    assert ke.p == pytest.approx(2 / 120, rel=1e-14)  # one of 5! orderings in each tail
    assert kendall_test([5, 4, 3, 2, 1]).tau == -1.0
    # n <= 3: Kendall returns p = 1; constant series: tau = 1, p = 1, S = varS = 0
    assert kendall_test([1, 2, 3]).p == 1.0
    assert kendall_test([2, 2, 2, 2]) == (1.0, 1.0, 0.0, 0.0, 4)


def test_kendall_ties_by_hand():
    y = [1, 2, 2, 3, 3, 3, 4]
    k = kendall_test(y)
    # discordant pairs: none; tied pairs: 1 + 3 = 4 -> S = 21 - 4 = 17
    assert k.S == 17
    assert k.varS == pytest.approx((7 * 6 * 19 - (2 * 1 * 9) - (3 * 2 * 11)) / 18)
    assert k.tau == pytest.approx(17 / np.sqrt(21 * 17))  # tau-b
    assert k.p == pytest.approx(2 * st.norm.sf(16 / np.sqrt(k.varS)), rel=1e-14)


def test_zhang_on_a_line():
    """y = 1..5: c = 0.4; slope 0.6 on the undivided first prewhitening, then 1 (prewhitened
    series 1/0.6 + t). The detrended series is then constant up to rounding (exactly constant:
    R stops with an error, we keep the result)."""
    r = zyp_trend([1, 2, 3, 4, 5])
    assert r["trend"] == pytest.approx(1.0) and r["trendp"] == pytest.approx(5.0)
    assert r["nruns"] >= 2 and np.isfinite(r["autocor"])  # later runs fit rounding noise
    assert r["tau"] == 1.0 and r["valid_frac"] == 1.0
    assert r["lbound"] == pytest.approx(1.0) and r["ubound"] == pytest.approx(1.0)
    assert r["linear"] == pytest.approx(1.0)
    # Yue-Pilon: the residual of a line is constant, its ACF undefined -> NA (as in R)
    assert np.isnan(zyp_trend([1, 2, 3, 4, 5], method="yuepilon")["trend"])


def test_ci_small_sample_quirk():
    """n = 4 (after NaN removal in R's terms): lower rank round((6 - 5.77)/2) = 0, and R's
    slopes[c(0, 6)] recycles the upper value into both bounds."""
    y = np.array([0.3, 1.1, 0.7, 2.9])
    r = zyp_trend(y)  # c < 0.05 for this series: no prewhitening
    assert r["nruns"] == 1
    slopes = np.sort([(y[j] - y[i]) / (j - i) for i in range(4) for j in range(i + 1, 4)])
    assert r["lbound"] == r["ubound"] == slopes[-1]


def test_ci_ranks_n20():
    """n = 20, no ties: C = 1.96 * sqrt(950) = 60.41 -> ranks round(64.8) = 65 and
    round(125.2) = 125 of the 190 sorted slopes."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=20)
    r = zyp_trend(y, method="zhang")
    assert r["nruns"] == 1  # white noise: no prewhitening for this seed
    s = np.sort([(y[j] - y[i]) / (j - i) for i in range(20) for j in range(i + 1, 20)])
    assert (r["lbound"], r["ubound"]) == (s[64], s[124])


# ------------------------------------------------------------------------- other packages


def test_sen_equals_scipy_theilslopes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.normal(size=25).cumsum()
        assert sen_slope(y).slope == pytest.approx(st.theilslopes(y).slope, rel=1e-14)
    # scipy's intercept is median(y) - slope * median(x), zyp's median(y - slope * x)


def test_kendall_tau_equals_scipy_tau_b():
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    assert kendall_test(y).tau == pytest.approx(st.kendalltau(np.arange(30), y).statistic)
    # Kendall's tau is tau-b, so it equals scipy's also with ties (in y); p-values differ:
    # scipy has no continuity correction
    yt = np.round(y, 0)
    k = kendall_test(yt)
    sc = st.kendalltau(np.arange(30), yt, method="asymptotic")
    assert k.tau == pytest.approx(sc.statistic, rel=1e-12)
    assert k.p > sc.pvalue


def test_kendall_with_ties_in_x_and_y():
    """Kendall(x, y) with ties in both: tau-b as scipy; variance with Kendall's extra terms."""
    x = np.array([1, 1, 2, 3, 3, 3, 4, 5, 5, 6], dtype=float)
    y = np.array([2, 1, 1, 4, 3, 3, 5, 5, 7, 6], dtype=float)
    k = kendall_test(y, x)
    assert k.tau == pytest.approx(st.kendalltau(x, y).statistic, rel=1e-12)
    n = 10
    tx, ty = np.array([2, 3, 2]), np.array([2, 2, 2])  # tie groups of x and of y
    v = (
        (n * (n - 1) * (2 * n + 5) - (tx * (tx - 1) * (2 * tx + 5)).sum() - (ty * (ty - 1) * (2 * ty + 5)).sum()) / 18
        + (tx * (tx - 1) * (tx - 2)).sum() * (ty * (ty - 1) * (ty - 2)).sum() / (9 * n * (n - 1) * (n - 2))
        + (tx * (tx - 1)).sum() * (ty * (ty - 1)).sum() / (2 * n * (n - 1))
    )
    assert k.varS == pytest.approx(v, rel=1e-14)


def test_pymannkendall_original_test():
    mk = pytest.importorskip("pymannkendall")
    rng = np.random.default_rng(2)
    for _ in range(10):
        y = rng.normal(size=20) + 0.05 * np.arange(20)
        ours_k, theirs = kendall_test(y), mk.original_test(y)
        assert ours_k.S == theirs.s and ours_k.varS == pytest.approx(theirs.var_s)
        assert ours_k.tau == pytest.approx(theirs.Tau, rel=1e-12)  # no ties: tau-a == tau-b
        assert ours_k.p == pytest.approx(theirs.p, rel=1e-9)  # same normal approx with cc
        assert sen_slope(y).slope == pytest.approx(theirs.slope, rel=1e-12)
    # with ties pymannkendall reports tau-a = S / (n(n-1)/2): smaller than tau-b
    yt = np.round(rng.normal(size=20), 0)
    assert abs(mk.original_test(yt).Tau) <= abs(kendall_test(yt).tau)


# ------------------------------------------------------------------------- missing data


def test_nan_keeps_time_positions():
    rng = np.random.default_rng(7)
    y = rng.normal(size=20) + 0.3 * np.arange(20)
    y[[3, 11, 12]] = np.nan
    r = zyp_trend(y, method="yuepilon")
    assert r["valid_frac"] == 17 / 20
    assert r["trendp"] == pytest.approx(r["trend"] * 20)
    keep = ~np.isnan(y)
    assert r["linear"] == pytest.approx(np.polyfit(np.arange(1, 21)[keep], y[keep], 1)[0])
    # white-noise series with gaps: Zhang does not prewhiten and fits the kept positions
    w = rng.normal(size=20)
    w[[0, 5]] = np.nan
    rz = zyp_trend(w)
    if rz["nruns"] == 1 and rz["valid_frac"] == 18 / 20:
        assert rz["trend"] == sen_slope(w).slope


def test_zhang_valid_frac_after_prewhitening():
    y = 0.2 * np.arange(20.0) + np.sin(np.arange(20.0))  # strongly autocorrelated
    y[7] = np.nan
    r = zyp_trend(y)
    assert r["nruns"] > 1
    assert r["valid_frac"] == 17 / 19  # two prewhitened values touch the gap


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "y",
    [
        [np.nan] * 20,
        [1.0, 2.0, 3.0] + [np.nan] * 17,  # 3 values: too few
        [0, 1.0, 0, 0, 0, 0, 0, 0, 2.0, 0],  # 2 non-zero values (and c < 0.05)
        [5.0] * 20,  # constant: ACF undefined
        [1.0, 2.0, 4.0, 3.0] + [np.nan] * 46,  # 4 of 50 = 0.08 < 0.1
    ],
    ids=["all-nan", "three-values", "two-nonzero", "constant", "valid-fraction"],
)
def test_na_rules(method, y):
    r = zyp_trend(y, method=method)
    assert all(np.isnan(v) for v in r.values())
    G = zyp_rows(np.array([y], dtype=float), method=method)
    assert np.isnan(G).all()


def test_zhang_checks_the_prewhitened_series():
    """zyp counts non-zero values after prewhitening: 2 non-zero raw values can give 3."""
    y = [0, 0, 0, 0, 0, 1.0, 2.0, 0, 0, 0]
    assert np.isnan(zyp_trend(y, method="yuepilon")["trend"])
    r = zyp_trend(y)
    assert r["trend"] == 0.0 and r["valid_frac"] == 1.0
    # a zero slope makes zyp's relative-change test NaN: it runs to the 500-run cap
    assert r["nruns"] == 500


@pytest.mark.parametrize("preserve", [False, True])
def test_zhang_cycle_through_the_first_run(preserve):
    """The slope stays 0, so every run has the state of run 1 (a cycle of period 1): the
    result is run 500's, fitted to the divided prewhitened series, not run 1's undivided one
    (a regression: the fast-forward once returned run 1's CI)."""
    y = np.array([0.0, -0.22483759, -1.6059036, -0.13620025, 0.0, 0.0, -2.18977843, -2.85692202, 0.0, 0.0, 0.0])
    s = zyp_trend(y, preserve_range_for_sig_test=preserve)
    assert s["nruns"] == 500 and s["trend"] == 0.0
    for numba in {False, T.USE_NUMBA}:
        T_use, T.USE_NUMBA = T.USE_NUMBA, numba
        try:
            g = zyp_rows(y[None, :], preserve_range_for_sig_test=preserve)[0]
        finally:
            T.USE_NUMBA = T_use
        np.testing.assert_array_equal(g, [s[f] for f in ZYP_FIELDS])


def test_strong_autocorrelation_is_prewhitened():
    rng = np.random.default_rng(11)
    e = rng.normal(size=30)
    y = np.zeros(30)
    for t in range(1, 30):
        y[t] = 0.9 * y[t - 1] + e[t]
    raw = kendall_test(y)
    r = zyp_trend(y)
    assert r["autocor"] > 0.3 and r["nruns"] >= 2
    assert r["sig"] > raw.p  # prewhitening removes the spurious part of the trend signal
    ry = zyp_trend(y, method="yuepilon")
    assert ry["autocor"] > 0.3 and ry["nruns"] == 1


def test_preserve_range_option():
    rng = np.random.default_rng(5)
    y = np.cumsum(rng.normal(size=20)) * 0.5 + 0.1 * np.arange(20)
    a = zyp_trend(y, method="yuepilon")
    b = zyp_trend(y, method="yuepilon", preserve_range_for_sig_test=True)
    c = a["autocor"]
    assert b["autocor"] == c and c > 0.05
    # re-inflated residual: blended series = (r[t+1] - c r[t]) / (1 - c) + b0 t
    b0 = sen_slope(y).slope
    res = y - b0 * np.arange(1, 21)
    blended = (res[1:] - c * res[:-1]) / (1 - c) + b0 * np.arange(1, 20)
    assert b["trend"] == pytest.approx(sen_slope(blended).slope, rel=1e-13)
    assert b["tau"] == pytest.approx(kendall_test(blended).tau, rel=1e-13)
    for m in METHODS:
        G = zyp_rows(y[None, :], method=m, preserve_range_for_sig_test=True)[0]
        s = zyp_trend(y, method=m, preserve_range_for_sig_test=True)
        np.testing.assert_array_equal(G, [s[f] for f in ZYP_FIELDS])


def test_bad_arguments():
    with pytest.raises(ValueError):
        zyp_trend([1, 2, 3, 4, 5], method="sen")
    with pytest.raises(ValueError):
        zyp_trend([1, 2, 3, 4, 5], x=[1, 2, 2, 3, 4])
    with pytest.raises(ValueError):
        kendall_test([1, 2, 3], p_method="permutation")


# ------------------------------------------------------------------------- grids


def _cube(seed=42, shape=(20, 30, 40)):
    """AR(1) noise (phi 0..0.5) plus trends, with the awkward pixels zyp has rules for."""
    rng = np.random.default_rng(seed)
    n, ny, nx = shape
    P = ny * nx
    phi = rng.uniform(0, 0.5, P)
    e = rng.normal(size=(P, n))
    ar = np.zeros((P, n))
    ar[:, 0] = e[:, 0]
    for t in range(1, n):
        ar[:, t] = phi * ar[:, t - 1] + e[:, t]
    Y = rng.normal(0, 0.08, (P, 1)) * np.arange(n) + ar
    Y[rng.random((P, n)) < 0.03] = np.nan  # scattered gaps
    Y[:5] = np.nan  # all-NaN pixels
    Y[5:8, 3:] = np.nan  # 3 values
    Y[8:10] = 4.2  # constant
    Y[10:12, :] = 0.0  # mostly zeros
    Y[10:12, [2, 9]] = 1.0
    Y[12:15, 10:] = np.nan  # half missing
    Y[15:18] = np.round(Y[15:18], 0)  # ties
    return Y.T.reshape(n, ny, nx)


@pytest.fixture(scope="module")
def cube():
    return xr.DataArray(
        _cube(), dims=("year", "y", "x"), coords={"year": np.arange(2001, 2021)}, attrs={"units": "g m-2"}
    )


def _grid_rows(ds):
    return np.stack([ds[v].values.ravel() for v in GRID_VARIABLES], axis=1)


@pytest.mark.parametrize("method", METHODS)
def test_grid_equals_scalar(cube, method):
    ds = trend_grid(cube, method=method)
    assert set(ds.data_vars) == set(GRID_VARIABLES)
    assert ds.slope.dims == ("y", "x")
    G = _grid_rows(ds)
    Y = cube.values.reshape(20, -1).T
    fields = list(GRID_VARIABLES.values())
    S = np.array([[r[f] for f in fields] for r in (zyp_trend(y, method=method) for y in Y)])
    np.testing.assert_array_equal(G, S)  # NaN == NaN here; bit-for-bit otherwise
    assert np.isnan(G[:10]).all() and np.isfinite(G[20:, 0]).mean() > 0.95
    if method == "zhang":  # the cube has pixels that never converge (zyp's 500-run cap)
        assert (G[:, list(GRID_VARIABLES).index("nruns")] == 500).any()


@pytest.mark.parametrize("method", METHODS)
def test_grid_dask_equals_numpy(cube, method):
    ref = trend_grid(cube, method=method)
    lazy = trend_grid(cube.chunk({"y": 10, "x": 20}), method=method)
    assert lazy.slope.chunks is not None
    xr.testing.assert_identical(lazy.compute(), ref)


@pytest.mark.skipif(not T.USE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("method", METHODS)
def test_numba_and_numpy_paths_identical(cube, method, monkeypatch):
    Y = cube.values.reshape(20, -1).T
    with_numba = zyp_rows(Y, method=method)
    monkeypatch.setattr(T, "USE_NUMBA", False)
    np.testing.assert_array_equal(zyp_rows(Y, method=method, block_size=97), with_numba)


def test_grid_options_pass_through(cube):
    small = cube.isel(y=slice(0, 3))
    Y = small.values.reshape(20, -1).T
    ds = trend_grid(small, p_method="exact", r_float32=True, conf_intervals=False)
    assert np.isnan(ds.lbound).all() and np.isnan(ds.ubound).all()
    want = [zyp_trend(y, p_method="exact", r_float32=True)["sig"] for y in Y]
    np.testing.assert_array_equal(ds.p.values.ravel(), want)
    assert ds.slope.attrs["units"] == "g m-2 yr-1" and ds.p.attrs["units"] == "1"  # UDUNITS strings


def test_grid_requires_the_dim(cube):
    with pytest.raises(ValueError):
        trend_grid(cube, dim="time")


# ------------------------------------------------------------------------- budget series


def test_trend_series():
    years = np.arange(2001, 2021)
    rng = np.random.default_rng(9)
    values = -300 - 4.0 * (years - 2001) + rng.normal(0, 5, years.size)
    row = trend_series(values, years)
    r = zyp_trend(values)
    assert row["slope"] == r["trend"] and row["p"] == r["sig"]
    assert row["slope"] == pytest.approx(-4.0, abs=1.0)
    assert row["significant"] and row["units"] == "Tg C yr-1"
    assert row["slope_units"] == "Tg C yr-2"
    assert (row["first_year"], row["last_year"], row["n_years"]) == (2001, 2020, 20)
    # unsorted input and a missing year: times are years - first year + 1
    order = rng.permutation(years.size)
    row2 = trend_series(values[order], years[order])
    assert row2["slope"] == row["slope"]
    gap = trend_series(np.delete(values, 5), np.delete(years, 5), method="yuepilon")
    assert gap["n_years"] == 19 and np.isfinite(gap["slope"])


def test_budget_and_site_trends_take_the_zyp_options():
    """budget_trends / site_trends pass [trends] prewhitening and preserve_range_for_sig_test to zyp:
    on an autocorrelated series each option set gives trend_series' own numbers, and they differ."""
    rng = np.random.default_rng(5)
    e = np.zeros(20)
    for i in range(1, 20):
        e[i] = 0.7 * e[i - 1] + rng.normal()
    years = np.arange(2001, 2021)
    values = 0.3 * np.arange(20) + 3 * e
    annual = pd.DataFrame({"zone": "domain", "flux": "nee", "year": years, "tg_c": values})
    got = {}
    for method in ("zhang", "yuepilon"):
        for preserve in (False, True):
            row = T.budget_trends(annual, method, preserve).iloc[0]
            ref = T.trend_series(values, years, method, preserve_range_for_sig_test=preserve)
            assert row.slope == ref["slope"] and row.p == ref["p"]
            got[method, preserve] = (row.slope, row.p)
    assert got["zhang", False] != got["yuepilon", False]
    assert got["yuepilon", False][1] != got["yuepilon", True][1]  # preserve changes the yuepilon test
    table = pd.DataFrame(
        {
            "site_id": "S1",
            "year": np.repeat(years, 12),
            "month": np.tile(np.arange(1, 13), 20),
            "nee": np.repeat(values, 12) / 12,
        }
    )
    s = T.site_trends(table, method="yuepilon", preserve_range_for_sig_test=True).iloc[0]
    ref = T.trend_series(values, years, "yuepilon", preserve_range_for_sig_test=True)
    assert s.slope == pytest.approx(ref["slope"], rel=1e-12) and s.p == pytest.approx(ref["p"], rel=1e-12)
