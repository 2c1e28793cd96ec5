"""Uncertainty methods and their calibration on twins (abzflux.uncertainty, abzflux.calibrate)."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux.budgets import add_extrapolation_sd
from abzflux.calibrate import coverage_summary, error_ratio, inside, score, summary_markdown
from abzflux.config import load_config
from abzflux.context import Context
from abzflux.errors import ConfigError
from abzflux.predictors import training_rows
from abzflux.steps.bootstrap import run as stage_bootstrap
from abzflux.steps.extrapolation import run as stage_extrapolation
from abzflux.uncertainty import (
    HALF_NORMAL,
    extrapolation_sd,
    fit_extrapolation,
    resample_rows,
    site_blocks,
    zone_extrapolation_sd,
)


# --------------------------------------------------------------------------- coverage arithmetic
def test_inside_and_ratio_known_cases():
    est = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    truth = np.array([10.0, 12.0, 13.0, 7.0, 14.0, 11.0, 10.0])
    sd = np.array([1.0, 2.0, 2.0, 1.0, 2.0, 0.0, np.nan])
    # errors 0, 2, 3, 3, 4, 1, 0 -> ratios 0, 1, 1.5, 3, 2, inf (SD 0, error 1), nan (no SD)
    np.testing.assert_array_equal(inside(est, truth, sd, 1), [True, True, False, False, False, False, False])
    np.testing.assert_array_equal(inside(est, truth, sd, 2), [True, True, True, False, True, False, False])
    np.testing.assert_array_equal(error_ratio(est, truth, sd), [0.0, 1.0, 1.5, 3.0, 2.0, np.inf, np.nan])
    assert error_ratio([5.0], [5.0], [0.0])[0] == 0.0  # no error, no SD: ratio 0 (but not "inside")


def test_coverage_summary_known_answer():
    # method a: errors 1, 3, 0.5, 5 against SD 2 -> ratios .5, 1.5, .25, 2.5; inside1 2/4, inside2 3/4
    # method b: errors 1, 1 against SD 0.5 -> ratios 2, 2; inside1 0, inside2 2/2
    df = pd.DataFrame(
        {
            "method": ["a"] * 4 + ["b"] * 2,
            "network": "realistic",
            "flux": "nee",
            "estimate": [0.0, 0.0, 0.0, 0.0, 1.0, -1.0],
            "truth": [1.0, -3.0, 0.5, 5.0, 0.0, 0.0],
            "sd": [2.0, 2.0, 2.0, 2.0, 0.5, 0.5],
        }
    )
    s = coverage_summary(score(df)).set_index("method")
    assert s.loc["a", "n"] == 4 and s.loc["b", "n"] == 2
    assert s.loc["a", "coverage1"] == 0.5 and s.loc["a", "coverage2"] == 0.75
    assert s.loc["b", "coverage1"] == 0.0 and s.loc["b", "coverage2"] == 1.0
    assert s.loc["a", "median_ratio"] == pytest.approx(1.0)  # median of .25 .5 1.5 2.5
    assert s.loc["a", "p90_ratio"] == pytest.approx(1.5 + 0.7 * (2.5 - 1.5))  # numpy linear quantile
    assert s.loc["a", "median_abs_error"] == pytest.approx(2.0)
    md = summary_markdown(s.reset_index())
    assert "| a | realistic | nee | 4 | 50% | 75% | 1.00 | 2.20 |" in md


# --------------------------------------------------------------------------- resampling
SITES = np.array(["A"] * 3 + ["B"] * 5 + ["C"] * 1 + ["D"] * 4 + ["E"] * 2)


def _counts(idx, labels):
    return pd.Series(labels[idx]).value_counts()


def test_site_bootstrap_draws_whole_sites():
    sizes = pd.Series(SITES).value_counts()
    for b in range(20):
        idx = resample_rows(SITES, "sites", np.random.default_rng(b))
        for s, c in _counts(idx, SITES).items():
            assert c % sizes[s] == 0  # a site's rows come all together (once per draw)
            per_row = pd.Series(idx[SITES[idx] == s]).value_counts()
            assert per_row.nunique() == 1 and len(per_row) == sizes[s]
        assert sum(_counts(idx, SITES)[s] // sizes[s] for s in _counts(idx, SITES).index) == 5  # 5 draws


def test_block_bootstrap_draws_whole_blocks():
    blocks = {"A": "0_0", "B": "0_0", "C": "1_0", "D": "1_0", "E": "2_2"}
    lab = np.array([blocks[s] for s in SITES], dtype=object)
    bsize = pd.Series(lab).value_counts()
    seen = set()
    for b in range(20):
        idx = resample_rows(SITES, "blocks", np.random.default_rng(b), blocks)
        c = _counts(idx, lab)
        for blk, n in c.items():
            assert n % bsize[blk] == 0
        assert sum(c[k] // bsize[k] for k in c.index) == 3  # 3 blocks drawn
        seen |= set(c.index)
    assert seen == {"0_0", "1_0", "2_2"}


def test_row_bootstrap_is_the_papers():
    rng = np.random.default_rng(7)
    idx = resample_rows(SITES, "rows", np.random.default_rng(7))
    np.testing.assert_array_equal(idx, rng.integers(0, len(SITES), len(SITES)))


def test_site_blocks_from_projected_coordinates():
    lab = site_blocks(np.array([0.0, 999e3, 1000e3, -1.0]), np.array([0.0, 10.0, 0.0, 2500e3]), 1000)
    assert list(lab) == ["0_0", "0_0", "1_0", "-1_2"]


# --------------------------------------------------------------------------- extrapolation term
def test_extrapolation_model_recovers_slope_and_grows_with_di():
    d = np.linspace(0.0, 1.0, 21)
    m = fit_extrapolation(d, 2.0 + 6.0 * d)
    assert m["a"] == pytest.approx(2.0) and m["b"] == pytest.approx(6.0) and m["di_ref"] == pytest.approx(0.5)
    sd = extrapolation_sd(np.array([0.0, 0.5, 0.75, 1.5, np.nan]), m)
    np.testing.assert_allclose(sd[:4], HALF_NORMAL * 6.0 * np.array([0.0, 0.0, 0.25, 1.0]))
    assert np.isnan(sd[4])
    assert np.all(np.diff(sd[:4]) >= 0) and sd[3] > sd[2] > 0
    flat = fit_extrapolation(d, 5.0 - 3.0 * d)  # error falling with DI: no growth term
    assert flat["b"] == 0.0
    assert np.all(extrapolation_sd(np.array([0.0, 2.0]), flat) == 0.0)


def test_extrapolation_budget_terms_add_fully_correlated():
    ext = pd.DataFrame(
        {
            "zone": "domain",
            "flux": "nee",
            "year": [2001] * 12 + [2002] * 12,
            "month": list(range(1, 13)) * 2,
            "tg_c_sd_extrap": [1.0] * 12 + [2.0] * 12,
        }
    )
    ann = pd.DataFrame(
        {
            "zone": "domain",
            "flux": ["nee", "nee", "nee_fire", "nee_derived"],
            "year": [2001, 2002, 2001, 2001],
            "tg_c_sd": [5.0, 5.0, 5.0, 4.0],
        }
    )
    p_sd = pd.DataFrame(
        {"zone": ["domain", "domain"], "flux": ["nee", "nee_derived"], "period_mean_tg_c_sd": [3.0, 2.0]}
    )
    a, p = add_extrapolation_sd(ann, p_sd, ext)
    a = a.set_index(["flux", "year"])
    assert a.loc[("nee", 2001), "tg_c_sd_extrap"] == 12.0 and a.loc[("nee", 2002), "tg_c_sd_extrap"] == 24.0
    assert a.loc[("nee", 2001), "tg_c_sd_total"] == pytest.approx(13.0)  # sqrt(5² + 12²)
    assert a.loc[("nee_fire", 2001), "tg_c_sd_total"] == pytest.approx(13.0)
    assert a.loc[("nee_derived", 2001), "tg_c_sd_total"] == 4.0
    p = p.set_index("flux")
    assert p.loc["nee", "period_mean_tg_c_sd_extrap"] == 18.0  # mean of 12 and 24
    assert p.loc["nee", "period_mean_tg_c_sd_total"] == pytest.approx(np.hypot(3.0, 18.0))


# --------------------------------------------------------------------------- config
BASE = """[inputs]
sites = "s.csv"
predictors = "p.zarr"
zones = "z.nc"
"""


@pytest.fixture
def proj(tmp_path):
    for n in ("s.csv", "z.nc"):
        (tmp_path / n).write_text("x")
    (tmp_path / "p.zarr").mkdir()
    return tmp_path


def test_uncertainty_config_defaults_and_values(proj):
    (proj / "c.toml").write_text(BASE)
    c = load_config(proj / "c.toml")
    assert (c.uncertainty.method, c.uncertainty.extrapolation) == ("rows", False)  # the paper's default
    (proj / "c.toml").write_text(BASE + '[uncertainty]\nmethod = "blocks"\nblock_km = 500\nextrapolation = true\n')
    c = load_config(proj / "c.toml")
    assert (c.uncertainty.method, c.uncertainty.block_km, c.uncertainty.extrapolation) == ("blocks", 500.0, True)
    assert c.to_dict()["uncertainty"]["method"] == "blocks"


@pytest.mark.parametrize(
    "body, parts",
    [
        ('method = "site"', ("uncertainty.method", "'site'", "rows")),
        ("block_km = 0", ("uncertainty.block_km", "> 0")),
        ("block_km = -5.0", ("uncertainty.block_km",)),
        ('extrapolation = "yes"', ("uncertainty.extrapolation", "true or false")),
        ("blocks = 3", ("uncertainty.blocks", "unknown key")),
    ],
)
def test_uncertainty_config_errors(proj, body, parts):
    (proj / "c.toml").write_text(BASE + "[uncertainty]\n" + body + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(proj / "c.toml")
    for p in parts:
        assert p in str(e.value)


# --------------------------------------------------------------------------- stages on the shared run
@pytest.fixture(scope="module")
def run_copy(study_run, fast_config, tmp_path_factory):
    out0, _ = study_run
    out = tmp_path_factory.mktemp("unc") / "run"
    out.mkdir()
    for item in ("sites.parquet", "models", "cv"):
        (shutil.copytree if (out0 / item).is_dir() else shutil.copy2)(out0 / item, out / item)
    return out, load_config(fast_config)


@pytest.mark.parametrize("method", ["sites", "blocks"])
def test_bootstrap_stage_methods(run_copy, method):
    out, cfg = run_copy
    cfg = replace(
        cfg,
        forest=replace(cfg.forest, n_bootstrap=2, n_estimators=5),
        uncertainty=replace(cfg.uncertainty, method=method, block_km=1500.0),
    )
    ctx = Context(cfg=cfg, out=out)
    stage_bootstrap(ctx)
    rec = json.loads((out / "bootstrap" / "bootstrap.json").read_text())
    assert rec["method"] == method
    table = pd.read_parquet(out / "sites.parquet")
    rows = training_rows(table, "nee")
    size = rows.site_id.value_counts()
    for m in rec["nee"]:
        assert (out / "bootstrap" / f"nee_{m['member']:02d}.npz").exists()
        assert m["distinct_sites"] < rows.site_id.nunique()  # drawn with replacement: some sites left out
    # the members are the same draws as resample_rows makes: whole sites / blocks
    labels = None
    if method == "blocks":
        pred = ctx.predictors()
        st = table.drop_duplicates("site_id")
        labels = dict(zip(st.site_id, site_blocks(pred.x.values[st.ix], pred.y.values[st.iy], 1500.0)))
    r = rows.reset_index(drop=True)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.run.seed, 1000]))  # member 0's draw
    idx = resample_rows(r.site_id.to_numpy(), method, rng, labels)
    assert rec["nee"][0]["rows"] == len(idx)
    got = r.site_id.to_numpy()[idx]
    for s, c in pd.Series(got).value_counts().items():
        assert c % size[s] == 0


def test_extrapolation_stage_maps_and_zone_sums(run_copy, monkeypatch):
    import abzflux.uncertainty as unc

    out, cfg = run_copy
    # three years of the twin's twenty: the maps are made month by month
    cfg = replace(
        cfg, uncertainty=replace(cfg.uncertainty, extrapolation=True), run=replace(cfg.run, years="2001-2003")
    )
    ctx = Context(cfg=cfg, out=out)
    fitted = {}

    def fit(d, e):  # the real fit, recorded; the maps then use a known slope so that they are not all 0
        fitted[len(fitted)] = fit_extrapolation(d, e)
        return {"a": 1.0, "b": 10.0, "di_ref": 0.0, "n_sites": len(d)}

    monkeypatch.setattr(unc, "fit_extrapolation", fit)
    stage_extrapolation(ctx)
    assert len(fitted) == 3 and all(m["b"] >= 0 and m["n_sites"] >= 3 for m in fitted.values())
    model = json.loads((out / "uncertainty" / "extrapolation.json").read_text())
    assert set(model) == {"gpp", "reco", "nee"} and model["nee"]["b"] == 10.0
    se = pd.read_csv(out / "uncertainty" / "site_errors.csv")
    assert (se.abs_error >= 0).all() and se.di.notna().all()
    ds = xr.open_zarr(out / "uncertainty" / "extrapolation_sd.zarr", consolidated=False)
    assert ds.sizes["time"] == 12 * (ctx.years()[1] - ctx.years()[0] + 1)
    # CF-clean (docs/formats.md §6): monthly amounts over calendar-month bounds, consolidated
    assert ds.nee_extrap_sd.attrs["units"] == "g m-2" and ds.nee_extrap_sd.attrs["cell_methods"] == "time: sum"
    assert (ds.time_bnds.values[:, 0] == ds.time.values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(out / "uncertainty" / "extrapolation_sd.zarr")
    ext = zone_extrapolation_sd(ds, ctx.zones(), ctx.veg())
    # the zone term is the area-weighted sum of the cell SDs (fully correlated), by hand for one month
    from abzflux.budgets import zone_weights

    w = zone_weights(ctx.zones()).sel(zone="domain").values
    sd5 = ds.nee_extrap_sd.isel(time=5).values
    assert np.nanmin(sd5) >= 0 and np.nanmax(sd5) > 0  # sqrt(pi/2) * 10 * DI
    hand = float(np.nansum(sd5 * w)) / 1e12
    got = ext[(ext.zone == "domain") & (ext.flux == "nee")].sort_values("time").tg_c_sd_extrap.iloc[5]
    assert got == pytest.approx(hand, rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------- report
def test_report_names_the_method_and_its_calibration(tmp_path, monkeypatch):
    import abzflux.report as R

    run = tmp_path / "run"
    run.mkdir()
    (run / "budgets_annual.csv").write_text("zone,flux,year,tg_c\ndomain,nee,2001,-1.0\n")
    (run / "run.json").write_text(
        json.dumps({"config": {"uncertainty": {"method": "blocks", "block_km": 800.0, "extrapolation": False}}})
    )
    cal = pd.DataFrame(
        {
            "method": ["blocks", "rows"],
            "network": "realistic",
            "flux": "nee",
            "n": [40, 40],
            "coverage1": [0.55, 0.2],
            "coverage2": [0.93, 0.4],
            "median_ratio": [0.9, 3.1],
            "p90_ratio": [2.1, 7.0],
        }
    )
    monkeypatch.setattr(R, "shipped_calibration", lambda name="calibration_summary.csv": (cal, "made by the test"))
    (it,) = R.uncertainty_method(R.RunData(run))
    assert "spatial blocks" in it.caption and "800 km" in it.caption and "made by the test" in it.caption
    assert "93%" in it.table_html and "55%" in it.table_html and "40%" not in it.table_html  # only this method
    # with the network term and centred/biased twins, and the budget trends' calibration
    (run / "run.json").write_text(
        json.dumps({"config": {"uncertainty": {"method": "blocks", "block_km": 800.0, "network": True}}})
    )
    net = cal.assign(method="blocks+network", site_effects=["centred", "biased"], coverage2=[0.91, 0.47])
    trend = net.assign(coverage2=[0.88, 0.66], n=[20, 20])
    tables = {"calibration_summary.csv": (net, "budgets"), "calibration_trends_summary.csv": (trend, "trends")}
    monkeypatch.setattr(R, "shipped_calibration", lambda name="calibration_summary.csv": tables[name])
    (it,) = R.uncertainty_method(R.RunData(run))
    assert "blocks+network" in it.caption and "budget trend" in it.caption and "centred" in it.caption
    for v in ("91%", "47%", "88%", "66%", "budget trend", "annual budget", "centred", "biased"):
        assert v in it.table_html, v
    monkeypatch.setattr(R, "shipped_calibration", lambda name="calibration_summary.csv": (None, ""))
    (it,) = R.uncertainty_method(R.RunData(run))
    assert "No calibration" in it.caption


def test_shipped_calibration_covers_every_method():
    import abzflux.report as R

    cal, prov = R.shipped_calibration()
    assert cal is not None and "abzflux calibrate" in prov
    assert {"rows", "sites", "blocks"} <= set(cal.method)
    assert {"realistic", "uniform"} <= set(cal.network)
    assert cal.coverage2.between(0, 1).all() and (cal.coverage2 >= cal.coverage1).all()


# --------------------------------------------------------------------------- budget trends
def _linear(zone, flux, a, b, years=range(2011, 2021), **extra):
    return pd.DataFrame([{"zone": zone, "flux": flux, "year": y, "tg_c": a + b * (y - 2011), **extra} for y in years])


def test_trend_scoring_known_answer():
    method = "zhang"
    from abzflux.calibrate import annual_trends, score_trends, trend_sd

    truth = pd.concat([_linear("domain", "nee", -900, 2.0), _linear("tundra", "gpp", 300, -4.0)])
    est = pd.concat([_linear("domain", "nee", -700, 3.0), _linear("tundra", "gpp", 320, 2.0)])
    # members: slopes estimate + (-1, 0, +1) (domain NEE) and + (-3, 0, +3) (tundra GPP): SD 1 and 3
    members = pd.concat(
        [_linear("domain", "nee", -700, 3.0 + d, member=k) for k, d in enumerate((-1, 0, 1))]
        + [_linear("tundra", "gpp", 320, 2.0 + d, member=k) for k, d in enumerate((-3, 0, 3))]
    )
    sd = trend_sd(members, method).set_index(["zone", "flux"]).slope_sd
    assert sd.to_dict() == pytest.approx({("domain", "nee"): 1.0, ("tundra", "gpp"): 3.0})
    t = score_trends(annual_trends(est, method=method), annual_trends(truth, method=method), sd.reset_index())
    t = t.set_index(["zone", "flux"])
    d, g = t.loc[("domain", "nee")], t.loc[("tundra", "gpp")]
    assert (d.truth, d.estimate, d.sd, d.error, d.error_pct) == pytest.approx((2.0, 3.0, 1.0, 1.0, 50.0))
    assert d.inside1 and d.inside2 and d.ratio == pytest.approx(1.0)  # bounds included
    # GPP: +2 against −4 (error 6 = 2 SD, 150 % of |−4|)
    assert (g.truth, g.estimate, g.error, g.error_pct, g.ratio) == pytest.approx((-4.0, 2.0, 6.0, 150.0, 2.0))
    assert not g.inside1 and g.inside2
    assert (d.first_year, d.last_year) == (2011, 2020)


@pytest.mark.parametrize("method", ["zhang", "yuepilon"])
def test_trend_of_a_noisy_series_is_the_trends_stage_slope(method):
    from abzflux.calibrate import annual_trends
    from abzflux.trends import budget_trends

    rng = np.random.default_rng(4)
    d = pd.concat(
        [
            pd.DataFrame({"zone": z, "flux": "nee", "year": np.arange(2011, 2021), "tg_c": rng.normal(0, 10, 10)})
            for z in ("domain", "tundra")
        ]
    )
    mine = annual_trends(d, method=method).set_index("zone").slope
    stage = budget_trends(d, method).set_index("zone").slope
    assert mine.to_dict() == pytest.approx(stage.to_dict(), rel=1e-12)
    assert mine.abs().min() > 0


def test_member_annual_sums_whole_years_only():
    from abzflux.calibrate import member_annual

    rows = [
        {"member": m, "zone": "domain", "flux": "gpp", "year": y, "month": mo, "tg_c": float(m + mo)}
        for m in (0, 1)
        for y, months in ((2019, range(1, 13)), (2020, range(1, 7)))
        for mo in months
    ]
    a = member_annual(pd.DataFrame(rows))
    assert a.year.unique().tolist() == [2019]  # 2020 has 6 months
    assert a.tg_c.tolist() == [78.0, 90.0]  # sum 1..12 = 78; member 1 adds 12


def test_twin_rows_score_each_error_term_in_quadrature(tmp_path):
    from abzflux.calibrate import twin_rows
    from abzflux.layout import RunLayout

    ann = pd.DataFrame(
        {
            "zone": ["domain", "tundra"],
            "flux": ["nee", "gpp"],
            "year": [2020, 2020],
            "tg_c": [-500.0, 300.0],
            "tg_c_sd": [3.0, 5.0],
            "tg_c_sd_extrap": [4.0, np.nan],  # no extrapolation term for tundra GPP: counted as 0
            "tg_c_sd_network": [12.0, 12.0],
        }
    )
    ann["tg_c_sd_total"] = np.sqrt(ann.tg_c_sd**2 + ann.tg_c_sd_extrap.fillna(0) ** 2 + ann.tg_c_sd_network**2)
    ann.to_csv(RunLayout(tmp_path).budgets_annual, index=False)
    truth = pd.DataFrame({"zone": ["domain", "tundra"], "flux": ["nee", "gpp"], "year": 2020, "tg_c": [-512.0, 300.0]})
    meta = {"twin": "t", "network": "uniform", "site_effects": "centred", "seed": 1}
    d = twin_rows(tmp_path, truth, "sites", meta).set_index(["method", "zone"])
    sd = d.sd.to_dict()
    assert sd[("sites", "domain")] == 3.0
    assert sd[("sites+extrap", "domain")] == pytest.approx(5.0)  # sqrt(9 + 16)
    assert sd[("sites+network", "domain")] == pytest.approx(np.sqrt(9 + 144))
    assert sd[("sites+extrap+network", "domain")] == pytest.approx(13.0)  # sqrt(9 + 16 + 144): the total
    assert sd[("sites+extrap", "tundra")] == pytest.approx(5.0)
    # domain NEE misses by 12: outside ±2 SD of the bootstrap (6), inside ±1 SD with the network term
    assert not d.loc[("sites", "domain"), "inside2"] and d.loc[("sites+network", "domain"), "inside1"]
    assert d.loc[("sites+extrap+network", "domain"), "ratio"] == pytest.approx(12 / 13)


def test_twin_rows_score_the_network_term_with_and_without_its_distance_part(tmp_path):
    from abzflux.calibrate import has_distance_part, twin_rows
    from abzflux.layout import RunLayout

    lay = RunLayout(tmp_path)
    # two replicates for domain NEE 2020: errors 10 and -20, of which the distance part 6 and -8
    e = pd.DataFrame(
        {
            "replicate": [0, 1],
            "zone": "domain",
            "year": 2020,
            "flux": "nee",
            "estimate": 0.0,
            "truth": 0.0,
            "distance_error": [6.0, -8.0],
            "error": [10.0, -20.0],
        }
    )
    lay.network.mkdir()
    e.to_parquet(lay.network_errors)
    rms_all, rms_local = np.sqrt((100 + 400) / 2), np.sqrt((16 + 144) / 2)
    ann = pd.DataFrame(
        {"zone": ["domain"], "flux": ["nee"], "year": [2020], "tg_c": [-500.0], "tg_c_sd": [3.0]}
    ).assign(tg_c_sd_network=rms_all)
    ann.to_csv(lay.budgets_annual, index=False)
    truth = pd.DataFrame({"zone": ["domain"], "flux": ["nee"], "year": [2020], "tg_c": [-512.0]})
    meta = {"twin": "t", "network": "uniform", "site_effects": "centred", "seed": 1}
    d = twin_rows(tmp_path, truth, "rows", meta).set_index("method")
    assert d.loc["rows+network+dist", "sd"] == pytest.approx(np.hypot(3.0, rms_all))
    assert d.loc["rows+network", "sd"] == pytest.approx(np.hypot(3.0, rms_local))
    assert set(d.index) == {"rows", "rows+network", "rows+network+dist"}
    assert has_distance_part(tmp_path)
    # without a distance part (a run with network_distance = false): one +network variant, the budgets'
    e.assign(distance_error=0.0).to_parquet(lay.network_errors)
    d = twin_rows(tmp_path, truth, "rows", meta).set_index("method")
    assert set(d.index) == {"rows", "rows+network"}
    assert d.loc["rows+network", "sd"] == pytest.approx(np.hypot(3.0, rms_all))
    assert not has_distance_part(tmp_path)
    e.drop(columns="distance_error").to_parquet(lay.network_errors)  # errors from before the column
    assert not has_distance_part(tmp_path)


def test_cli_calibrate_refuses_an_unknown_cv_mode(tmp_path):
    from typer.testing import CliRunner

    from abzflux.cli import app

    r = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path / "cal"), "--cv", "kfold"])
    assert r.exit_code == 2 and "--cv: loso or site_oob" in r.output
    assert not (tmp_path / "cal").exists()
