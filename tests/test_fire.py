"""Fire (issue 7, first part): aggregation conserves emissions, the mixed model recovers a known
slope, the correction leaves unburned cells and other months unchanged."""

from __future__ import annotations

import logging

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
    ds = xr.Dataset(
        {
            "fire_emissions": (("time", "y", "x"), em),
            "burned_fraction": (("time", "y", "x"), bf),
            "cell_area": (("y", "x"), area),
        },
        coords={"time": TIMES, "y": np.arange(ny)[::-1] * 1000.0, "x": np.arange(nx) * 1000.0},
    )
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
    # the fit itself against R: tests/test_lmm.py


def test_correction_changes_only_burned_cells_in_significant_months():
    times = pd.date_range("2020-01-01", periods=12, freq="MS")
    nee = xr.DataArray(np.full((12, 2, 2), -10.0, np.float32), dims=("time", "y", "x"), coords={"time": times})
    last = xr.DataArray([[2010.0, np.nan], [2018.0, np.nan]], dims=("y", "x"))
    frac = xr.DataArray([[0.5, 0.0], [1.0, 0.0]], dims=("y", "x"))
    models = pd.DataFrame(
        {"month": range(1, 13), "intercept": 10.0, "slope": -1.0, "significant": [m in (5, 6, 7) for m in range(1, 13)]}
    )
    out = fire.correct_nee(nee, models, last, frac, 2020)
    # cell (0,0): ysf 10 -> bias 0 ; cell (1,0): ysf 2 -> bias 8, full fraction
    assert float(out.sel(time="2020-06-01")[1, 0]) == pytest.approx(-10.0 + 8.0)
    assert float(out.sel(time="2020-06-01")[0, 0]) == pytest.approx(-10.0)
    assert np.array_equal(out[:, :, 1].values, nee[:, :, 1].values)  # never burned: unchanged
    assert np.array_equal(out.sel(time="2020-08-01").values, nee.sel(time="2020-08-01").values)
    out2 = fire.correct_nee(nee, models, last, frac, 2020, months=[8])
    assert float(out2.sel(time="2020-08-01")[0, 0]) == pytest.approx(-10.0 + 0.0 * 0.5)
    assert float(out2.sel(time="2020-08-01")[1, 0]) == pytest.approx(-2.0)
    # the 0-18-year window: a cell burned 20 years before gets no correction, unless widened
    last20 = xr.DataArray([[2000.0, np.nan], [2018.0, np.nan]], dims=("y", "x"))
    out3 = fire.correct_nee(nee, models, last20, frac, 2020)
    assert float(out3.sel(time="2020-06-01")[0, 0]) == pytest.approx(-10.0)
    assert float(out3.sel(time="2020-06-01")[1, 0]) == pytest.approx(-2.0)
    out4 = fire.correct_nee(nee, models, last20, frac, 2020, max_years_since_fire=None)
    assert float(out4.sel(time="2020-06-01")[0, 0]) == pytest.approx(-10.0 + (10.0 - 20.0) * 0.5)


