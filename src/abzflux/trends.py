"""Trends: Theil–Sen slope and Mann–Kendall test with prewhitening, as R's zyp 0.11-1.

The paper (Virkkala et al. 2025) reports Mann–Kendall trends with Zhang prewhitening and
Theil–Sen slopes computed with the R package zyp 0.11-1, whose test statistic comes from the
R package Kendall 2.2.1. This module reproduces their semantics (workflow.md §6):

``sen_slope``      zyp.sen: median of all pairwise slopes; intercept = median(y - slope * x).
``kendall_test``   Kendall::Kendall / MannKendall: tau-b, S, var(S), two-sided p.
``zyp_trend``      zyp.trend.vector (one series, readable reference implementation).
``trend_grid``     the same statistics for every pixel of a (time, y, x) DataArray, vectorised
                   over pixels (no per-pixel Python loop), dask-parallel over space chunks.
``trend_series``   one budget series (e.g. Tg C yr-1) -> slope (Tg C yr-2) and p, one row.

Semantics pinned against R output (tests/data/zyp_refs_public.csv, 80 series) and R's sources:

* **Kendall p-value.** Kendall 2.2.1's Fortran has an exact (Best & Gipps, AS 71) branch, but
  its "no ties" switch is set only when x or y is *constant*, so the exact branch is never
  reached for real data: every p-value (ties or not, any n > 3) is the normal approximation
  with continuity correction, ``z = (S - sign(S)) / sqrt(varS)``, with the tie-corrected
  variance. ``p_method="kendall"`` (default) does exactly that; ``p_method="exact"`` uses the
  exact null distribution of S when there are no ties (as R's ``cor.test(method="kendall")``
  does for n < 50) and the Kendall normal approximation otherwise. Kendall's other rules are
  kept: n <= 3 -> p = 1; x or y constant (or fewer than 2 values) -> tau = 1, p = 1, S = 0,
  varS = 0.
* **Single precision.** Kendall computes in single precision (inputs cast to float32, p from
  AS 66 in float32), so R's p is quantised: ``sig`` of a strong upward trend can be 0 or a
  multiple of 2**-23. By default everything here is double precision: on the 80 reference
  series R's p agrees within 9e-8 absolute and tau within 1.4e-7 relative (float32 rounding).
  ``r_float32=True`` emulates Kendall's float32 arithmetic (ties and signs on float32 values,
  tau and var(S) in float32, AS 66 in float32 with a correctly rounded expf) and reproduces
  R's p and tau bit for bit on all 240 reference p-values.
* **preserve_range_for_sig_test.** zyp 0.11-1 defaults to FALSE and the reference values use
  that default: Zhang's first prewhitening is ``y[t+1] - c*y[t]`` (not divided by 1 - c; the
  iterations always divide), and Yue–Pilon's prewhitened residual is not divided either.
  TRUE divides by (1 - c) ("re-inflates"). NB: the paper's R scripts pass TRUE explicitly
  (with method="yuepilon"), so reproduce those scripts with ``preserve_range_for_sig_test=True``.
* **Yue–Pilon (0.11-1).** Sen slope b of the raw series; detrend; lag-1 ACF c of the residual;
  prewhiten the residual and add b*t back (times t[1..n-1]); Mann–Kendall on that blended
  series; the *reported* trend, intercept and CI are the Sen fit of the blended series (not b).
* **Zhang.** c = lag-1 ACF of the raw series (R ``acf``: NA-aware, biased). If c < 0.05 the raw
  series is used as is (nruns = 1); otherwise prewhiten, take the Sen slope, then iterate:
  detrend the raw series with the current slope, re-estimate c, stop if c < 0.05 and
  |c - c_prev| <= 1e-4 (before re-prewhitening), else prewhiten with c (divided by 1 - c),
  recompute the slope, stop if |Δslope/slope| <= 0.001 and |c - c_prev| <= 1e-4; at most 500
  runs. Kendall and the CI use the last prewhitened series; ``autocor`` is zyp's ``c0`` (the
  c of the last *completed* run, which is the previous c when the loop stops on a criterion).
* **Missing values and short series.** NaN (and ±inf) is missing; values keep their time
  positions (a prewhitened value is missing when either neighbour is). A series is all-NaN
  (every field, including valid_frac, as zyp returns NA) when its lag-1 ACF cannot be
  computed (constant or too short), or when the series used for the slope has <= 3 values,
  fewer than 3 non-zero values, or a valid fraction < 0.1 of the full length; for Zhang that
  series is the prewhitened one when c >= 0.05. ``trendp`` = trend × n with n the full length;
  ``valid_frac`` = valid values / length of the (possibly prewhitened) series; ``linear`` =
  OLS slope of the raw series (NaN dropped). (The public reference rows have no NaN: these
  rules follow zyp's source and are tested by hand.)
* **CI of the slope** (zyp's confint.zyp): C = qnorm(0.975) * sqrt(varS) with varS from Kendall
  on the fitted series; the bounds are the sorted pairwise slopes at ranks
  round((N - C)/2) and round((N + C)/2) (R's round half to even, 1-based). R's quirk is kept: a
  lower rank of 0 makes both bounds equal to the upper one.
* **Where R stops with an error** this module returns something instead: a Zhang iteration whose
  ACF is undefined (e.g. an exactly linear series) stops iterating and keeps the last result;
  a Yue–Pilon blended series with fewer than 2 values gives an all-NaN result.

Arithmetic follows R's operation order (R's long-double colMeans in the ACF, sequential sums,
zyp's slope and median formulas), so Sen slopes, intercepts, CI bounds and ACFs agree with
the reference values to the 15 digits the CSV carries.

Vectorisation (``trend_grid`` / ``zyp_rows``): all pixels of a chunk iterate Zhang together;
a pixel leaves the pool when it meets a stopping rule. Pixels that never converge (about 2.5%
of AR(1) pixels reach zyp's 500-run cap) are mostly caught in an exact cycle of states; the
state zyp would end on is then read off instead of iterating. With numba installed the
per-pixel work runs in compiled kernels (nogil); without it the same numbers come from numpy.
Either way the results equal ``zyp_trend`` bit for bit. Timing: ``benchmarks/bench_trends.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr, ndtri

from .vocab import CF_FLUX_UNITS

try:  # optional accelerator for the vectorised kernels; results are identical without it
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is absent
    _numba = None

#: Use the numba kernels when numba is installed (tests flip this to compare both paths).
USE_NUMBA = _numba is not None

__all__ = [
    "ZYP_FIELDS",
    "GRID_VARIABLES",
    "SenResult",
    "KendallResult",
    "sen_slope",
    "kendall_test",
    "zyp_trend",
    "zyp_rows",
    "trend_grid",
    "trend_series",
]

#: Fields of zyp.trend.vector (0.11-1 also returns lbound_intercept/ubound_intercept; not here).
ZYP_FIELDS = (
    "lbound",
    "trend",
    "trendp",
    "ubound",
    "tau",
    "sig",
    "nruns",
    "autocor",
    "valid_frac",
    "linear",
    "intercept",
)
#: trend_grid's variables, in order, and the zyp field each one holds.
GRID_VARIABLES = {
    "slope": "trend",
    "trendp": "trendp",
    "p": "sig",
    "tau": "tau",
    "autocor": "autocor",
    "intercept": "intercept",
    "lbound": "lbound",
    "ubound": "ubound",
    "nruns": "nruns",
    "valid_frac": "valid_frac",
    "linear": "linear",
}
_METHODS = ("zhang", "yuepilon")
_P_METHODS = ("kendall", "exact")

Z975 = float(ndtri(0.975))  # qnorm(1 - 0.05/2), zyp's default level = 0.95
ACF_THRESHOLD = 0.05  # Zhang: prewhiten only when the lag-1 ACF is >= this
SLOPE_RTOL = 0.001  # Zhang: relative change of the slope for convergence
ACF_ATOL = 1e-4  # Zhang: change of the ACF for convergence
MAX_RUNS = 500  # Zhang: iteration cap (zyp's `while (k < 500)`)


class SenResult(NamedTuple):
    slope: float
    intercept: float


class KendallResult(NamedTuple):
    tau: float
    p: float
    S: float
    varS: float
    n: int


# ---------------------------------------------------------------------------------------------
# Numeric primitives on rows: arrays of shape (rows, n), NaN = missing, for the vectorised
# kernels. The one-series code (zyp_trend) has its own 1-D versions with the same arithmetic,
# so the two give bit-identical numbers (the tests check it).
# ---------------------------------------------------------------------------------------------


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Left-to-right sum along the last axis (R's C loops sum sequentially): column by
    column, so every row is summed in the same order whatever the number of rows."""
    if a.shape[-1] == 0:
        return np.zeros(a.shape[:-1], dtype=a.dtype)
    s = a[..., 0].copy()
    for t in range(1, a.shape[-1]):
        s += a[..., t]
    return s


