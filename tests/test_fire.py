"""Fire (issue 7, first part): aggregation conserves emissions, the mixed model recovers a known
slope, the correction leaves unburned cells and other months unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import fire

TIMES = pd.date_range("2002-01-01", "2020-12-01", freq="MS")


def _fine_fire(seed=0, ny=6, nx=8):
    rng = np.random.default_rng(seed)
    em = rng.gamma(0.3, 20, (len(TIMES), ny, nx)) * (rng.random((len(TIMES), ny, nx)) < 0.05)
    bf = np.clip(em / 200, 0, 1)
    area = rng.uniform(0.8e6, 1.2e6, (ny, nx))
    ds = xr.Dataset({"fire_emissions": (("time", "y", "x"), em), "burned_fraction": (("time", "y", "x"), bf),
                     "cell_area": (("y", "x"), area)},
                    coords={"time": TIMES, "y": np.arange(ny)[::-1] * 1000.0, "x": np.arange(nx) * 1000.0})
    return ds


def test_aggregation_conserves_emissions_and_weights_burned_fraction():
    f = _fine_fire()
    c = fire.aggregate_fire(f, 2)
    assert c.sizes["y"] == 3 and c.sizes["x"] == 4
    fine_g = (f.fire_emissions * f.cell_area).sum(("y", "x"))
    coarse_g = (c.fire_emissions * c.cell_area).sum(("y", "x"))
    np.testing.assert_allclose(coarse_g, fine_g, rtol=1e-12)
    # one coarse cell by hand: area-weighted mean of its 4 fine cells
    blk = f.isel(y=slice(0, 2), x=slice(2, 4), time=7)
    want = float((blk.burned_fraction * blk.cell_area).sum() / blk.cell_area.sum())
    assert float(c.burned_fraction.isel(y=0, x=1, time=7)) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError):
        fire.aggregate_fire(f, 1.5)


def test_last_burn_year_and_fraction():
    bf = xr.DataArray(np.zeros((len(TIMES), 1, 3)), dims=("time", "y", "x"), coords={"time": TIMES})
    bf[(TIMES.year == 2004) & (TIMES.month == 7), 0, 0] = 0.5
    bf[(TIMES.year == 2011) & (TIMES.month == 6), 0, 0] = 0.25
    bf[(TIMES.year == 2011) & (TIMES.month == 8), 0, 0] = 0.25
    bf[(TIMES.year == 2019) & (TIMES.month == 5), 0, 1] = 0.8
    last, frac = fire.last_burn_year(bf, 2002, 2020)
    assert last.values.ravel()[:2].tolist() == [2011, 2019] and np.isnan(last.values.ravel()[2])
    assert frac.values.ravel().tolist() == [0.5, 0.8, 0.0]


def _residuals(intercept=12.0, slope=-1.5, n_sites=25, seed=3):
    """Simulated LOSO residuals at burned sites: site-specific intercepts and slopes around the
    fixed effects, months 5-7 with the effect, others pure noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sites):
        a, b = rng.normal(0, 3), rng.normal(0, 0.3)
        ysf0 = rng.integers(0, 10)
        for k in range(8):
            for month in range(1, 13):
                eff = month in (5, 6, 7)
                t = ysf0 + k
                res = (intercept + a + (slope + b) * t if eff else 0.0) + rng.normal(0, 2)
                rows.append({"site_id": f"S{s}", "month": month, "years_since_fire": float(t), "residual": res})
    return pd.DataFrame(rows)


def test_mixed_model_recovers_a_known_slope():
    m = fire.fit_bias_models(_residuals()).set_index("month")
    for mon in (5, 6, 7):
        assert m.loc[mon, "slope"] == pytest.approx(-1.5, abs=3 * m.loc[mon, "slope_se"])
        assert m.loc[mon, "intercept"] == pytest.approx(12.0, abs=3 * m.loc[mon, "intercept_se"])
        assert m.loc[mon, "significant"]
    assert not m.loc[1, "significant"] and m.loc[1, "sites"] == 25
    # the statsmodels fit itself: same numbers as calling MixedLM directly
    import statsmodels.formula.api as smf

    g = _residuals()
    g = g[g.month == 6]
    ref = smf.mixedlm("residual ~ years_since_fire", g, groups=g["site_id"], re_formula="~years_since_fire").fit(reml=True)
    assert m.loc[6, "slope"] == pytest.approx(ref.fe_params["years_since_fire"], rel=1e-10)


def test_correction_changes_only_burned_cells_in_significant_months():
    times = pd.date_range("2020-01-01", periods=12, freq="MS")
    nee = xr.DataArray(np.full((12, 2, 2), -10.0, np.float32), dims=("time", "y", "x"), coords={"time": times})
    last = xr.DataArray([[2010.0, np.nan], [2018.0, np.nan]], dims=("y", "x"))
    frac = xr.DataArray([[0.5, 0.0], [1.0, 0.0]], dims=("y", "x"))
    models = pd.DataFrame({"month": range(1, 13), "intercept": 10.0, "slope": -1.0,
                           "significant": [m in (5, 6, 7) for m in range(1, 13)]})
    out = fire.correct_nee(nee, models, last, frac, 2020)
    # cell (0,0): ysf 10 -> bias 0 ; cell (1,0): ysf 2 -> bias 8, full fraction
    assert float(out.sel(time="2020-06-01")[1, 0]) == pytest.approx(-10.0 + 8.0)
    assert float(out.sel(time="2020-06-01")[0, 0]) == pytest.approx(-10.0)
    assert np.array_equal(out[:, :, 1].values, nee[:, :, 1].values)  # never burned: unchanged
    assert np.array_equal(out.sel(time="2020-08-01").values, nee.sel(time="2020-08-01").values)
    out2 = fire.correct_nee(nee, models, last, frac, 2020, months=[8])
    assert float(out2.sel(time="2020-08-01")[0, 0]) == pytest.approx(-10.0 + 0.0 * 0.5)
    assert float(out2.sel(time="2020-08-01")[1, 0]) == pytest.approx(-2.0)