def test_run_writes_fire_tables_maps_and_bias_correction(study_run, fast_config, tmp_path):
    import json
    import shutil

    from abzflux.config import load_config
    from abzflux.context import Context
    from abzflux.steps.fire import run as stage_fire

    run, _ = study_run
    d = run / "fire"
    for f in (
        "emissions_by_zone.csv",
        "fire_vs_uptake.csv",
        "burned_cells.nc",
        "residual_diagnostics.csv",
        "bias_models.csv",
        "bias_correction.csv",
        "fire.json",
    ):
        assert (d / f).exists(), f
    w = pd.read_csv(d / "fire_vs_uptake.csv")
    assert (w.nee_fire == w.nee + w.fire).all()  # exactly, as stored
    assert (w.fire_exceeds_uptake == (w.fire > -w.nee)).all()
    m = pd.read_csv(d / "bias_models.csv")
    assert sorted(m.month) == list(range(1, 13)) and (m.sites >= 3).all()
    maps = xr.open_dataset(d / "burned_cells.nc", engine="h5netcdf")
    ly = maps.last_burn_year.values
    assert np.nanmin(ly) >= 2001 and np.nanmax(ly) <= 2020 and np.isfinite(ly).sum() > 10
    assert maps.last_burn_year.attrs.get("grid_mapping") == "spatial_ref"
    # forcing the paper's months: burned cells change in May-July, nothing else
    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("fire", "trends", "interpret", "bootstrap"))
    cfg = load_config(fast_config)
    cfg.fire.months = [5, 6, 7]
    stage_fire(Context(cfg=cfg, out=work))
    rep = json.loads((work / "fire" / "fire.json").read_text())
    assert rep["corrected_months"] == [5, 6, 7]
    bc = pd.read_csv(work / "fire" / "bias_correction.csv").set_index("zone")
    ann = pd.read_csv(work / "budgets_annual.csv")
    assert (
        bc.loc["domain", "nee_before"]
        == ann[(ann.flux == "nee") & (ann.zone == "domain") & (ann.year == 2020)].tg_c.item()
    )
    # the change by hand: 3 months x sum over burned cells of (a + b * years since burn) * fraction * area
    mods = pd.read_csv(work / "fire" / "bias_models.csv").set_index("month")
    cells = xr.open_dataset(work / "fire" / "burned_cells.nc", engine="h5netcdf")
    z = xr.open_dataset(fast_config.parent / "zones.nc", engine="h5netcdf")
    up = xr.open_zarr(work / "upscaled.zarr", consolidated=False)
    has = np.isfinite(up.nee.sel(time="2020-06-01").values)  # only cells with a prediction
    area = (z.land_fraction.fillna(0) * z.cell_area).values * has
    ysf = 2020 - cells.last_burn_year.values
    ysf = np.where(ysf <= 18, ysf, np.nan)  # the paper's 0-18-year window
    frac = cells.last_burn_fraction.values
    want = (
        sum(np.nansum((mods.loc[m, "intercept"] + mods.loc[m, "slope"] * ysf) * frac * area) for m in (5, 6, 7)) / 1e12
    )
    assert bc.loc["domain", "change"] == pytest.approx(want, rel=1e-5)
    assert abs(want) > 1  # the correction is not trivially zero on the twin
    assert rep["domain_nee_after"] == pytest.approx(rep["domain_nee_before"] + want, rel=1e-5)


def test_finer_fire_grid_is_aggregated_onto_the_analysis_grid(twin_dir, fast_config, tmp_path, caplog):
    from abzflux.config import load_config
    from abzflux.context import Context

    f = xr.open_zarr(twin_dir / "fire.zarr", consolidated=False).isel(time=slice(0, 24)).load()
    # split every cell into 2 x 2 finer cells with the same flux density: coarse values come back
    dx = float(f.x[1] - f.x[0])
    dy = float(f.y[1] - f.y[0])
    xs = np.sort(np.r_[f.x.values - dx / 4, f.x.values + dx / 4])
    ys = np.sort(np.r_[f.y.values - abs(dy) / 4, f.y.values + abs(dy) / 4])
    ys = ys[::-1] if dy < 0 else ys
    rep = {
        v: (("time", "y", "x"), np.repeat(np.repeat(f[v].values, 2, axis=1), 2, axis=2))
        for v in ("fire_emissions", "burned_fraction")
    }
    fine = xr.Dataset(rep, coords={"time": f.time.values, "y": ys, "x": xs})
    for v in rep:
        fine[v].attrs = dict(f[v].attrs)
    from abzflux.formats import write_crs

    fine = write_crs(fine, "EPSG:6931")
    fine.to_zarr(tmp_path / "fire_fine.zarr", consolidated=False)
    cfg = load_config(fast_config)
    cfg.inputs.fire = tmp_path / "fire_fine.zarr"
    ctx = Context(cfg=cfg, out=tmp_path)
    with caplog.at_level(logging.INFO, logger="abzflux.context"):
        agg = ctx.fire()
    assert "2x finer" in caplog.text
    assert agg.sizes["y"] == f.sizes["y"] and agg.sizes["x"] == f.sizes["x"]
    np.testing.assert_allclose(agg.fire_emissions.values, f.fire_emissions.values, rtol=1e-5, equal_nan=True)
    cfg.fire.first_year = 2002
    assert pd.DatetimeIndex(Context(cfg=cfg, out=tmp_path).fire().time.values).year.min() == 2002