def _r_means(a: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN as R's colMeans(na.rm=TRUE): a sequential long-double sum
    divided by the count, then rounded to double (NaN for an all-NaN row)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        present = ~np.isnan(a)
        cnt = present.sum(axis=1)
        tot = _seqsum(np.where(present, a, 0.0).astype(np.longdouble))
        return (tot / cnt).astype(np.float64)


def _acf1_rows(a: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row, as R ``acf(x, lag.max=1, na.action=na.pass)$acf[2]``.

    The mean is R's colMeans(na.rm=TRUE) (long-double accumulation); lag-k autocovariance =
    sum over pairs with both values present / (pairs + k); correlation = acov1 / (se * se) with
    se = sqrt(acov0), clamped to [-1, 1]. NaN when undefined (no pairs, zero variance).
    """
    rows, n = a.shape
    if n < 2:
        return np.full(rows, np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = a - _r_means(a)[:, None]
        v = ~np.isnan(z)
        n0 = v.sum(axis=1)
        s0 = _seqsum(np.where(v, z * z, 0.0))
        v1 = v[:, 1:] & v[:, :-1]
        n1 = v1.sum(axis=1)
        s1 = _seqsum(np.where(v1, z[:, 1:] * z[:, :-1], 0.0))
        acov0 = np.where(n0 > 0, s0 / n0, np.nan)
        acov1 = np.where(n1 > 0, s1 / (n1 + 1), np.nan)
        se = np.sqrt(acov0)
        r = acov1 / (se * se)
    return np.where(r > 1.0, 1.0, np.where(r < -1.0, -1.0, r))


def _medians_of_sorted(s: np.ndarray, k: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Median of entries first..first+k-1 of each sorted row (R's median); NaN when k == 0."""
    rows = np.arange(s.shape[0])
    if s.shape[1] == 0:
        return np.full(s.shape[0], np.nan)
    f0 = 0 if first is None else first
    lo = np.clip(f0 + (k - 1) // 2, 0, s.shape[1] - 1)
    hi = np.clip(f0 + k // 2, 0, s.shape[1] - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        m = (s[rows, lo] + s[rows, hi]) / 2.0
    return np.where(k > 0, m, np.nan)


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) in zyp.sen's order: lag 1 first, then lag 2, ..."""
    ii, jj = [], []
    for lag in range(1, n):
        ii.append(np.arange(0, n - lag))
        jj.append(np.arange(lag, n))
    if not ii:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(ii), np.concatenate(jj)


def _pair_slopes(
    y: np.ndarray, x: np.ndarray, out: np.ndarray | None = None, tmp: np.ndarray | None = None
) -> np.ndarray:
    """All pairwise slopes (y_j - y_i) / (x_j - x_i) of each row, shape (rows, n(n-1)/2),
    in zyp.sen's order (lag 1, lag 2, ...); written into ``out`` (and ``tmp``) if given.

    Bit-identical to zyp.sen's (y_i - y_j) / (x_i - x_j): IEEE negation is exact.
    """
    rows, n = y.shape
    i, j = _pairs(n)
    if out is None:
        out = np.empty((rows, i.size))
    if tmp is None:
        tmp = np.empty((rows, i.size))
    np.take(y, j, axis=1, out=out)
    np.take(y, i, axis=1, out=tmp)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        np.subtract(out, tmp, out=out)
        out /= _pair_dx(np.ascontiguousarray(x, dtype=np.float64).tobytes(), n)
    return out


@lru_cache(maxsize=64)
def _pair_dx(xb: bytes, n: int) -> np.ndarray:
    """x_j - x_i for the pairs of _pairs(n) (cached per x)."""
    x = np.frombuffer(xb, dtype=np.float64)
    i, j = _pairs(n)
    return x[j] - x[i]


_TLS = threading.local()


def _work_buffer(rows: int, width: int, slot: int = 0) -> np.ndarray:
    """A reusable (rows, width) float64 scratch array, one per thread, width and slot.

    Reusing it avoids a fresh multi-megabyte allocation (and its page faults) per call.
    """
    bufs = getattr(_TLS, "bufs", None)
    if bufs is None:
        bufs = _TLS.bufs = {}
    buf = bufs.get((width, slot))
    if buf is None or buf.shape[0] < rows:
        buf = bufs[(width, slot)] = np.empty((rows, width))
    return buf[:rows]


def _sorted_slopes(y: np.ndarray, x: np.ndarray, scratch: bool = True):
    """Pairwise slopes of each row, sorted ascending (NaN last, ±inf kept), and the number
    of non-NaN slopes per row (R's ``sort(slopes)`` drops only NA/NaN).

    With ``scratch`` the result lives in this thread's scratch buffer: use it before the
    next call.
    """
    rows, n = y.shape
    K = n * (n - 1) // 2
    if scratch:
        s = _pair_slopes(y, x, _work_buffer(rows, K), _work_buffer(rows, K, 1))
    else:
        s = _pair_slopes(y, x)
    s.sort(axis=1)  # in place: numpy's SIMD sort, several times faster than np.sort(axis=1)
    cnt = np.full(rows, K, dtype=np.intp)
    if K:
        has_nan = np.flatnonzero(np.isnan(s[:, -1]))  # NaN sorts last
        if has_nan.size:
            cnt[has_nan] = K - np.isnan(s[has_nan]).sum(axis=1)
    return s, cnt


def _sen_from_sorted(s: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """zyp.sen's slope (median of the *finite* pairwise slopes) from sorted slopes."""
    if s.shape[1] == 0:
        return np.full(s.shape[0], np.nan)
    rows = np.arange(s.shape[0])
    last = np.maximum(cnt - 1, 0)
    maybe_inf = np.flatnonzero(np.isneginf(s[:, 0]) | np.isposinf(s[rows, last]))
    nneg = np.zeros(s.shape[0], dtype=np.intp)
    npos = np.zeros(s.shape[0], dtype=np.intp)
    if maybe_inf.size:
        nneg[maybe_inf] = np.isneginf(s[maybe_inf]).sum(axis=1)
        npos[maybe_inf] = np.isposinf(s[maybe_inf]).sum(axis=1)
    return _medians_of_sorted(s, cnt - nneg - npos, nneg)


def _sen_slopes(y: np.ndarray, x: np.ndarray, block: int = 8192) -> np.ndarray:
    """zyp.sen slope of each row; the (rows, n(n-1)/2) work arrays are made block by block."""
    out = np.empty(y.shape[0])
    if USE_NUMBA and y.shape[0]:
        _nb_kernels()["sen_rows"](
            np.ascontiguousarray(y, dtype=np.float64), np.ascontiguousarray(x, dtype=np.float64), out
        )
        return out
    for s in range(0, y.shape[0], block):
        srt, cnt = _sorted_slopes(y[s : s + block], x)
        out[s : s + block] = _sen_from_sorted(srt, cnt)
    return out


def _intercepts(y: np.ndarray, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """zyp.sen's intercept: median(y - slope * x) over the present values of each row
    (NA if any of them gives NaN, as R's median without na.rm)."""
    with np.errstate(invalid="ignore", over="ignore"):
        ic = y - slope[:, None] * x
    k = (~np.isnan(ic)).sum(axis=1)
    bad = k != (~np.isnan(y)).sum(axis=1)
    ic.sort(axis=1)
    return np.where(bad, np.nan, _medians_of_sorted(ic, k))


def _ols_rows(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row on x, NaN dropped (R's lm(y ~ t) coefficient)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        v = ~np.isnan(y)
        cnt = v.sum(axis=1)
        xb = np.broadcast_to(x, y.shape)
        xm = _seqsum(np.where(v, xb, 0.0)) / cnt
        ym = _seqsum(np.where(v, y, 0.0)) / cnt
        dx = np.where(v, xb - xm[:, None], 0.0)
        dy = np.where(v, y - ym[:, None], 0.0)
        return _seqsum(dx * dy) / _seqsum(dx * dx)


# ----------------------------------------------------------- Kendall's p-value and tau helpers


_F32 = np.float32


def _alnorm_lower_f32(z: np.ndarray) -> np.ndarray:
    """Lower normal tail P(Z <= z) by algorithm AS 66 (Hill 1973), in float32 arithmetic,
    with the constants as single-precision literals (as Kendall's Fortran evaluates it)."""
    z = np.asarray(z, dtype=_F32)
    far = np.where(z > 0, _F32(1.0), _F32(0.0)).astype(_F32)  # |z| >= 10
    small = np.abs(z) < _F32(10.0)
    up = z < 0  # UPPER = .FALSE., flipped when z < 0
    az = np.abs(z).astype(_F32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        y = _F32(0.5) * az * az
        # single-precision EXP, correctly rounded (as glibc's expf; numpy's float32 exp can
        # be 1 ulp off, which moved 24 of 240 reference p-values by 1-2 ulp)
        ex = np.exp(-y.astype(np.float64)).astype(_F32)
        tail_big = (
            _F32(0.398942280385)
            * ex
            / (
                az
                - _F32(3.8052e-8)
                + _F32(1.00000615302)
                / (
                    az
                    + _F32(3.98064794e-4)
                    + _F32(1.98615381364)
                    / (
                        az
                        - _F32(0.151679116635)
                        + _F32(5.29330324926)
                        / (
                            az
                            + _F32(4.8385912808)
                            - _F32(15.1508972451)
                            / (az + _F32(0.742380924027) + _F32(30.789933034) / (az + _F32(3.99019417011)))
                        )
                    )
                )
            )
        )
        tail_small = _F32(0.5) - az * (
            _F32(0.398942280444)
            - _F32(0.399903438504)
            * y
            / (
                y
                + _F32(5.75885480458)
                - _F32(29.8213557808) / (y + _F32(2.62433121679) + _F32(48.6959930692) / (y + _F32(5.92885724438)))
            )
        )
    tail = np.where(az > _F32(1.28), tail_big, tail_small).astype(_F32)
    inside = (az <= _F32(7.0)) | (up & (az <= _F32(18.66)))
    tail = np.where(inside, tail, _F32(0.0)).astype(_F32)
    res = np.where(up, tail, (_F32(1.0) - tail).astype(_F32)).astype(_F32)
    return np.where(small, res, far).astype(_F32)


@lru_cache(maxsize=256)
def _exact_upper_tail(n: int) -> np.ndarray:
    """P(S >= s) for s = 0..n(n-1)/2 under H0 without ties (Mahonian numbers, normalised).

    S = K - 2 * inversions; the distribution of the number of inversions of a random
    permutation is built by convolution (all additions of positive terms: small tails stay
    accurate), tails summed from the far end.
    """
    f = np.ones(1)
    for i in range(2, n + 1):
        f = np.convolve(f, np.ones(i)) / i
    K = n * (n - 1) // 2
    # inversions k <-> S = K - 2k; P(S >= s) = P(k <= (K - s) / 2)
    cdf_inv = np.cumsum(f)  # P(inv <= k), increasing: accurate in the lower tail
    s = np.arange(K + 1)
    kmax = (K - s) // 2
    tail = cdf_inv[kmax]
    return np.minimum(tail, 1.0)


def _kendall_p(S, varS, m, no_ties, p_method: str, r32: bool):
    """Two-sided p for arrays of S, varS, n (m) following Kendall 2.2.1 (see module doc)."""
    S = np.asarray(S, dtype=np.float64)
    varS = np.asarray(varS, dtype=np.float64)
    m = np.asarray(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        scor = np.where(S > 0, S - 1.0, np.where(S < 0, S + 1.0, 0.0))
        if r32:
            sds = np.sqrt(varS.astype(_F32)).astype(_F32)
            zs = (scor.astype(_F32) / sds).astype(_F32)
            prob = _alnorm_lower_f32(zs)
            sl = np.where(prob >= _F32(0.5), _F32(2.0) * (_F32(1.0) - prob), _F32(2.0) * prob)
            p = sl.astype(_F32).astype(np.float64)
        else:
            zs = scor / np.sqrt(varS)
            p = 2.0 * ndtr(-np.abs(zs))
    if p_method == "exact":
        exact_rows = np.flatnonzero(no_ties & (m >= 2))
        for mm in np.unique(m[exact_rows]):
            sel = exact_rows[m[exact_rows] == mm]
            tail = _exact_upper_tail(int(mm))
            p[sel] = np.minimum(1.0, 2.0 * tail[np.abs(S[sel]).astype(np.int64)])
    return np.where(m > 3, p, 1.0)


def _tau_vars(S, m, sumt, suma1, suma2, sumu, sumb1, sumb2, r32: bool):
    """Kendall's tau-b and var(S) (Kendall's formula with ties in x and y)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if r32:
            f = lambda v: np.asarray(v, dtype=np.float64).astype(_F32)  # noqa: E731
            mm = np.asarray(m)
            cn = f(mm) * f(mm - 1)
            dn = _F32(0.5) * cn
            d1 = np.sqrt(dn - _F32(0.5) * f(sumt))
            d2 = np.sqrt(dn - _F32(0.5) * f(sumu))
            tau = (f(S) / (d1 * d2)).astype(_F32)
            v1 = (cn * f(2 * mm + 5) - f(suma1) - f(sumb1)) / _F32(18.0)
            v2 = f(suma2) * f(sumb2) / (_F32(9.0) * cn * f(mm - 2))
            v3 = f(sumt) * f(sumu) / (cn + cn)
            vs = (v1 + v2 + v3).astype(_F32)
            return tau.astype(np.float64), vs.astype(np.float64)
        mm = np.asarray(m, dtype=np.float64)
        cn = mm * (mm - 1.0)
        dn = 0.5 * cn
        tau = S / np.sqrt((dn - 0.5 * sumt) * (dn - 0.5 * sumu))
        v1 = (cn * (2.0 * mm + 5.0) - suma1 - sumb1) / 18.0
        v2 = suma2 * sumb2 / (9.0 * cn * (mm - 2.0))
        v3 = sumt * sumu / (cn + cn)
        return tau, v1 + v2 + v3


def _kendall_counts(y: np.ndarray, r32: bool):
    """S, number of values, and Kendall's tie sums Σt(t-1), Σt(t-1)(2t+5), Σt(t-1)(t-2)
    (over tie groups of y) for rows whose times are strictly increasing; NaN = absent."""
    rows, n = y.shape
    yc = y.astype(_F32) if r32 else y
    if USE_NUMBA and rows:
        return _nb_kendall_counts(np.ascontiguousarray(yc))
    S = np.zeros(rows, dtype=np.int64)
    tied = np.zeros(rows, dtype=bool)
    for lag in range(1, n):  # pairs (t, t + lag); comparisons with NaN are all False
        a, b = yc[:, :-lag], yc[:, lag:]
        S += np.count_nonzero(b > a, axis=1)
        S -= np.count_nonzero(b < a, axis=1)
        tied |= (a == b).any(axis=1)
    m = (~np.isnan(yc)).sum(axis=1)
    sumu = np.zeros(rows)
    sumb1 = np.zeros(rows)
    sumb2 = np.zeros(rows)
    tied_rows = np.flatnonzero(tied)
    if tied_rows.size:
        i, j = _pairs(n)
        yt = yc[tied_rows]
        eq = yt[:, i] == yt[:, j]
        inc = np.zeros((i.size, n))
        inc[np.arange(i.size), i] = 1.0
        inc[np.arange(j.size), j] = 1.0
        c = 1.0 + eq.astype(np.float64) @ inc  # size of each value's tie group
        c = np.where(np.isnan(yt), 1.0, c)
        sumu[tied_rows] = (c - 1.0).sum(axis=1)
        sumb1[tied_rows] = ((c - 1.0) * (2.0 * c + 5.0)).sum(axis=1)
        sumb2[tied_rows] = ((c - 1.0) * (c - 2.0)).sum(axis=1)
    return S.astype(np.float64), m, sumu, sumb1, sumb2


def _kendall_rows(y: np.ndarray, p_method: str, r32: bool):
    """Kendall(t, y) for rows whose times are strictly increasing (no ties in t).

    Returns tau, p, S, varS, m (number of values). NaN entries are left out.
    """
    S, m, sumu, sumb1, sumb2 = _kendall_counts(y, r32)
    zero = np.zeros(S.shape[0])
    tau, varS = _tau_vars(S, m, zero, zero, zero, sumu, sumb1, sumb2, r32)
    p = _kendall_p(S, varS, m, sumu == 0, p_method, r32)
    # Kendall's switch: fewer than 2 values, or y constant -> tau = 1, p = 1, S = 0, varS = 0
    degenerate = (m < 2) | (sumu == m * (m - 1.0))
    tau = np.where(degenerate, 1.0, tau)
    p = np.where(degenerate, 1.0, p)
    S = np.where(degenerate, 0.0, S)
    varS = np.where(degenerate, 0.0, varS)
    return tau, p, S, varS, m


def _ci_ranks(nprime: np.ndarray, varS: np.ndarray):
    """confint.zyp's ranks round((N -/+ C) / 2), C = qnorm(0.975) sqrt(varS), R-rounded."""
    with np.errstate(invalid="ignore"):
        ca = np.sqrt(varS) * Z975
        lo = np.rint((nprime - ca) / 2.0)
        hi = np.rint((nprime + ca) / 2.0)
    ok_hi = np.isfinite(hi) & (hi >= 1) & (hi <= nprime)
    ok_lo = np.isfinite(lo) & (lo >= 1) & (lo <= nprime)
    return lo, ok_lo, ok_hi, np.where(ok_lo, lo, 1).astype(np.intp) - 1, np.where(ok_hi, hi, 1).astype(np.intp) - 1


def _ci_bounds(lo, ok_lo, ok_hi, v_lo, v_hi):
    """The bounds from the slopes at the two ranks, with R's indexing rules."""
    ub = np.where(ok_hi, v_hi, np.nan)
    # R: slopes[c(0, k)] has length 1 and is recycled into both bounds
    lb = np.where(ok_lo, v_lo, np.where((lo == 0) & ok_hi, ub, np.nan))
    return np.where(np.isnan(lo), np.nan, lb), ub


def _ci_from_sorted(srt: np.ndarray, varS: np.ndarray):
    """zyp's confint.zyp bounds from sorted slopes (NaN last) and Kendall's varS."""
    if srt.shape[1] == 0:
        nan = np.full(srt.shape[0], np.nan)
        return nan, nan.copy()
    rows = np.arange(srt.shape[0])
    lo, ok_lo, ok_hi, lo_i, hi_i = _ci_ranks((~np.isnan(srt)).sum(axis=1), varS)
    return _ci_bounds(lo, ok_lo, ok_hi, srt[rows, lo_i], srt[rows, hi_i])


# ------------------------------------------------------------------------- public scalar API


def _as_xy(y, x):
    yv = np.asarray(y, dtype=np.float64).ravel()
    if x is None:
        xv = np.arange(1.0, yv.size + 1.0)
    else:
        xv = np.asarray(x, dtype=np.float64).ravel()
        if xv.size != yv.size:
            raise ValueError(f"x has {xv.size} values, y has {yv.size}")
    return yv, xv


def sen_slope(y: Sequence[float], x: Sequence[float] | None = None) -> SenResult:
    """Theil–Sen slope and intercept, as R ``zyp.sen(y ~ x)`` (x defaults to 1..n).

    slope = median of the finite pairwise slopes; intercept = median(y - slope * x).
    Pairs with a missing (NaN) x or y are left out.
    """
    yv, xv = _as_xy(y, x)
    keep = ~(np.isnan(yv) | np.isnan(xv))
    yv, xv = yv[keep], xv[keep]
    if yv.size < 2:
        return SenResult(np.nan, np.nan)
    sl = _pair_slopes(yv[None, :], xv)[0]
    sl = sl[np.isfinite(sl)]
    slope = float(np.median(sl)) if sl.size else np.nan
    with np.errstate(invalid="ignore"):
        icpt = float(np.median(yv - slope * xv))
    return SenResult(slope, icpt)


def _tie_sums(v: np.ndarray):
    """Kendall's Σt(t-1), Σt(t-1)(2t+5), Σt(t-1)(t-2) over tie groups of v."""
    _, t = np.unique(v, return_counts=True)
    t = t.astype(np.float64)
    return (t * (t - 1)).sum(), (t * (t - 1) * (2 * t + 5)).sum(), (t * (t - 1) * (t - 2)).sum()


def kendall_test(
    y: Sequence[float],
    x: Sequence[float] | None = None,
    *,
    p_method: str = "kendall",
    r_float32: bool = False,
) -> KendallResult:
    """Kendall's tau-b and two-sided p, as R ``Kendall::Kendall(x, y)`` (Kendall 2.2.1).

    With x omitted this is ``Kendall::MannKendall(y)`` (x = 1..n). S counts concordant minus
    discordant pairs; varS is Kendall's tie-corrected variance (ties in x and y). p is the
    normal approximation with continuity correction (Kendall's actual behaviour, whatever n and
    ties); ``p_method="exact"`` uses the exact null distribution when neither x nor y has ties.
    n <= 3 gives p = 1; fewer than 2 values or a constant x or y give tau = 1, p = 1, S = 0,
    varS = 0 (Kendall's conventions). Pairs with a NaN are left out. ``r_float32`` emulates
    Kendall's single-precision arithmetic (see the module docstring).
    """
    if p_method not in _P_METHODS:
        raise ValueError(f"p_method must be one of {_P_METHODS}, got {p_method!r}")
    yv, xv = _as_xy(y, x)
    keep = ~(np.isnan(yv) | np.isnan(xv))
    yv, xv = yv[keep], xv[keep]
    if r_float32:
        yv, xv = yv.astype(_F32), xv.astype(_F32)
    m = yv.size
    if m < 2 or np.all(xv == xv[0]) or np.all(yv == yv[0]):
        return KendallResult(1.0, 1.0, 0.0, 0.0, int(m))
    i, j = _pairs(m)
    sx = (xv[j] > xv[i]).astype(np.int64) - (xv[j] < xv[i])  # Fortran SCOREK: comparisons
    sy = (yv[j] > yv[i]).astype(np.int64) - (yv[j] < yv[i])
    S = float(np.sum(sx * sy))
    sumt, suma1, suma2 = _tie_sums(xv)
    sumu, sumb1, sumb2 = _tie_sums(yv)
    tau, varS = _tau_vars(np.float64(S), m, sumt, suma1, suma2, sumu, sumb1, sumb2, r_float32)
    p = _kendall_p(
        np.array([S]), np.array([varS]), np.array([m]), np.array([sumt == 0 and sumu == 0]), p_method, r_float32
    )[0]
    return KendallResult(float(tau), float(p), S, float(varS), int(m))


def _nan_result() -> dict:
    return {k: np.nan for k in ZYP_FIELDS}


def _kendall_and_ci(yv: np.ndarray, xv: np.ndarray, conf: bool, p_method, r32):
    """Kendall(xv, yv) and zyp's CI from the pairwise slopes of the same fit (scalar path)."""
    k = kendall_test(yv, xv, p_method=p_method, r_float32=r32)
    if conf:
        i, j = _pairs(yv.size)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            sl = (yv[j] - yv[i]) / (xv[j] - xv[i])
        srt = np.sort(sl[~np.isnan(sl)])  # R's sort() drops NaN, keeps ±Inf
        lb, ub = _ci_from_sorted(srt[None, :], np.array([k.varS]))
        return k, float(lb[0]), float(ub[0])
    return k, np.nan, np.nan


def _acf1(a: np.ndarray) -> float:
    """Lag-1 autocorrelation of one series, R's acf (see _acf1_rows, same arithmetic)."""
    if a.size < 2:
        return np.nan
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        vals = a[~np.isnan(a)]
        if vals.size == 0:
            return np.nan
        mean = np.float64(np.cumsum(vals.astype(np.longdouble))[-1] / vals.size)
        z = a - mean
        v = ~np.isnan(z)
        zz = z[v]
        prod = (z[1:] * z[:-1])[v[1:] & v[:-1]]
        if zz.size == 0 or prod.size == 0:
            return np.nan
        acov0 = np.cumsum(zz * zz)[-1] / zz.size
        acov1 = np.cumsum(prod)[-1] / (prod.size + 1)
        se = np.sqrt(acov0)
        r = float(acov1 / (se * se))
    return min(1.0, max(-1.0, r)) if not np.isnan(r) else np.nan


def _sen_1d(yv: np.ndarray, xv: np.ndarray) -> float:
    """zyp.sen slope of present values: median of the finite pairwise slopes."""
    i, j = _pairs(yv.size)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sl = (yv[j] - yv[i]) / (xv[j] - xv[i])
    fin = sl[np.isfinite(sl)]
    return np.median(fin) if fin.size else np.float64(np.nan)  # numpy float: x/0 -> inf


def _intercept_1d(yv: np.ndarray, xv: np.ndarray, slope: float) -> float:
    """zyp.sen intercept: median(y - slope * x); NA if any term is NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        ic = yv - slope * xv
    return np.nan if ic.size == 0 or np.isnan(ic).any() else float(np.median(ic))


def _ols_1d(y: np.ndarray, t: np.ndarray) -> float:
    return float(_ols_rows(y[None, :], t)[0])


def _check_x(xv: np.ndarray):
    if not (np.all(np.isfinite(xv)) and np.all(np.diff(xv) > 0)):
        raise ValueError("x (the times) must be finite and strictly increasing")


def _zhang_scalar(data, t, conf, preserve, p_method, r32) -> dict:
    n = data.size
    ret = _nan_result()
    c = _acf1(data)
    if np.isnan(c):
        return ret
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if c < ACF_THRESHOLD:
            y, yt = data, t
        else:
            y = data[1:] - c * data[:-1]
            if preserve:
                y = y / (1.0 - c)
            yt = t[:-1]
    keep = ~np.isnan(y)
    ynm, ytnm = y[keep], yt[keep]
    if ynm.size <= 3 or np.count_nonzero(ynm != 0) < 3 or ynm.size / n < 0.1:
        return ret
    trend = _sen_1d(ynm, ytnm)
    k = 1
    c0 = c
    if c >= ACF_THRESHOLD:
        trend0 = trend
        while k < MAX_RUNS:
            with np.errstate(invalid="ignore", over="ignore"):
                detrended = data - trend * t
            c = _acf1(detrended)
            if np.isnan(c):  # R stops with an error here; keep the last result
                break
            if c < ACF_THRESHOLD and abs(c - c0) <= ACF_ATOL:
                break
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                y = (data[1:] - c * data[:-1]) / (1.0 - c)
            keep = ~np.isnan(y)
            ynm, ytnm = y[keep], yt[keep]
            trend = _sen_1d(ynm, ytnm)
            k += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                tpdiff = abs((trend - trend0) / trend)
            if tpdiff <= SLOPE_RTOL and abs(c - c0) <= ACF_ATOL:
                break
            trend0 = trend
            c0 = c
    kd, lb, ub = _kendall_and_ci(ynm, ytnm, conf, p_method, r32)
    return dict(
        lbound=lb,
        trend=trend,
        trendp=trend * n,
        ubound=ub,
        tau=kd.tau,
        sig=kd.p,
        nruns=float(k),
        autocor=c0,
        valid_frac=ynm.size / y.size,
        linear=_ols_1d(data, t),
        intercept=_intercept_1d(ynm, ytnm, trend),
    )


def _yuepilon_scalar(data, t, conf, preserve, p_method, r32) -> dict:
    n = data.size
    ret = _nan_result()
    keep = ~np.isnan(data)
    ynm, tnm = data[keep], t[keep]
    if ynm.size <= 3 or np.count_nonzero(ynm != 0) < 3 or ynm.size / n < 0.1:
        return ret
    b = _sen_1d(ynm, tnm)
    with np.errstate(invalid="ignore", over="ignore"):
        xt = data - b * t
    ac = _acf1(xt)
    if np.isnan(ac):
        return ret
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ytp = xt[1:] - ac * xt[:-1]
        if preserve:
            ytp = ytp / (1.0 - ac)
        yt = ytp + b * t[:-1]
    keep2 = ~np.isnan(yt)
    ytnm, tp = yt[keep2], t[:-1][keep2]
    if ytnm.size < 2:  # R: NA slope / error in confint
        return ret
    trend = _sen_1d(ytnm, tp)
    kd, lb, ub = _kendall_and_ci(ytnm, tp, conf, p_method, r32)
    return dict(
        lbound=lb,
        trend=trend,
        trendp=trend * n,
        ubound=ub,
        tau=kd.tau,
        sig=kd.p,
        nruns=1.0,
        autocor=ac,
        valid_frac=ynm.size / n,
        linear=_ols_1d(data, t),
        intercept=_intercept_1d(ytnm, tp, trend),
    )


def _check_opts(method, p_method):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if p_method not in _P_METHODS:
        raise ValueError(f"p_method must be one of {_P_METHODS}, got {p_method!r}")


def zyp_trend(
    y: Sequence[float],
    x: Sequence[float] | None = None,
    method: str = "zhang",
    conf_intervals: bool = True,
    *,
    preserve_range_for_sig_test: bool = False,
    p_method: str = "kendall",
    r_float32: bool = False,
) -> dict:
    """One series' prewhitened trend, as R ``zyp.trend.vector(y, x, method, conf.intervals,
    preserve.range.for.sig.test)`` of zyp 0.11-1 (with Kendall 2.2.1).

    Returns a dict with exactly zyp's fields (:data:`ZYP_FIELDS`): lbound, trend (Sen slope per
    unit of x; x defaults to 1..n), trendp (trend × n), ubound, tau, sig (two-sided p), nruns,
    autocor, valid_frac, linear (OLS slope), intercept. All NaN where zyp returns NA. This is
    the readable one-series implementation; :func:`trend_grid` vectorises the same rules.
    """
    _check_opts(method, p_method)
    data, t = _as_xy(y, x)
    _check_x(t)
    data = np.where(np.isinf(data), np.nan, data) if np.isinf(data).any() else data
    f = _zhang_scalar if method == "zhang" else _yuepilon_scalar
    out = f(data, t, conf_intervals, preserve_range_for_sig_test, p_method, r_float32)
    return {k: float(out[k]) for k in ZYP_FIELDS}


# ------------------------------------------------------------------------ vectorised kernels


def _finish_rows(out, rows, yfit, x, conf, p_method, r32, block):
    """Kendall on the fitted series (NaN = absent) and the slope CI, into out[rows]."""
    F = {k: i for i, k in enumerate(ZYP_FIELDS)}
    for s in range(0, rows.size, block):
        yb = yfit[s : s + block]
        rb = rows[s : s + block]
        tau, p, _, varS, _ = _kendall_rows(yb, p_method, r32)
        out[rb, F["tau"]] = tau
        out[rb, F["sig"]] = p
        if conf and USE_NUMBA:
            yb = np.ascontiguousarray(yb)
            nprime = _nb_count_slopes(yb, x)
            lo, ok_lo, ok_hi, lo_i, hi_i = _ci_ranks(nprime, varS)
            v_lo, v_hi = np.empty(yb.shape[0]), np.empty(yb.shape[0])
            _nb_order_stats(yb, x, lo_i, hi_i, v_lo, v_hi)
            out[rb, F["lbound"]], out[rb, F["ubound"]] = _ci_bounds(lo, ok_lo, ok_hi, v_lo, v_hi)
        elif conf:
            srt, _ = _sorted_slopes(yb, x)
            lb, ub = _ci_from_sorted(srt, varS)
            out[rb, F["lbound"]] = lb
            out[rb, F["ubound"]] = ub


def _prewhiten(Y: np.ndarray, c: np.ndarray, divide: bool) -> np.ndarray:
    """y[t+1] - c*y[t] (divided by 1 - c if ``divide``) for each row; one column shorter."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        w = Y[:, 1:] - c[:, None] * Y[:, :-1]
        if divide:
            w = w / (1.0 - c)[:, None]
    return w


_RING = 16  # Zhang cycle detection: states remembered per pixel (periods up to 15)


def _zhang_iterate_numpy(Y, Yw, x, trend, c0, k, active, block):
    """Zhang's iterations for all active rows at once, in numpy (updates the arrays in place).

    A row leaves the pool when it meets a stopping rule. A row whose state (slope, c) repeats
    exactly is in a cycle that zyp would run until its 500th run; the state zyp ends on is
    then read from the last states instead of iterating on (the iteration is deterministic,
    so this gives the same bits as iterating).
    """
    R = Y.shape[0]
    xs = x[:-1]
    hist_t = np.full((R, _RING), np.nan)  # state after run k sits in slot k % _RING
    hist_c = np.full((R, _RING), np.nan)
    hist_t[:, 1] = trend
    hist_c[:, 1] = c0
    slots = np.arange(_RING)
    while True:
        act = np.flatnonzero(active)
        if act.size == 0:
            break
        Ya = Y[act]
        with np.errstate(invalid="ignore", over="ignore"):
            cn = _acf1_rows(Ya - trend[act, None] * x)
        c0a = c0[act]
        with np.errstate(invalid="ignore"):
            stop = np.isnan(cn) | ((cn < ACF_THRESHOLD) & (np.abs(cn - c0a) <= ACF_ATOL))
        if stop.any():
            active[act[stop]] = False
            keep = ~stop
            act, cn, c0a, Ya = act[keep], cn[keep], c0a[keep], Ya[keep]
            if act.size == 0:
                continue
        w = _prewhiten(Ya, cn, True)
        Yw[act, :-1] = w
        tn = _sen_slopes(w, xs, block)
        t0 = trend[act]  # == zyp's trend0 at the top of every run
        trend[act] = tn
        k[act] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            tpdiff = np.abs((tn - t0) / tn)
            conv = (tpdiff <= SLOPE_RTOL) & (np.abs(cn - c0a) <= ACF_ATOL)
        active[act[conv]] = False  # zyp breaks before c0 <- c
        cont = ~conv
        ia, tc, cc = act[cont], tn[cont], cn[cont]
        c0[ia] = cc
        kc = k[ia]
        capped = kc >= MAX_RUNS
        active[ia[capped]] = False
        ia, tc, cc, kc = ia[~capped], tc[~capped], cc[~capped], kc[~capped]
        if ia.size == 0:
            continue
        # exact cycles: state after run kc == state after run kc - per (1 <= per < _RING)
        per = (kc[:, None] - slots[None, :]) % _RING
        hit = (hist_t[ia] == tc[:, None]) & (hist_c[ia] == cc[:, None]) & (per > 0)
        if hit.any():
            pmin = np.where(hit, per, _RING).min(axis=1)
            cyc = pmin < _RING
            if cyc.any():
                r, pr, kr = ia[cyc], pmin[cyc], kc[cyc]
                kfin = kr - pr + (MAX_RUNS - kr) % pr  # the run zyp's loop would end on
                sl = kfin % _RING
                trend[r] = hist_t[r, sl]
                c0[r] = hist_c[r, sl]
                k[r] = MAX_RUNS
                active[r] = False
                # run MAX_RUNS is never the first run: its series is always divided by 1 - c
                # (even when the matching state is run 1's, fitted to the undivided series)
                Yw[r, :-1] = _prewhiten(Y[r], c0[r], True)
        hist_t[ia, kc % _RING] = tc
        hist_c[ia, kc % _RING] = cc


def _zhang_iterate_numba(Y, Yw, x, trend, c0, k, active):
    """The same iterations as _zhang_iterate_numpy, one compiled pass per run.

    Each run's mean (R's long-double colMeans) is taken in numpy, everything else per row
    in the compiled kernel; the results are bit-identical to the numpy path.
    """
    R = Y.shape[0]
    Y = np.ascontiguousarray(Y)
    cw = c0.copy()  # the c of the prewhitening the current slope was fitted to
    first = np.ones(R, dtype=np.bool_)  # ... which is still the first prewhitening
    hist_t = np.full((R, _RING), np.nan)
    hist_c = np.full((R, _RING), np.nan)
    hist_t[:, 1] = trend
    hist_c[:, 1] = c0
    run = _nb_kernels()["zhang_run"]
    while True:
        act = np.flatnonzero(active)
        if act.size == 0:
            break
        with np.errstate(invalid="ignore", over="ignore"):
            mean = _r_means(Y[act] - trend[act, None] * x)
        run(
            act,
            Y,
            x,
            mean,
            trend,
            c0,
            cw,
            first,
            k,
            active,
            hist_t,
            hist_c,
            ACF_THRESHOLD,
            ACF_ATOL,
            SLOPE_RTOL,
            MAX_RUNS,
            _RING,
        )
    redo = np.flatnonzero(~first)
    if redo.size:
        Yw[redo, :-1] = _prewhiten(Y[redo], cw[redo], True)


# ---------------------------------------------------------------- numba kernels (optional)

_NB_BINS = 64  # bucket selection: bins per pass

if _numba is not None:
    _njit = _numba.njit(cache=True, nogil=True, error_model="numpy")

    @_njit
    def _nb_kth_smallest(a, m, k, bins, counts):
        """k-th smallest (0-based) of a[:m], reordering a: bucket selection (split the value
        range into bins, keep the bin holding rank k, repeat), branch-free inner loops."""
        while m > 12:
            mn = a[0]
            mx = a[0]
            for q in range(1, m):
                mn = min(mn, a[q])
                mx = max(mx, a[q])
            if mn == mx:
                return mn
            scale = _NB_BINS / (mx - mn)
            if not (0.0 < scale < np.inf):  # range overflows or underflows: sort instead
                break
            for b in range(_NB_BINS):
                counts[b] = 0
            for q in range(m):
                b = min(int((a[q] - mn) * scale), _NB_BINS - 1)  # monotone in a[q]
                bins[q] = b
                counts[b] += 1
            cum = 0
            b = 0
            while cum + counts[b] <= k:
                cum += counts[b]
                b += 1
            j = 0
            for q in range(m):
                a[j] = a[q]
                j += bins[q] == b
            m = j
            k -= cum
        for i in range(1, m):  # insertion sort of the last few
            v = a[i]
            j = i - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        return a[k]

    @_njit
    def _nb_median_of(buf, cnt, work, bins, counts):
        """R's median of buf[:cnt] (finite values): middle value, or mean of the two."""
        if cnt == 0:
            return np.nan
        lo = (cnt - 1) // 2
        for q in range(cnt):
            work[q] = buf[q]
        a = _nb_kth_smallest(work, cnt, lo, bins, counts)
        if cnt % 2 == 1:
            return (a + a) / 2.0
        nle = 0  # the next order statistic: a again if a is repeated, else min{v > a}
        nxt = np.inf
        for q in range(cnt):
            v = buf[q]
            nle += v <= a
            nxt = min(nxt, v if v > a else np.inf)
        b = a if nle > lo + 1 else nxt
        return (a + b) / 2.0

    @_njit
    def _nb_sen_one(y, x, m, ws, guess=np.nan, delta=np.nan):
        """zyp.sen slope of y[:m] on x[:m]: median of the finite pairwise slopes.

        With a guess (the previous Zhang run's slope) and a half-width, the slopes inside
        [guess - delta, guess + delta] are collected first; when the median ranks fall among
        them only those few are sorted (same value as a full selection, found faster).
        """
        buf, work, bins, counts = ws
        cnt = 0
        clean = True
        for i in range(m):
            clean &= np.isfinite(y[i])
        if clean:  # no missing values: every slope is finite unless it overflows
            for lag in range(1, m):
                for i in range(m - lag):
                    buf[cnt + i] = (y[i + lag] - y[i]) / (x[i + lag] - x[i])
                cnt += m - lag
            for q in range(cnt):
                clean &= np.isfinite(buf[q])
        if not clean:
            cnt = 0
            for lag in range(1, m):
                for i in range(m - lag):
                    v = (y[i + lag] - y[i]) / (x[i + lag] - x[i])
                    if np.isfinite(v):
                        buf[cnt] = v
                        cnt += 1
        if cnt > 0 and delta > 0.0:
            lo = (cnt - 1) // 2
            hi = cnt // 2
            a_lo = guess - delta
            a_hi = guess + delta
            below = 0
            j = 0
            for q in range(cnt):  # branch-free: count below, compact the window
                v = buf[q]
                below += v < a_lo
                work[j] = v
                j += (v >= a_lo) & (v <= a_hi)
            if below <= lo and hi < below + j and j <= 32:
                for i in range(1, j):
                    v = work[i]
                    k = i - 1
                    while k >= 0 and work[k] > v:
                        work[k + 1] = work[k]
                        k -= 1
                    work[k + 1] = v
                return (work[lo - below] + work[hi - below]) / 2.0
        return _nb_median_of(buf, cnt, work, bins, counts)

    @_njit
    def _nb_workspace(n):
        K = max(n * (n - 1) // 2, 1)
        return (np.empty(K), np.empty(K), np.empty(K, dtype=np.int64), np.empty(_NB_BINS, dtype=np.int64))

    @_njit
    def _nb_sen_rows(Y, x, out):
        R, n = Y.shape
        ws = _nb_workspace(n)
        for r in range(R):
            out[r] = _nb_sen_one(Y[r], x, n, ws)

    @_njit
    def _nb_zhang_run(
        act, Y, x, mean, trend, c0, cw, first, k, active, hist_t, hist_c, thr, atol, rtol, max_runs, ring
    ):
        n = Y.shape[1]
        m1 = n - 1
        z = np.empty(n)
        w = np.empty(m1)
        ws = _nb_workspace(m1)
        for q in range(act.shape[0]):
            r = act[q]
            tr = trend[r]
            mu = mean[q]
            # lag-1 autocorrelation of the detrended series (R's acf, see _acf1_rows)
            n0 = 0
            s0 = 0.0
            for i in range(n):
                zi = (Y[r, i] - tr * x[i]) - mu
                z[i] = zi
                if not np.isnan(zi):
                    n0 += 1
                    s0 += zi * zi
            n1 = 0
            s1 = 0.0
            for i in range(m1):
                if not (np.isnan(z[i + 1]) or np.isnan(z[i])):
                    n1 += 1
                    s1 += z[i + 1] * z[i]
            acov0 = s0 / n0 if n0 > 0 else np.nan
            acov1 = s1 / (n1 + 1) if n1 > 0 else np.nan
            se = np.sqrt(acov0)
            cn = acov1 / (se * se)
            if cn > 1.0:
                cn = 1.0
            elif cn < -1.0:
                cn = -1.0
            c_old = c0[r]
            if np.isnan(cn) or (cn < thr and abs(cn - c_old) <= atol):
                active[r] = False
                continue
            for i in range(m1):
                w[i] = (Y[r, i + 1] - cn * Y[r, i]) / (1.0 - cn)
            kc = k[r]
            d = abs(tr - hist_t[r, (kc - 1) % ring]) if kc >= 2 else np.nan
            tn = _nb_sen_one(w, x, m1, ws, tr, 2.0 * d)
            k[r] += 1
            trend[r] = tn
            cw[r] = cn
            first[r] = False
            if abs((tn - tr) / tn) <= rtol and abs(cn - c_old) <= atol:
                active[r] = False  # zyp breaks before c0 <- c
                continue
            c0[r] = cn
            kc = k[r]
            if kc >= max_runs:
                active[r] = False
                continue
            per = ring
            for p in range(1, ring):
                if kc - p < 1:
                    break
                sl = (kc - p) % ring
                if hist_t[r, sl] == tn and hist_c[r, sl] == cn:
                    per = p
                    break
            if per < ring:  # exact cycle: jump to the state of run max_runs
                kfin = kc - per + (max_runs - kc) % per
                sl = kfin % ring
                trend[r] = hist_t[r, sl]
                c0[r] = hist_c[r, sl]
                cw[r] = hist_c[r, sl]
                first[r] = False  # run max_runs is never the first: divided series
                k[r] = max_runs
                active[r] = False
            else:
                hist_t[r, kc % ring] = tn
                hist_c[r, kc % ring] = cn


if _numba is not None:

    @_njit
    def _nb_kendall_counts(Y):
        """Per row: S (concordant - discordant pairs in time order), values present, and
        the tie sums of _kendall_counts."""
        R, n = Y.shape
        S = np.zeros(R)
        m = np.zeros(R, dtype=np.int64)
        sumu = np.zeros(R)
        sumb1 = np.zeros(R)
        sumb2 = np.zeros(R)
        for r in range(R):
            s = 0
            cnt = 0
            su = 0.0
            sb1 = 0.0
            sb2 = 0.0
            for i in range(n):
                yi = Y[r, i]
                if np.isnan(yi):
                    continue
                cnt += 1
                c = 1
                for j in range(n):
                    yj = Y[r, j]
                    if j > i:
                        s += (yj > yi) - (yj < yi)
                    if j != i:
                        c += yj == yi
                su += c - 1.0
                sb1 += (c - 1.0) * (2.0 * c + 5.0)
                sb2 += (c - 1.0) * (c - 2.0)
            S[r] = s
            m[r] = cnt
            sumu[r] = su
            sumb1[r] = sb1
            sumb2[r] = sb2
        return S, m, sumu, sumb1, sumb2

    @_njit
    def _nb_count_slopes(Y, x):
        """Number of non-NaN pairwise slopes per row (R's length(sort(slopes)))."""
        R, n = Y.shape
        out = np.zeros(R, dtype=np.int64)
        for r in range(R):
            c = 0
            for lag in range(1, n):
                for i in range(n - lag):
                    c += not np.isnan((Y[r, i + lag] - Y[r, i]) / (x[i + lag] - x[i]))
            out[r] = c
        return out

    @_njit
    def _nb_order_stats(Y, x, k1, k2, v1, v2):
        """The k1-th and k2-th smallest (0-based) non-NaN pairwise slopes of each row."""
        R, n = Y.shape
        buf, work, bins, counts = _nb_workspace(n)
        for r in range(R):
            cnt = 0
            finite = True
            for lag in range(1, n):
                for i in range(n - lag):
                    v = (Y[r, i + lag] - Y[r, i]) / (x[i + lag] - x[i])
                    if not np.isnan(v):
                        buf[cnt] = v
                        cnt += 1
                        finite &= np.isfinite(v)
            if cnt == 0:
                v1[r] = np.nan
                v2[r] = np.nan
                continue
            if not finite:  # ±inf slopes: plain sort
                srt = np.sort(buf[:cnt])
                v1[r] = srt[min(k1[r], cnt - 1)]
                v2[r] = srt[min(k2[r], cnt - 1)]
                continue
            for q in range(cnt):
                work[q] = buf[q]
            v1[r] = _nb_kth_smallest(work, cnt, min(k1[r], cnt - 1), bins, counts)
            for q in range(cnt):
                work[q] = buf[q]
            v2[r] = _nb_kth_smallest(work, cnt, min(k2[r], cnt - 1), bins, counts)


def _nb_kernels() -> dict:
    """The compiled kernels (numba compiles on first call and caches to __pycache__)."""
    return {"sen_rows": _nb_sen_rows, "zhang_run": _nb_zhang_run}


def _zhang_rows(Y, x, conf, preserve, p_method, r32, block):
    """zyp.zhang for every row of Y at once (see _zhang_scalar for the one-series logic):
    initial ACF, prewhitening and NA rules vectorised, then the iterations (numba or numpy),
    then Kendall and the CI on each row's last prewhitened series."""
    P, n = Y.shape
    F = {k: i for i, k in enumerate(ZYP_FIELDS)}
    out = np.full((P, len(ZYP_FIELDS)), np.nan)
    c = _acf1_rows(Y)
    ok = ~np.isnan(c)
    pw = ok & (c >= ACF_THRESHOLD)
    Yw = Y.copy()  # the series the slope is fitted to; prewhitened rows: last column NaN
    if pw.any():
        Yw[pw, :-1] = _prewhiten(Y[pw], c[pw], preserve)
        Yw[pw, -1] = np.nan
    present = ~np.isnan(Yw)
    m = present.sum(axis=1)
    nz = (present & (Yw != 0)).sum(axis=1)
    ok &= (m > 3) & (nz >= 3) & ~(m / n < 0.1)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return out
    Y, Yw, c, pw = Y[rows], Yw[rows], c[rows], pw[rows]
    R = rows.size
    xs = x[:-1]  # times of a prewhitened series (its last column is always NaN)
    trend = np.empty(R)
    trend[pw] = _sen_slopes(Yw[pw, :-1], xs, block)
    trend[~pw] = _sen_slopes(Yw[~pw], x, block)
    k = np.ones(R, dtype=np.int64)
    c0 = c.copy()
    active = pw.copy()
    if USE_NUMBA:
        _zhang_iterate_numba(Y, Yw, x, trend, c0, k, active)
    else:
        _zhang_iterate_numpy(Y, Yw, x, trend, c0, k, active, block)
    out[rows, F["trend"]] = trend
    out[rows, F["trendp"]] = trend * n
    out[rows, F["intercept"]] = _intercepts(Yw, x, trend)
    out[rows, F["nruns"]] = k
    out[rows, F["autocor"]] = c0
    out[rows, F["valid_frac"]] = (~np.isnan(Yw)).sum(axis=1) / np.where(pw, n - 1, n)
    out[rows, F["linear"]] = _ols_rows(Y, x)
    _finish_rows(out, rows[pw], Yw[pw, :-1], xs, conf, p_method, r32, block)
    _finish_rows(out, rows[~pw], Yw[~pw], x, conf, p_method, r32, block)
    return out


def _yuepilon_rows(Y, x, conf, preserve, p_method, r32, block):
    """zyp.yuepilon for every row of Y at once (see _yuepilon_scalar)."""
    P, n = Y.shape
    F = {k: i for i, k in enumerate(ZYP_FIELDS)}
    out = np.full((P, len(ZYP_FIELDS)), np.nan)
    present = ~np.isnan(Y)
    m = present.sum(axis=1)
    nz = (present & (Y != 0)).sum(axis=1)
    ok = (m > 3) & (nz >= 3) & ~(m / n < 0.1)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return out
    Yr = Y[rows]
    b = _sen_slopes(Yr, x, block)
    with np.errstate(invalid="ignore", over="ignore"):
        xt = Yr - b[:, None] * x
    ac = _acf1_rows(xt)
    with np.errstate(invalid="ignore", over="ignore"):
        yt = _prewhiten(xt, ac, preserve) + b[:, None] * x[:-1]
    m2 = (~np.isnan(yt)).sum(axis=1)
    sub = np.flatnonzero(~np.isnan(ac) & (m2 >= 2))
    if sub.size == 0:
        return out
    rows, yt, ac, Yr, m = rows[sub], yt[sub], ac[sub], Yr[sub], m[rows[sub]]
    xp = x[:-1]
    trend = _sen_slopes(yt, xp, block)
    out[rows, F["trend"]] = trend
    out[rows, F["trendp"]] = trend * n
    out[rows, F["intercept"]] = _intercepts(yt, xp, trend)
    out[rows, F["nruns"]] = 1.0
    out[rows, F["autocor"]] = ac
    out[rows, F["valid_frac"]] = m / n
    out[rows, F["linear"]] = _ols_rows(Yr, x)
    _finish_rows(out, rows, yt, xp, conf, p_method, r32, block)
    return out


def zyp_rows(
    Y: np.ndarray,
    x: Sequence[float] | None = None,
    method: str = "zhang",
    conf_intervals: bool = True,
    *,
    preserve_range_for_sig_test: bool = False,
    p_method: str = "kendall",
    r_float32: bool = False,
    block_size: int = 8192,
) -> np.ndarray:
    """Vectorised :func:`zyp_trend` for many series: Y has shape (..., n), time last.

    Returns an array of shape (..., len(ZYP_FIELDS)) in ZYP_FIELDS order. The pairwise work
    arrays (rows x n(n-1)/2) are built ``block_size`` rows at a time, which bounds memory to a
    few times block_size * n(n-1)/2 * 8 bytes (~12 MB each for 8192 rows and n = 20).
    """
    _check_opts(method, p_method)
    Y = np.asarray(Y, dtype=np.float64)
    lead, n = Y.shape[:-1], Y.shape[-1]
    Y2 = Y.reshape(-1, n)
    if np.isinf(Y2).any():
        Y2 = np.where(np.isinf(Y2), np.nan, Y2)
    xv = np.arange(1.0, n + 1.0) if x is None else np.asarray(x, dtype=np.float64).ravel()
    if xv.size != n:
        raise ValueError(f"x has {xv.size} values, the series have {n}")
    _check_x(xv)
    out = np.full((Y2.shape[0], len(ZYP_FIELDS)), np.nan)
    live = np.flatnonzero((~np.isnan(Y2)).sum(axis=1) > 3)  # the others are NA anyway
    kern = _zhang_rows if method == "zhang" else _yuepilon_rows
    for s in range(0, live.size, _POOL_ROWS):  # bounds memory for very large inputs
        rows = live[s : s + _POOL_ROWS]
        out[rows] = kern(
            Y2[rows], xv, conf_intervals, preserve_range_for_sig_test, p_method, r_float32, max(int(block_size), 1)
        )
    return out.reshape(*lead, len(ZYP_FIELDS))


_POOL_ROWS = 1 << 18  # rows iterated together by zyp_rows (~40 MB per (rows, n=20) array)


# ------------------------------------------------------------------------------ grid (xarray)


#: UDUNITS symbols of the steps a trend is computed along.
STEP_UNITS = {"year": "yr", "month": "month", "day": "d"}


def per_step_units(units: str, dim: str) -> str:
    """The units of a slope per step of ``dim`` (a UDUNITS string: "g m-2" per year ->
    "g m-2 yr-1"); a dimensionless series gives "yr-1". A ``dim`` without a unit (an index)
    keeps the series' units with the words "per <dim>"."""
    step = STEP_UNITS.get(dim)
    if step is None:
        return f"{units} per {dim}"
    return f"{step}-1" if units in ("", "1") else f"{units} {step}-1"


def trend_grid(
    da: xr.DataArray,
    dim: str = "year",
    method: str = "zhang",
    *,
    conf_intervals: bool = True,
    preserve_range_for_sig_test: bool = False,
    p_method: str = "kendall",
    r_float32: bool = False,
    x: Sequence[float] | None = None,
    block_size: int = 8192,
) -> xr.Dataset:
    """Pixel-wise zyp trends of ``da`` along ``dim`` (e.g. annual sums on (year, y, x)).

    Every pixel gets the numbers :func:`zyp_trend` gives for its series, with x = 1..n (as
    zyp.trend.dataframe; pass ``x`` for other times). Variables: slope (zyp's ``trend``, per
    time step), trendp, p (zyp's ``sig``), tau, autocor, intercept, lbound, ubound, nruns,
    valid_frac, linear; NaN wherever zyp returns NA (e.g. all-NaN pixels, < 4 values).

    Works on numpy- and dask-backed arrays; with dask the work is spread over the spatial
    chunks (``dim`` is gathered into one chunk) and nothing is computed until asked for.
    Inside a chunk all pixels are processed together: pairwise slopes, ACFs, the Zhang
    iterations (with a per-pixel convergence mask), Kendall's S and tie-corrected variance;
    the per-pixel inner loops run in numba kernels when numba is installed (same numbers
    without it, slower). A numpy-backed input is processed in one thread; chunk it with
    dask to use several cores (the kernels release the GIL, but each Zhang run still has
    some Python-level bookkeeping per chunk, so scaling with threads is sub-linear).
    """
    _check_opts(method, p_method)
    if dim not in da.dims:
        raise ValueError(f"{dim!r} is not a dimension of the array (dims: {da.dims})")
    n = da.sizes[dim]
    xv = None if x is None else np.asarray(x, dtype=np.float64)
    if da.chunks is not None:
        da = da.chunk({dim: -1})
    names = list(GRID_VARIABLES)
    idx = [ZYP_FIELDS.index(GRID_VARIABLES[v]) for v in names]

    def _kernel(arr):
        res = zyp_rows(
            arr,
            xv,
            method,
            conf_intervals,
            preserve_range_for_sig_test=preserve_range_for_sig_test,
            p_method=p_method,
            r_float32=r_float32,
            block_size=block_size,
        )
        return tuple(res[..., i] for i in idx)

    outs = xr.apply_ufunc(
        _kernel,
        da.astype(np.float64),
        input_core_dims=[[dim]],
        output_core_dims=[[] for _ in names],
        dask="parallelized",
        output_dtypes=[np.float64] * len(names),
    )
    ds = xr.Dataset({name: o for name, o in zip(names, outs)})
    units = da.attrs.get("units")
    long = {
        "slope": f"Sen slope per step of {dim} (zyp trend)",
        "trendp": f"slope x number of {dim} steps ({n})",
        "p": "two-sided Mann-Kendall p-value (zyp sig)",
        "tau": "Kendall's tau of the (prewhitened) series",
        "autocor": "lag-1 autocorrelation used for prewhitening",
        "intercept": "Sen intercept (at step 0)",
        "lbound": "lower 95% bound of the slope",
        "ubound": "upper 95% bound of the slope",
        "nruns": "prewhitening runs",
        "valid_frac": "fraction of values present (after prewhitening)",
        "linear": "least-squares slope per step",
    }
    for v in names:  # each map's own attributes (not the series'): CF units strings, docs/formats.md
        ds[v].attrs = {"long_name": long[v]}
        if units and v in ("slope", "lbound", "ubound", "linear"):
            ds[v].attrs["units"] = per_step_units(str(units), dim)
        elif units and v in ("trendp", "intercept"):
            ds[v].attrs["units"] = units
        elif v in ("p", "tau", "autocor", "valid_frac", "nruns"):
            ds[v].attrs["units"] = "1"
    ds.attrs.update(
        method=method,
        semantics="R zyp 0.11-1 zyp.trend.vector with Kendall 2.2.1",
        preserve_range_for_sig_test=int(preserve_range_for_sig_test),
        p_method=p_method,
        n_steps=n,
    )
    return ds


def _per_year(units: str) -> str:
    u = units.strip()
    if u.endswith("yr-1"):
        return u[: -len("yr-1")] + "yr-2"
    return f"{u} yr-1"


def trend_series(
    values: Sequence[float],
    years: Sequence[float],
    method: str = "zhang",
    *,
    units: str | None = "Tg C yr-1",
    alpha: float = 0.05,
    preserve_range_for_sig_test: bool = False,
    p_method: str = "kendall",
) -> dict:
    """Trend of one budget series, e.g. annual NEE in Tg C yr-1 -> slope in Tg C yr-2.

    Time is years - first year + 1 (zyp's 1..n for consecutive years; gaps keep their
    distance). Returns one row: first/last year, n, slope (per year), p, tau, the 95% bounds,
    intercept (value fitted at first_year - 1, zyp's t = 0), trendp, autocor, nruns,
    valid_frac, linear, significant (p < alpha), method and units.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    yr = np.asarray(years, dtype=np.float64).ravel()
    if v.size != yr.size:
        raise ValueError(f"{v.size} values but {yr.size} years")
    order = np.argsort(yr, kind="stable")
    v, yr = v[order], yr[order]
    r = zyp_trend(
        v, yr - yr[0] + 1.0, method, True, preserve_range_for_sig_test=preserve_range_for_sig_test, p_method=p_method
    )
    row = {
        "method": method,
        "first_year": int(yr[0]),
        "last_year": int(yr[-1]),
        "n_years": int(v.size),
        "slope": r["trend"],
        "p": r["sig"],
        "significant": bool(r["sig"] < alpha) if np.isfinite(r["sig"]) else False,
        "tau": r["tau"],
        "lbound": r["lbound"],
        "ubound": r["ubound"],
        "intercept": r["intercept"],
        "trendp": r["trendp"],
        "autocor": r["autocor"],
        "nruns": r["nruns"],
        "valid_frac": r["valid_frac"],
        "linear": r["linear"],
    }
    if units is not None:
        row["units"] = units
        row["slope_units"] = _per_year(units)
    return row


# --------------------------------------------------------------------------- study analyses
# What the paper reports from trends (workflow.md §6): pixel-wise trends of annual, summer,
# non-summer and monthly fluxes and of drivers, area shares of significant trends, greening
# overlap, the GPP/Reco attribution of NEE trends (Fig. 2c) and trends of zone budgets.

ALPHA = 0.05
OVERLAY = ("sink_up_by_gpp", "sink_up_by_reco", "source_up_by_reco", "source_up_by_gpp")


def period_series(monthly: xr.DataArray, how: str = "sum") -> dict[str, xr.DataArray]:
    """Per-pixel yearly series of a monthly field: ``annual``, ``jja``, ``nonsummer``
    (within the calendar year: annual − JJA) and ``m01``..``m12``; complete years only."""
    t = monthly["time"].dt
    agg = (lambda g: g.sum("time", min_count=1)) if how == "sum" else (lambda g: g.mean("time"))
    n = monthly.groupby("time.year").count("time")
    complete = monthly["time"].groupby("time.year").count() == 12
    years = complete["year"].values[complete.values]
    out = {}
    ann = monthly.groupby("time.year").map(agg).sel(year=years)
    ok = n.sel(year=years) == 12
    out["annual"] = ann.where(ok)
    jja = monthly.where(t.month.isin([6, 7, 8])).groupby("time.year").map(agg).sel(year=years)
    out["jja"] = jja.where(ok)
    if how == "sum":
        out["nonsummer"] = (ann - jja).where(ok)
    else:  # the mean of the nine months outside JJA of the same calendar year
        ns = monthly.where(~t.month.isin([6, 7, 8])).groupby("time.year").map(agg).sel(year=years)
        out["nonsummer"] = ns.where(ok)
    for m in range(1, 13):
        sel = monthly.sel(time=t.month == m)
        out[f"m{m:02d}"] = (
            sel.assign_coords(year=("time", sel["time"].dt.year.values))
            .swap_dims(time="year")
            .drop_vars("time")
            .sel(year=years)
        )
    return out


def area_share(mask: xr.DataArray, weight: xr.DataArray, valid: xr.DataArray) -> float:
    """Area-weighted share of the valid cells where ``mask`` holds."""
    w = weight.where(valid, 0.0)
    tot = float(w.sum())
    return float(w.where(mask, 0.0).sum()) / tot if tot > 0 else float("nan")


def overlay_classes(nee_slope, gpp_slope, reco_slope) -> xr.DataArray:
    """Fig. 2c: which component drives each pixel's NEE trend (codes 1..4, see OVERLAY).

    NEE slope < 0 (sink strengthening): from rising GPP when gpp_slope ≥ −reco_slope, else from
    falling Reco. NEE slope > 0: from rising Reco when reco_slope ≥ −gpp_slope, else from falling
    GPP. Significant and non-significant trends alike, as in the paper; 0 where NEE slope is 0
    or missing.
    """
    up_sink = nee_slope < 0
    up_src = nee_slope > 0
    code = xr.where(up_sink & (gpp_slope >= -reco_slope), 1, 0)
    code = xr.where(up_sink & (gpp_slope < -reco_slope), 2, code)
    code = xr.where(up_src & (reco_slope >= -gpp_slope), 3, code)
    code = xr.where(up_src & (reco_slope < -gpp_slope), 4, code)
    code = code.astype(np.int8)
    code.attrs.update(
        flag_values=np.arange(1, 5, dtype=np.int8),
        flag_meanings=" ".join(OVERLAY),
        long_name="attribution of the annual NEE trend (0 = none)",
    )
    return code


def site_trends(
    table: pd.DataFrame,
    min_years: int = 8,
    flux: str = "nee",
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
) -> pd.DataFrame:
    """In-situ trends: annual sums of site-years with 12 months, for sites with ≥ ``min_years``
    such years (the paper: more than seven years of year-round data)."""
    d = table[table[flux].notna()]
    full = d.groupby(["site_id", "year"]).filter(lambda g: g.month.nunique() == 12)
    ann = full.groupby(["site_id", "year"])[flux].sum().reset_index()
    rows = []
    for site, g in ann.groupby("site_id"):
        if len(g) < min_years:
            continue
        g = g.sort_values("year")
        years = np.arange(g.year.min(), g.year.max() + 1)
        series = pd.Series(g[flux].to_numpy(), index=g.year.to_numpy()).reindex(years)
        r = trend_series(
            series.to_numpy(),
            years,
            method=method,
            units="g C m-2 yr-1",
            preserve_range_for_sig_test=preserve_range_for_sig_test,
        )
        rows.append(
            {
                "site_id": site,
                "n_years": int(len(g)),
                "first_year": int(years[0]),
                "last_year": int(years[-1]),
                **{k: r[k] for k in ("slope", "p", "tau")},
            }
        )
    return pd.DataFrame(rows, columns=["site_id", "n_years", "first_year", "last_year", "slope", "p", "tau"])


# ---------------------------------------------------------------------------- the trends step's maps and tables
# Driver variables of the stack with a trend map: variable -> (period, aggregation).
DRIVERS = {
    "ndvi": ("jja", "mean"),
    "lst": ("annual", "mean"),
    "snow_cover": ("annual", "mean"),
    "soil_moisture": ("jja", "mean"),
    "soil_temp": ("annual", "mean"),
    "srad": ("annual", "mean"),
    "vpd": ("jja", "mean"),
}
#: Periods of every driver's trend maps besides its DRIVERS period (seasonal means per year).
DRIVER_MAP_PERIODS = ("annual", "jja", "nonsummer")
TREND_BAND_BYTES = 256 * 2**20  # float64 monthly series held per band and flux


def trend_band(
    up: xr.Dataset,
    drv: xr.Dataset,
    rows: slice,
    fluxes: Sequence[str],
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
    fire: xr.Dataset | None = None,
) -> xr.Dataset:
    """Every per-pixel trend map of one band of grid rows: each flux's periods, the drivers'
    (their :data:`DRIVERS` period and :data:`DRIVER_MAP_PERIODS`), with ``fire`` (the fire input
    over the fire years, same grid) the annual fire emissions' and NEE + fire's
    (:func:`fire_trend_maps`), and the GPP/Reco attribution of NEE trends (zyp's ``method`` and
    ``preserve_range_for_sig_test``, the run's ``[trends]``)."""
    maps = {}
    kw = {"method": method, "preserve_range_for_sig_test": preserve_range_for_sig_test}
    for flux in fluxes:
        monthly = up[flux].isel(y=rows).load().assign_attrs(units=CF_FLUX_UNITS)  # amounts per month
        for period, series in period_series(monthly).items():
            t = trend_grid(series, "year", **kw)
            for stat in ("slope", "p", "tau"):
                maps[f"{flux}_{period}_{stat}"] = t[stat]
    for var, (period, how) in DRIVERS.items():
        if var in drv:
            per = period_series(drv[var].isel(y=rows).load(), how=how)
            for p in dict.fromkeys((period, *DRIVER_MAP_PERIODS)):  # the paper's period first
                t = trend_grid(per[p], "year", **kw)
                for stat in ("slope", "p", "tau"):
                    maps[f"{var}_{p}_{stat}"] = t[stat]
    if fire is not None:
        maps.update(fire_trend_maps(up["nee"].isel(y=rows).load(), fire[["fire_emissions"]].isel(y=rows).load(), **kw))
    ds = xr.Dataset(maps)
    ds["nee_trend_attribution"] = overlay_classes(
        ds.nee_annual_slope, ds.gpp_annual_slope, ds.reco_annual_slope
    ).astype("int8")
    return ds


def trend_band_rows(ny: int, nx: int, n_months: int, tile: int, budget: int = TREND_BAND_BYTES) -> int:
    """Rows per band: the upscaling tile (whole Zarr chunks are read) unless one flux's float64
    monthly series for that many rows would exceed ``budget`` bytes."""
    fit = max(1, budget // max(1, nx * n_months * 8))
    return int(max(1, min(tile, fit, ny)))


def maps_template(first_band: xr.Dataset, y, x, nrow: int) -> xr.Dataset:
    """The (lazy, missing-valued) layout of the whole grid's trend maps, from the first band's
    variables and dtypes; CRS and title attributes are the caller's."""
    import dask.array as dsa

    ny, nx = len(y), len(x)
    tmpl = xr.Dataset(
        {
            k: (
                ("y", "x"),
                dsa.full((ny, nx), -1 if v.dtype.kind == "i" else np.nan, dtype=v.dtype, chunks=(nrow, nx)),
                v.attrs,
            )
            for k, v in first_band.data_vars.items()
        },
        coords={"y": y, "x": x},
    )
    tmpl["nee_trend_attribution"].attrs.update(
        flag_values=list(range(len(OVERLAY) + 1)), flag_meanings="none " + " ".join(OVERLAY)
    )
    return tmpl


def trend_area_shares(ds: xr.Dataset, zones: xr.Dataset) -> pd.DataFrame:
    """Area shares (area-weighted over land cells with a trend) of significant NEE trends,
    greening and its overlap with uptake trends, and of each attribution class. ``zones``: the
    run's (``permafrost`` = the membership under the ``[budgets]`` rule; Context.zones)."""
    w = zones["land_fraction"].fillna(0) * zones["cell_area"]
    sig = ALPHA
    valid = ds.nee_annual_slope.notnull() & (w > 0)
    # the permafrost region's membership as the run's zones carry it: the [budgets] rule applied
    # (abzflux.budgets.permafrost_zones), so the shares weigh cells as the permafrost budget does
    pw = zones["permafrost"].fillna(0)
    shares = {
        "nee_increasing_uptake": area_share((ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w, valid),
        "nee_increasing_emissions": area_share((ds.nee_annual_p < sig) & (ds.nee_annual_slope > 0), w, valid),
        "permafrost_nee_increasing_uptake": area_share(
            (ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w * pw, valid & (pw > 0)
        ),
    }
    if "ndvi_jja_slope" in ds:
        green = (ds.ndvi_jja_p < sig) & (ds.ndvi_jja_slope > 0)
        shares["greening"] = area_share(green, w, valid)
        shares["greening_with_annual_uptake_trend"] = area_share(
            (ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w, valid & green
        )
        shares["greening_with_jja_uptake_trend"] = area_share(
            (ds.nee_jja_p < sig) & (ds.nee_jja_slope < 0), w, valid & green
        )
    for code, name in enumerate(OVERLAY, start=1):
        shares[f"attribution_{name}"] = area_share(ds.nee_trend_attribution == code, w, valid)
    return pd.DataFrame([{"quantity": k, "area_share": v} for k, v in shares.items()])


def budget_trends(
    annual: pd.DataFrame, method: str = "zhang", preserve_range_for_sig_test: bool = False
) -> pd.DataFrame:
    """Theil–Sen + Mann–Kendall trends of each zone's and flux's annual budget (Tg C yr-2)."""
    rows = []
    for (zone, flux), g in annual.groupby(["zone", "flux"], sort=True):
        g = g.sort_values("year")
        r = trend_series(
            g.tg_c.to_numpy(), g.year.to_numpy(), method, preserve_range_for_sig_test=preserve_range_for_sig_test
        )
        rows.append(
            {
                "zone": zone,
                "flux": flux,
                **{k: r[k] for k in ("first_year", "last_year", "n_years", "slope", "p", "tau", "lbound", "ubound")},
            }
        )
    return pd.DataFrame(rows)


def member_annual(members_monthly: pd.DataFrame) -> pd.DataFrame:
    """Each bootstrap member's annual zone budgets (sum of the 12 months; member, zone, flux,
    year, tg_c) from ``budgets_members_monthly.parquet``; years with fewer than 12 months are
    left out."""
    g = members_monthly.groupby(["member", "zone", "flux", "year"], sort=True).tg_c
    a = g.sum().reset_index()
    return a[g.size().to_numpy() == 12].reset_index(drop=True)


def budget_trend_sd(
    members_annual: pd.DataFrame, method: str = "zhang", preserve_range_for_sig_test: bool = False
) -> pd.DataFrame:
    """The bootstrap ± of the budget trends: per zone and flux, the SD (ddof 1) across the
    members of their own Theil–Sen slopes (Tg C yr-2; the slopes of :func:`budget_trends`).
    Columns zone, flux, slope_sd."""
    t = series_trends(members_annual, ["member", "zone", "flux"], method, preserve_range_for_sig_test, value="tg_c")
    return t.groupby(["zone", "flux"], sort=True).slope.std(ddof=1).rename("slope_sd").reset_index()


# ------------------------------------------------------------- seasons, drivers and fire
# The paper reports trends of annual, seasonal and monthly budgets, of the environmental drivers
# (Supp. Figs. 6-10: "monthly and seasonal means per year", workflow.md §6) and of the fire
# emissions; these tables and maps sit beside budget_trends (annual, unchanged).

#: Seasons of the budget trend table, as in budgets/seasonal.csv (budgets.seasonal_from_monthly),
#: then each calendar month m01..m12.
BUDGET_SEASONS = ("annual", "jja", "nonsummer", "nonsummer_crossyear")
MONTHS = tuple(f"m{m:02d}" for m in range(1, 13))
#: Driver seasons (months of the mean; DJF takes December from the previous year, labelled by
#: the January-February year, as the authors' scripts' seasonal means).
DRIVER_SEASONS: dict[str, tuple[int, ...]] = {
    "annual": tuple(range(1, 13)),
    "jja": (6, 7, 8),
    "nonsummer": (1, 2, 3, 4, 5, 9, 10, 11, 12),
    "mam": (3, 4, 5),
    "son": (9, 10, 11),
    "djf": (12, 1, 2),
}
TREND_COLUMNS = ("first_year", "last_year", "n_years", "slope", "p", "significant", "tau", "lbound", "ubound")


def series_trends(
    long: pd.DataFrame,
    keys: Sequence[str],
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
    value: str = "value",
) -> pd.DataFrame:
    """One zyp trend per group of ``keys`` of a long table (``*keys``, year, ``value``): the
    numbers :func:`trend_series` gives for each group's yearly series (time = year − first
    year + 1, gaps keep their distance), computed with :func:`zyp_rows` for all groups that
    share the same years at once. Missing values are dropped first. Columns: ``keys`` and
    :data:`TREND_COLUMNS`; groups in sorted order."""
    keys = list(keys)
    d = long[keys + ["year", value]]
    d = d[np.isfinite(d[value].to_numpy(dtype=np.float64))].sort_values(keys + ["year"], kind="stable")
    if d.duplicated(keys + ["year"]).any():
        raise ValueError(f"more than one value per {keys + ['year']} in the series")
    groups: dict[tuple, list] = {}
    series: dict = {}
    for k, g in d.groupby(keys, sort=True):
        yrs = tuple(int(v) for v in g.year.to_numpy())
        series[k] = g[value].to_numpy(dtype=np.float64)
        groups.setdefault(yrs, []).append(k)
    res: dict = {}
    for yrs, ks in groups.items():
        x = np.asarray(yrs, dtype=np.float64) - yrs[0] + 1.0
        out = zyp_rows(
            np.stack([series[k] for k in ks]), x, method, True, preserve_range_for_sig_test=preserve_range_for_sig_test
        )
        for k, o in zip(ks, out):
            r = dict(zip(ZYP_FIELDS, o))
            res[k] = {
                "first_year": yrs[0],
                "last_year": yrs[-1],
                "n_years": len(yrs),
                "slope": r["trend"],
                "p": r["sig"],
                "significant": bool(r["sig"] < ALPHA) if np.isfinite(r["sig"]) else False,
                "tau": r["tau"],
                "lbound": r["lbound"],
                "ubound": r["ubound"],
            }
    rows = [{**dict(zip(keys, k if isinstance(k, tuple) else (k,))), **res[k]} for k in series]
    return pd.DataFrame(rows, columns=keys + list(TREND_COLUMNS))


def _season_order(df: pd.DataFrame, order: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    rank = {s: i for i, s in enumerate(order)}
    df = df.assign(_r=df.season.map(rank)).sort_values([*keys, "_r"], kind="stable")
    return df.drop(columns="_r").reset_index(drop=True)


def seasonal_budget_trends(
    seasonal: pd.DataFrame,
    monthly: pd.DataFrame,
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
) -> pd.DataFrame:
    """Theil–Sen + Mann–Kendall trends (Tg C yr-2) of every zone's and flux's budget per season
    (:data:`BUDGET_SEASONS`, from ``seasonal``: budgets/seasonal.csv with zone, flux, season,
    year, tg_c) and per calendar month (``m01``..``m12``, from ``monthly``: budgets/monthly.csv
    with zone, flux, year, month, tg_c). The ``annual`` rows equal :func:`budget_trends`'."""
    s = seasonal[seasonal.season.isin(BUDGET_SEASONS)][["zone", "flux", "season", "year", "tg_c"]]
    m = monthly[["zone", "flux", "year", "month", "tg_c"]]
    m = m.assign(season=[f"m{int(v):02d}" for v in m.month]).drop(columns="month")
    long = pd.concat([s, m[s.columns]], ignore_index=True)
    out = series_trends(long, ["zone", "flux", "season"], method, preserve_range_for_sig_test, value="tg_c")
    out = _season_order(out, BUDGET_SEASONS + MONTHS, ["zone", "flux"])
    out["units"] = "Tg C yr-2"  # per season (or month) per year
    return out


def driver_zone_means(budget_like: pd.DataFrame, areas_m2: pd.Series, tg: float) -> pd.DataFrame:
    """Land-area-weighted zone means of monthly drivers from a :func:`abzflux.budgets.monthly_budgets`
    table of the drivers (tg_c = Σ value × weight / ``tg``, coverage = Σ weight over cells with a
    value / zone area): mean = tg_c × tg / (coverage × area), over the cells with a value.
    Returns zone, driver, year, month, value (NaN where the zone has no cell with a value)."""
    d = budget_like
    denom = d.coverage.to_numpy(dtype=np.float64) * d.zone.map(areas_m2).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(denom > 0, d.tg_c.to_numpy(dtype=np.float64) * tg / np.where(denom > 0, denom, 1.0), np.nan)
    return pd.DataFrame(
        {
            "zone": d.zone.to_numpy(),
            "driver": d.flux.to_numpy(),
            "year": d.year.to_numpy(),
            "month": d.month.to_numpy(),
            "value": val,
        }
    )


def driver_season_means(monthly: pd.DataFrame) -> pd.DataFrame:
    """Seasonal means per year of monthly zone means (zone, driver, year, month, value): each
    season of :data:`DRIVER_SEASONS` (the mean of its monthly means, complete seasons only; DJF
    labelled by the year of its January) and each month ``m01``..``m12``. Returns zone, driver,
    season, year, value."""
    keys = ["zone", "driver"]
    d = monthly[np.isfinite(monthly.value.to_numpy(dtype=np.float64))]
    parts = []
    for season, months in DRIVER_SEASONS.items():
        sub = d[d.month.isin(months)]
        if season == "djf":
            sub = sub.assign(year=np.where(sub.month == 12, sub.year + 1, sub.year))
        g = sub.groupby(keys + ["year"], sort=True).agg(value=("value", "mean"), n=("month", "nunique")).reset_index()
        parts.append(g[g.n == len(months)].drop(columns="n").assign(season=season))
    parts.append(d.assign(season=[f"m{int(v):02d}" for v in d.month]).drop(columns="month"))
    return pd.concat(parts, ignore_index=True)[keys + ["season", "year", "value"]]


def driver_trends(
    season_means: pd.DataFrame,
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
    units: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Theil–Sen + Mann–Kendall trends of every zone's driver means per season and month
    (:func:`driver_season_means`); slope in the driver's unit per year (``units``: driver ->
    its unit, for the ``units`` column)."""
    out = series_trends(season_means, ["zone", "driver", "season"], method, preserve_range_for_sig_test)
    out = _season_order(out, tuple(DRIVER_SEASONS) + MONTHS, ["zone", "driver"])
    u = units or {}
    out["units"] = [f"{u[d]} yr-1" if u.get(d) else "yr-1" for d in out.driver]
    return out


def fire_trend_maps(
    nee: xr.DataArray,
    fire: xr.Dataset,
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
) -> dict[str, xr.DataArray]:
    """Per-pixel trends of annual fire emissions (``fire_annual_*``) and of annual NEE + fire
    (``nee_fire_annual_*``; slope, p, tau; g C m-2 yr-2) over the complete years the fire input
    (g C m-2 month-1, already cut to the fire years) and the monthly NEE share, on the cells
    where NEE has a value. A cell with fire in fewer than three years has no fire trend (zyp:
    fewer than three non-zero values), as a cell with no fire at all."""
    fa = period_series(fire["fire_emissions"].assign_attrs(units=CF_FLUX_UNITS))["annual"]  # g C m-2 in the year
    na = period_series(nee.assign_attrs(units=CF_FLUX_UNITS))["annual"]
    years = np.intersect1d(fa.year.values, na.year.values)
    if years.size == 0:
        raise ValueError("no complete year shared by the fire input and the upscaled NEE")
    na = na.sel(year=years)
    fa = fa.sel(year=years).where(na.notnull())
    kw = {"method": method, "preserve_range_for_sig_test": preserve_range_for_sig_test}
    maps = {}
    for name, series in (("fire_annual", fa), ("nee_fire_annual", (na + fa).assign_attrs(units=CF_FLUX_UNITS))):
        t = trend_grid(series.transpose("year", ...), "year", **kw)
        for stat in ("slope", "p", "tau"):
            maps[f"{name}_{stat}"] = t[stat].assign_attrs(first_year=int(years[0]), last_year=int(years[-1]))
    return maps


def fire_area_shares(ds: xr.Dataset, zones: xr.Dataset) -> pd.DataFrame:
    """Area shares (over land cells with an annual NEE trend) of significant (p < 0.05) trends of
    annual fire emissions (increasing, decreasing) and of NEE + fire (increasing uptake,
    increasing emissions); empty without fire maps."""
    if "fire_annual_slope" not in ds:
        return pd.DataFrame(columns=["quantity", "area_share"])
    w = zones["land_fraction"].fillna(0) * zones["cell_area"]
    valid = ds.nee_annual_slope.notnull() & (w > 0)
    f_sig, nf_sig = ds.fire_annual_p < ALPHA, ds.nee_fire_annual_p < ALPHA
    shares = {
        "fire_increasing": area_share(f_sig & (ds.fire_annual_slope > 0), w, valid),
        "fire_decreasing": area_share(f_sig & (ds.fire_annual_slope < 0), w, valid),
        "nee_fire_increasing_uptake": area_share(nf_sig & (ds.nee_fire_annual_slope < 0), w, valid),
        "nee_fire_increasing_emissions": area_share(nf_sig & (ds.nee_fire_annual_slope > 0), w, valid),
    }
    return pd.DataFrame([{"quantity": k, "area_share": v} for k, v in shares.items()])
