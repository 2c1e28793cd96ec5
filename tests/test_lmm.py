"""abzflux.lmm against R (lme4 1.1.31 + lmerTest 3.1.3, R 4.2.2; tests/data/fire_lmm/README.md)
and against cases with a known answer. R is not needed to run these tests: its output is stored."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abzflux import fire, lmm

DATA = Path(__file__).parent / "data" / "fire_lmm"


@functools.cache
def _ours(table: str) -> dict:
    d = pd.read_csv(DATA / table)
    d = d[(d.years_since_fire >= 0) & (d.years_since_fire <= 18)]
    return {int(m): lmm.lmer_slope(g, "residual", "years_since_fire", "site_id") for m, g in d.groupby("month")}


def _compare(fits: dict, r: pd.DataFrame, est=1e-4, se=1e-3, df=1e-2, p=1e-3) -> list[int]:
    """Assert agreement where R reached the same optimum (REML criterion within 1e-5); return
    the months where R stopped at a higher criterion (a worse optimum)."""
    worse = []
    for m, f in fits.items():
        rr = r[r.month == m].set_index("term")
        assert bool(rr.singular.iloc[0]) == f.singular or rr.reml.iloc[0] > f.reml + 1e-5, m
        if rr.reml.iloc[0] > f.reml + 1e-5:
            worse.append(m)
            continue
        assert f.reml == pytest.approx(rr.reml.iloc[0], abs=1e-5)
        for j, term in enumerate(f.names):
            x = rr.loc[term]
            assert f.beta[j] == pytest.approx(x.estimate, rel=est, abs=1e-8), (m, term)
            assert f.se[j] == pytest.approx(x.se, rel=se), (m, term)
            assert f.df[j] == pytest.approx(x.df, rel=df), (m, term)
            assert f.p[j] == pytest.approx(x.p, abs=p), (m, term)
        assert f.sigma == pytest.approx(rr.sigma.iloc[0], rel=1e-3)
    return worse


@pytest.mark.parametrize("table", ["simulated", "twin"])
def test_matches_lme4_lmertest_at_tight_tolerances(table):
    fits = _ours(f"{table}_residuals.csv")
    worse = _compare(fits, pd.read_csv(DATA / f"{table}_r_tight.csv"))
    # where lme4 stops elsewhere its criterion is higher: ours is the better optimum
    assert worse == {"simulated": [3], "twin": [5, 6, 8]}[table]
    # singular and regular fits both occur, and are flagged as lme4's isSingular does
    assert {f.singular for f in fits.values()} == {True, False}


@pytest.mark.parametrize("table", ["simulated", "twin"])
def test_matches_lme4_defaults_within_their_optimiser_tolerance(table):
    """lme4's default BOBYQA tolerances leave θ off the optimum by ~1e-3: estimates agree to
    2e-3 relative, p to 1e-3."""
    fits = _ours(f"{table}_residuals.csv")
    r = pd.read_csv(DATA / f"{table}_r.csv")
    worse = _compare(fits, r.assign(reml=r.reml.where(r.reml > 0)), est=2e-3, se=2e-3, df=1e-2, p=1e-3)
    assert set(worse) <= {3, 5, 6, 8, 12}  # 12: lme4 defaults warn "failed to converge" there


def test_no_between_site_variation_gives_ols_with_n_minus_2_df():
    """Residuals orthogonal to every site's intercept and slope: the REML optimum is θ = 0
    (singular), the fit is OLS and the Satterthwaite df are n − 2 (as lmerTest: the simulated
    table's month 5 in an earlier draft, θ = 0, df 33.000 for n = 35)."""
    rng = np.random.default_rng(1)
    x = np.tile(np.arange(6.0), 8)
    site = np.repeat(np.arange(8), 6)
    X = np.column_stack([np.ones_like(x), x])
    e = rng.normal(0, 1, x.size)
    for s in range(8):  # project each site's own line out of its noise
        i = site == s
        e[i] -= X[i] @ np.linalg.lstsq(X[i], e[i], rcond=None)[0]
    y = 3.0 - 0.5 * x + e
    f = lmm.lmer(y, X, X, site, ("a", "b"))
    assert f.singular and np.all(np.abs(f.theta) < 1e-6)
    np.testing.assert_allclose(f.beta, [3.0, -0.5], rtol=1e-10)
    s2 = e @ e / (len(y) - 2)
    np.testing.assert_allclose(f.se, np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X))), rtol=1e-8)
    np.testing.assert_allclose(f.df, len(y) - 2, rtol=1e-6)
    assert f.reml == pytest.approx(lmm.reml_criterion(y, X, X, site, np.zeros(3)), abs=1e-9)


def test_refuses_what_lme4_refuses():
    x = np.arange(6.0)
    X = np.column_stack([np.ones(6), x])
    with pytest.raises(ValueError, match="random effects"):
        lmm.lmer(np.arange(6.0), X, X, np.repeat([0, 1, 2], 2), ("a", "b"))
    with pytest.raises(ValueError, match="more than one level"):
        lmm.lmer(np.arange(6.0), X, X, np.zeros(6), ("a", "b"))


def test_bias_models_window_flags_and_no_warnings(caplog):
    d = pd.read_csv(DATA / "simulated_residuals.csv")
    r = pd.read_csv(DATA / "simulated_r_tight.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on stderr: every warning would fail here
        with caplog.at_level(logging.INFO, logger="abzflux.fire"):
            m = fire.fit_bias_models(d, alpha=0.05).set_index("month")
    # the 0-18 window: the rows R fitted
    assert (m.rows == r.groupby("month").rows.first()).all()
    assert (d.years_since_fire > 18).sum() > 0
    for mon in (1, 2, 4, 7):
        rr = r[r.month == mon].set_index("term")
        assert m.loc[mon, "slope"] == pytest.approx(rr.loc["years_since_fire", "estimate"], rel=1e-4)
        assert m.loc[mon, "slope_df"] == pytest.approx(rr.loc["years_since_fire", "df"], rel=1e-2)
        assert m.loc[mon, "intercept_p"] == pytest.approx(rr.loc["(Intercept)", "p"], abs=1e-3)
    assert m.singular.to_dict() == {k: bool(v) for k, v in r.groupby("month").singular.first().items()}
    assert m.converged.all()
    # significant: both p < alpha (months 2 and 7 in R's table; month 6 too: singular, still counted)
    assert sorted(m.index[m.significant]) == [2, 6, 7]
    assert sum("singular fit" in rec.message for rec in caplog.records) == int(m.singular.sum())
    # a wider window fits more rows
    m2 = fire.fit_bias_models(d, max_years_since_fire=None).set_index("month")
    assert (m2.rows >= m.rows).all() and (m2.rows > m.rows).any()


def test_month_too_small_is_reported_not_fitted(caplog):
    d = pd.DataFrame(
        {
            "site_id": ["a", "a", "b", "b"],
            "month": 6,
            "years_since_fire": [1.0, 2.0, 1.0, 3.0],
            "residual": [1, 2, 3, 5.0],
        }
    )
    with caplog.at_level(logging.WARNING, logger="abzflux.fire"):
        m = fire.fit_bias_models(d)
    assert not m.significant.any() and not m.converged.any()
    assert m.note.iloc[0].startswith("not fitted")
    assert "month 6: not fitted" in caplog.text
