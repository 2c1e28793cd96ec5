"""The network-simulation error term (abzflux.network, steps/network.py; docs/uncertainty.md)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from abzflux import network as net
from abzflux.budgets import add_network_sd
from abzflux.config import load_config
from abzflux.context import Context


# --------------------------------------------------------------------------- residual model
def simulated_residuals(rng, n_sites=400, sd_site=3.0, sd_noise=2.0, field=None, method="EC"):
    """Residuals with a known site effect and noise (unbalanced: 3-30 rows per site), months
    6-8 only (s(month) = 1 for all three when they share one scale)."""
    n = rng.integers(3, 31, n_sites)
    site = np.repeat(np.arange(n_sites), n)
    u = rng.normal(0, sd_site, n_sites)
    r = u[site] + rng.normal(0, sd_noise, len(site))
    xy = rng.uniform(0, 4e6, (n_sites, 2))
    if field is not None:
        r = r + field(xy)[site]
    return pd.DataFrame(
        {
            "site_id": [f"S{i:03d}" for i in site],
            "method": method,
            "month": rng.integers(6, 9, len(site)),
            "x": xy[site, 0],
            "y": xy[site, 1],
            "residual": r,
        }
    )


def test_anova_recovers_known_components():
    rng = np.random.default_rng(1)
    res = simulated_residuals(rng)
    a = net.anova_components(res.residual, res.site_id)
    assert np.sqrt(a["var_site"]) == pytest.approx(3.0, rel=0.1)
    assert np.sqrt(a["var_noise"]) == pytest.approx(2.0, rel=0.05)
    assert a["n_sites"] == 400 and a["n_rows"] == len(res)


def test_anova_by_hand():
    # two sites: (1, 3) and (5, 7, 9), grand mean 5: MSW = (2 + 8) / 3; MSB = (2*(2-5)^2 + 3*(7-5)^2) / 1
    r = np.array([1.0, 3, 5, 7, 9])
    s = np.array(["a", "a", "b", "b", "b"])
    a = net.anova_components(r, s)
    msw, msb = 10 / 3, 2 * 3**2 + 3 * 2**2
    n0 = 5 - (4 + 9) / 5
    assert a["var_noise"] == pytest.approx(msw)
    assert a["var_site"] == pytest.approx((msb - msw) / n0)


def test_seasonal_scale_by_hand():
    month = np.array([1] * 20 + [7] * 20 + [8] * 5)
    r = np.array([1.0] * 20 + [3.0] * 20 + [5.0] * 5)
    s = net.seasonal_scale(month, r)
    overall = np.sqrt((20 * 1 + 20 * 9 + 5 * 25) / 45)
    assert s[0] == pytest.approx(1 / overall) and s[6] == pytest.approx(3 / overall)
    # months with fewer than 20 rows (August here, and the empty ones) take the smallest scale
    assert s[7] == pytest.approx(1 / overall) and s[3] == pytest.approx(1 / overall)


def test_method_groups():
    assert list(net.method_group(["EC", "chamber", None, "Chamber", "other", np.nan])) == [
        "EC",
        "chamber",
        "other",
        "chamber",
        "other",
        "other",
    ]


def test_empirical_variogram_by_hand():
    # three sites on a line at 0, 1, 3 km: pairs (0,1) d=1, (1,2) d=2, (0,2) d=3
    vg = net.empirical_variogram([0, 1000, 3000], [0, 0, 0], [0.0, 2.0, 5.0], n_bins=1, max_dist=3500)
    assert vg.pairs.iloc[0] == 3
    assert vg.gamma.iloc[0] == pytest.approx((0.5 * 4 + 0.5 * 9 + 0.5 * 25) / 3)
    assert vg.h.iloc[0] == pytest.approx(2000.0)


def test_exponential_fit_recovers_parameters():
    h = np.linspace(50e3, 2000e3, 12)
    vg = pd.DataFrame({"h": h, "gamma": net.exponential_variogram(h, 4.0, 9.0, 400e3), "pairs": 100})
    fit = net.fit_exponential(vg, n_ranges=400)
    assert fit["nugget"] == pytest.approx(4.0, rel=0.03)
    assert fit["psill"] == pytest.approx(9.0, rel=0.03)
    assert fit["range"] == pytest.approx(400e3, rel=0.03)
    colocated = pd.DataFrame({"h": [0.0, 0.0, 0.0], "gamma": [1.0, 2.0, 3.0], "pairs": [1, 1, 2]})
    f0 = net.fit_exponential(colocated)  # co-located sites only: no range to fit
    assert f0["psill"] == 0.0 and f0["nugget"] == pytest.approx(2.25)
    flat = vg.assign(gamma=5.0)
    f2 = net.fit_exponential(flat)
    assert f2["psill"] == pytest.approx(0.0, abs=1e-9) and f2["nugget"] == pytest.approx(5.0)


def test_exponential_fit_with_co_located_sites():
    # sites sharing a grid cell are at distance 0: the first bin's mean distance is 0
    h = np.r_[0.0, np.linspace(50e3, 2000e3, 12)]
    vg = pd.DataFrame({"h": h, "gamma": net.exponential_variogram(h, 4.0, 9.0, 400e3), "pairs": 100})
    fit = net.fit_exponential(vg, n_ranges=400)
    assert fit["range"] == pytest.approx(400e3, rel=0.03) and fit["psill"] == pytest.approx(9.0, rel=0.03)


def test_residual_model_splits_field_and_site_effect():
    # site means = a smooth field (SD 2, range 500 km) + a site effect (SD 1.5) + noise (SD 2)
    rng = np.random.default_rng(3)
    g = net.gaussian_field(80, 80, 50e3, 50e3, 2.0, 500e3, np.random.default_rng(4))

    def field(xy):
        return g[(xy[:, 1] // 50e3).astype(int), (xy[:, 0] // 50e3).astype(int)]

    res = simulated_residuals(rng, n_sites=600, sd_site=1.5, sd_noise=2.0, field=field)
    m = net.fit_residual_model(res)
    ec = m["methods"]["EC"]
    assert ec["sd_noise"] == pytest.approx(2.0, rel=0.05)
    # the site means' variance beyond noise is split between the field and the site effect
    assert ec["sd_between"] ** 2 == pytest.approx(m["field_sd"] ** 2 + ec["sd_site"] ** 2, rel=1e-6)
    assert ec["sd_between"] == pytest.approx(np.hypot(float(field(np.c_[res.x, res.y]).std()), 1.5), rel=0.15)
    assert m["field_sd"] > 1.0 and ec["sd_site"] < 2.0  # a field is found, not everything a site effect
    assert 100e3 < m["field_range_m"] < 2000e3
    # a group without sites (chamber here) draws like the pooled residuals
    assert m["methods"]["chamber"]["n_sites"] == 0 and m["methods"]["chamber"]["sd_noise"] > 0


def test_draws_reproduce_the_fitted_variances():
    """Residuals drawn from a fitted model, refitted, give back the model's SDs (within the
    sampling error of 500 sites: a wrong scale or a per-row site effect would fail)."""
    rng = np.random.default_rng(5)
    res = pd.concat(
        [
            simulated_residuals(rng, 250, 3.0, 2.0, method="EC"),
            simulated_residuals(rng, 250, 1.0, 4.0, method="chamber").assign(site_id=lambda d: "C" + d.site_id),
        ],
        ignore_index=True,
    )
    res["month"] = rng.integers(1, 13, len(res))
    res["residual"] *= np.where(res.month.isin([6, 7, 8]), 2.0, 0.5)  # a seasonal scale to recover
    m = net.fit_residual_model(res)
    _, codes = np.unique(res.site_id, return_inverse=True)
    groups = net.method_group(res.method)
    s = np.asarray(m["season"])[res.month.to_numpy() - 1]
    d = s * net.draw_errors(m, codes, groups, np.random.default_rng(6))
    m2 = net.fit_residual_model(res.assign(residual=d))
    for g in ("EC", "chamber"):
        assert m2["methods"][g]["sd_noise"] == pytest.approx(m["methods"][g]["sd_noise"], rel=0.06)
        assert m2["methods"][g]["sd_between"] == pytest.approx(np.hypot(m["methods"][g]["sd_site"], 0), rel=0.15)
    # in units of s(month): the ratios of the simulated SDs
    assert m["methods"]["EC"]["sd_between"] / m["methods"]["chamber"]["sd_between"] == pytest.approx(3.0, rel=0.2)
    assert m["methods"]["chamber"]["sd_noise"] / m["methods"]["EC"]["sd_noise"] == pytest.approx(2.0, rel=0.06)
    assert np.allclose(m2["season"], m["season"], rtol=0.08)
    # and in flux units: the drawn residuals' SD per season and method is the data's
    for g in ("EC", "chamber"):
        for summer in (True, False):
            sel = (res.method == g).to_numpy() & (res.month.isin([6, 7, 8]).to_numpy() == summer)
            assert d[sel].std() == pytest.approx(res.residual[sel].std(), rel=0.1)
    assert m["season"][6] / m["season"][0] == pytest.approx(4.0, rel=0.08)


def test_site_effect_is_one_per_site():
    m = {"methods": {"EC": {"sd_site": 1.0, "sd_noise": 0.0}, "chamber": {"sd_site": 0.0, "sd_noise": 0.0}}}
    codes = np.array([0, 0, 1, 1, 1, 2])
    groups = np.array(["EC", "EC", "EC", "EC", "EC", "chamber"], dtype=object)
    d = net.draw_errors(m, codes, groups, np.random.default_rng(0))
    assert d[0] == d[1] and d[2] == d[3] == d[4] and d[0] != d[2] and d[5] == 0.0


# --------------------------------------------------------------------------- random field
def test_gaussian_field_variance_and_variogram():
    rng = np.random.default_rng(7)
    sd, rng_m, dx = 2.0, 5 * 10e3, 10e3
    draws = np.stack([net.gaussian_field(40, 50, dx, dx, sd, rng_m, rng) for _ in range(300)])
    assert draws.var(axis=0).mean() == pytest.approx(sd**2, rel=0.05)
    assert abs(draws.mean()) < 0.1
    for lag in (1, 5, 15):
        cov = (draws[:, :, :-lag] * draws[:, :, lag:]).mean()
        assert cov / sd**2 == pytest.approx(np.exp(-lag * dx / rng_m), abs=0.04)
    vert = (draws[:, :-5, :] * draws[:, 5:, :]).mean()  # isotropic
    assert vert / sd**2 == pytest.approx(np.exp(-1), abs=0.04)
    assert not net.gaussian_field(4, 4, dx, dx, 0.0, rng_m, rng).any()
    assert not net.gaussian_field(4, 4, dx, dx, 1.0, float("nan"), rng).any()


# --------------------------------------------------------------------------- summaries and combination
def errors_table():
    # two replicates, one zone, two years; errors by hand
    return pd.DataFrame(
        {
            "replicate": [0, 0, 1, 1],
            "zone": "domain",
            "year": [2001, 2002, 2001, 2002],
            "flux": "nee",
            "estimate": [10.0, 12.0, 4.0, 6.0],
            "truth": [7.0, 8.0, 5.0, 4.0],
        }
    ).assign(error=lambda d: d.estimate - d.truth)


def test_error_summaries_by_hand():
    e = errors_table()  # errors: rep0 (3, 4), rep1 (-1, 2)
    s = net.error_summary(e).set_index("year")
    assert s.loc[2001, "mean_error"] == 1.0 and s.loc[2001, "rms_error"] == pytest.approx(np.sqrt(5))
    assert s.loc[2001, "sd_error"] == pytest.approx(np.std([3, -1], ddof=1))
    p = net.period_summary(e).iloc[0]  # period means 3.5 and 0.5
    assert p.mean_error == 2.0 and p.rms_error == pytest.approx(np.sqrt((3.5**2 + 0.5**2) / 2))


def test_trend_errors_and_trend_term_by_hand():
    yrs = np.arange(2001, 2011)
    e = pd.DataFrame(
        {
            "replicate": np.repeat([0, 1], 10),
            "zone": "domain",
            "year": np.tile(yrs, 2),
            "flux": "nee",
            "estimate": np.r_[2.0 * (yrs - 2001), 5.0 - 1.0 * (yrs - 2001)],
            "truth": np.r_[1.0 * (yrs - 2001), 0.0 * yrs],
        }
    )
    t = net.trend_errors(e).set_index("replicate")
    assert t.loc[0, "error"] == pytest.approx(1.0) and t.loc[1, "error"] == pytest.approx(-1.0)
    bt = pd.DataFrame(
        {
            "zone": ["domain", "domain"],
            "flux": ["nee", "fire"],
            "slope": [2.0, 1.0],
            "lbound": [1.0, 0.5],
            "ubound": [4.0, 2.0],
        }
    )
    out = net.add_trend_term(bt, t.reset_index()).set_index("flux")
    z = 1.959963984540054
    assert out.loc["nee", "slope_sd_network"] == pytest.approx(1.0)
    assert out.loc["nee", "lbound_total"] == pytest.approx(2.0 - np.hypot(1.0, z))
    assert out.loc["nee", "ubound_total"] == pytest.approx(2.0 + np.hypot(2.0, z))
    assert out.loc["fire", "lbound_total"] == 0.5 and out.loc["fire", "ubound_total"] == 2.0


def test_budget_total_adds_the_network_term():
    ann = pd.DataFrame(
        {
            "zone": "domain",
            "flux": ["nee", "nee_fire", "gpp", "fire"],
            "year": 2001,
            "tg_c": 0.0,
            "tg_c_sd": [3.0, 3.0, 5.0, 1.0],
            "tg_c_sd_extrap": [4.0, 4.0, np.nan, np.nan],
        }
    )
    p_sd = pd.DataFrame(
        {"zone": "domain", "flux": ["nee", "nee_fire", "gpp", "fire"], "period_mean_tg_c_sd": [1.0, 1.0, 2.0, 0.5]}
    )
    summ = pd.DataFrame({"zone": "domain", "flux": ["nee", "gpp"], "year": 2001, "rms_error": [12.0, 12.0]})
    per = pd.DataFrame({"zone": "domain", "flux": ["nee", "gpp"], "rms_error": [2.0, 0.0]})
    a, p = add_network_sd(ann, p_sd, summ, per)
    a, p = a.set_index("flux"), p.set_index("flux")
    assert a.loc["nee", "tg_c_sd_total"] == pytest.approx(13.0)  # sqrt(3² + 4² + 12²)
    assert a.loc["nee_fire", "tg_c_sd_network"] == 12.0 and a.loc["nee_fire", "tg_c_sd_total"] == pytest.approx(13.0)
    assert a.loc["gpp", "tg_c_sd_total"] == 13.0  # sqrt(5² + 12²)
    assert a.loc["fire", "tg_c_sd_total"] == 1.0 and np.isnan(a.loc["fire", "tg_c_sd_network"])
    assert p.loc["nee", "period_mean_tg_c_sd_total"] == pytest.approx(np.sqrt(5.0))
    assert p.loc["gpp", "period_mean_tg_c_sd_total"] == 2.0


def test_strided_weights_keep_zone_areas():
    W = sp.csr_matrix(np.array([[1.0, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 1, 1, 0, 0, 0]]))
    Ws, keep = net.strided_weights(W, (3, 3), 2)
    assert keep.sum() == 4 and keep[0, 0] and keep[2, 2] and not keep[1, 1]
    assert np.allclose(np.asarray(Ws.sum(1)).ravel(), [45.0, 0.0])  # zone 2 has no kept cell: 0
    assert Ws[0, 0] == pytest.approx(45 / 20) and Ws[0, 4] == 0
    same, none = net.strided_weights(W, (3, 3), 1)
    assert same is W and none is None


def test_stability_table():
    e = pd.concat([errors_table().assign(replicate=lambda d, k=k: d.replicate + 2 * k) for k in range(3)])
    st = net.stability(e, ns=(2, 4, 8))
    assert list(st.replicates) == [2, 4]
    assert st.rms_error.iloc[0] == pytest.approx(np.sqrt((3.5**2 + 0.5**2) / 2))


# --------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def net_run(study_run, fast_config, tmp_path_factory):
    out0, _ = study_run
    out = tmp_path_factory.mktemp("net") / "run"
    out.mkdir()
    for item in ("sites.parquet", "models", "cv", "upscaled.zarr", "budgets_members_monthly.parquet"):
        (shutil.copytree if (out0 / item).is_dir() else shutil.copy2)(out0 / item, out / item)
    cfg = load_config(fast_config)
    cfg = replace(
        cfg,
        uncertainty=replace(cfg.uncertainty, network=True, network_replicates=2, network_trees=5, network_stride=3),
    )
    return out, cfg


def test_network_stage_outputs_deterministic_and_budgets(net_run):
    from abzflux.steps import budgets as stage_budgets
    from abzflux.steps import network as stage_network

    out, cfg = net_run
    ctx = Context(cfg=cfg, out=out)
    stage_network.run(ctx)
    e1 = pd.read_parquet(out / "network" / "network_errors.parquet")
    assert list(e1.columns) == ["replicate", "zone", "year", "flux", "estimate", "truth", "distance_error", "error"]
    assert set(e1.flux) == {"gpp", "reco", "nee", "nee_derived"} and set(e1.replicate) == {0, 1}
    assert np.allclose(e1.error, e1.estimate - e1.truth)
    assert e1.groupby(["flux", "zone", "year"]).error.std().max() > 0  # replicates differ
    # the same seed gives the same replicates
    shutil.rmtree(out / "network")
    stage_network.run(Context(cfg=cfg, out=out))
    e2 = pd.read_parquet(out / "network" / "network_errors.parquet")
    pd.testing.assert_frame_equal(e1, e2)
    # the truth: the fitted maps' zone sums + the field's, so replicate truths differ only where a
    # field was fitted (NEE's derived = Reco − GPP on both sides)
    d = e1.set_index(["replicate", "zone", "year", "flux"])
    nd = d.xs("nee_derived", level="flux")
    assert np.allclose(nd.truth, d.xs("reco", level="flux").truth - d.xs("gpp", level="flux").truth)
    s = pd.read_csv(out / "network" / "network_summary.csv")
    assert {"mean_error", "sd_error", "rms_error", "replicates"} <= set(s.columns) and (s.replicates == 2).all()
    stage_budgets.run(Context(cfg=cfg, out=out))
    ann = pd.read_csv(out / "budgets_annual.csv")
    row = ann[(ann.zone == "domain") & (ann.flux == "nee")].iloc[0]
    hand = s[(s.zone == "domain") & (s.flux == "nee") & (s.year == row.year)].rms_error.iloc[0]
    assert row.tg_c_sd_network == pytest.approx(hand)
    assert row.tg_c_sd_total == pytest.approx(np.hypot(row.tg_c_sd, hand))
    p = pd.read_csv(out / "budgets_period_sd.csv")
    assert "period_mean_tg_c_sd_network" in p and "period_mean_tg_c_sd_total" in p


def test_network_replicates_on_dask_match(net_run, tmp_path):
    import pickle

    from dask import distributed

    from abzflux.steps import network as stage_network

    out, cfg = net_run
    ctx = Context(cfg=cfg, out=out)
    job, _ = stage_network.build(ctx, tmp_path / "work")
    pickle.loads(pickle.dumps(job))  # a process cluster gets the job pickled
    local = net.run_replicates(job, 2)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = net.run_replicates(job, 2, client=client)
    pd.testing.assert_frame_equal(local, remote)
    # the replicate's truth = the fitted maps' zone sums + the field's zone sum: GPP's field (fitted
    # on this twin or not) makes truths differ between replicates only if its SD is > 0
    g = local[(local.flux == "gpp") & (local.zone == "domain")].pivot(index="year", columns="replicate", values="truth")
    assert (g[0] != g[1]).any() == (job.models["gpp"]["field_sd"] > 0)


def test_distance_term_adds_its_field_to_the_truth_only(net_run, tmp_path):
    """The distance term's field is zero at the sites: the pseudo observations, refits and
    estimates are those without it; the truth gains the field's zone sums, which the
    ``distance_error`` column carries (error with the term = error without + distance_error)."""
    from dataclasses import replace as dc_replace

    from abzflux.steps import network as stage_network

    out, cfg = net_run
    job0, models0 = stage_network.build(Context(cfg=cfg, out=out), tmp_path / "work0")
    assert job0.distance_sd == {} and not any("distance" in m for m in models0.values())  # off by default
    cfg = replace(cfg, uncertainty=replace(cfg.uncertainty, network_distance=True))
    job, models = stage_network.build(Context(cfg=cfg, out=out), tmp_path / "work")
    assert set(job.distance_sd) == {"gpp", "reco", "nee"} and all("distance" in models[f] for f in models)
    for f in ("gpp", "reco", "nee"):  # the cells' SD: sqrt(Δ(distance)), 0 at the sites' cells
        r = job.rows[f]
        assert (job.distance_sd[f] >= 0).all() and (job.distance_sd[f][r.iy, r.ix] == 0).all()
    # force a term (the small test twin may fit none): SD 2 everywhere, 500-km range
    forced = {f: {**m, "distance": {"psill": 4.0, "range_m": 5e5, "r_ref_m": 1.0}} for f, m in job.models.items()}
    on = dc_replace(job, models=forced, distance_sd={f: np.full(job.shape, 2.0) for f in ("gpp", "reco", "nee")})
    off = dc_replace(job, models=forced, distance_sd={})
    a, b = net.run_replicate(on, 1), net.run_replicate(off, 1)
    assert np.array_equal(a.estimate, b.estimate)
    assert (b.distance_error == 0).all() and (a.distance_error != 0).any()
    assert np.allclose(a.error, b.error + a.distance_error)
    assert np.allclose(a.error, a.estimate - a.truth)
    d = a.set_index(["zone", "year", "flux"]).distance_error
    assert np.allclose(d.xs("nee_derived", level="flux"), d.xs("reco", level="flux") - d.xs("gpp", level="flux"))


def test_report_shows_the_network_term(tmp_path, monkeypatch):
    import json

    import abzflux.report as R
    from abzflux.summary import render_summary_md

    run = tmp_path / "run"
    (run / "network").mkdir(parents=True)
    (run / "budgets_annual.csv").write_text(
        "zone,flux,year,tg_c,tg_c_sd,tg_c_sd_network,tg_c_sd_total\ndomain,nee,2001,-1.0,3.0,4.0,5.0\n"
    )
    (run / "budgets_period_sd.csv").write_text(
        "zone,flux,period_mean_tg_c_sd,period_mean_tg_c_sd_network,period_mean_tg_c_sd_total\ndomain,nee,3.0,4.0,5.0\n"
    )
    (run / "network" / "network_period.csv").write_text(
        "zone,flux,replicates,mean_error,sd_error,rms_error\ndomain,nee,20,2.5,3.2,4.0\n"
    )
    grp = {"sd_site": 1.5, "sd_noise": 2.5, "sd_between": 1.5, "mean": 0.0, "n_sites": 3, "n_rows": 9}
    model = {"field_sd": 0.7, "field_range_m": 3e5, "methods": {"EC": grp, "chamber": grp, "other": grp}}
    (run / "network" / "residual_model.json").write_text(
        json.dumps({"replicates": 20, "trees": 50, "models": {"nee": model}})
    )
    (run / "run.json").write_text(
        json.dumps({"config": {"uncertainty": {"method": "sites", "network": True, "network_replicates": 20}}})
    )
    monkeypatch.setattr(R, "shipped_calibration", lambda: (None, ""))
    rd = R.RunData(run)
    method, term = R.uncertainty_method(rd)
    assert "network-simulation term" in method.caption and "sites+network" in method.caption
    assert "20 replicates" in term.caption and "range 300 km" in term.caption and "EC 1.5" in term.caption
    assert "2.5" in term.table_html and "3.2" in term.table_html and "5" in term.table_html
    assert "network-simulation" in R._band_text(rd)
    # summary.md names both terms of the ±
    period = pd.DataFrame({"first_year": [2001], "last_year": [2001]})
    truth = pd.DataFrame(
        {
            "flux": ["nee"],
            "zone": ["domain"],
            "estimate": [-1.0],
            "sd": [5.0],
            "truth": [-2.0],
            "error": [1.0],
            "rel_error": [0.5],
            "trend": [0.0],
            "trend_truth": [0.0],
        }
    )
    md = render_summary_md(period, truth, 0.5, {}, "sites+extrap+network")
    assert "dissimilarity index and the network-simulation term" in md


def test_network_term_without_bootstrap_members():
    from abzflux.budgets import annual_table

    mon = pd.DataFrame(
        {
            "zone": "domain",
            "flux": "nee",
            "year": 2001,
            "month": np.arange(1, 13),
            "tg_c": 1.0,
            "coverage": 1.0,
        }
    )
    areas = pd.Series({"domain": 1e12})
    period = pd.DataFrame({"zone": ["domain"], "flux": ["nee"], "season": ["annual"]})
    summ = pd.DataFrame({"zone": "domain", "flux": ["nee"], "year": 2001, "rms_error": [7.0]})
    per = pd.DataFrame({"zone": "domain", "flux": ["nee"], "rms_error": [3.0]})
    ann, p = annual_table(mon, areas, None, period, False, None, (summ, per))
    assert ann.tg_c.iloc[0] == 12.0 and ann.tg_c_sd_total.iloc[0] == 7.0 and np.isnan(ann.tg_c_sd.iloc[0])
    assert p.period_mean_tg_c_sd_total.iloc[0] == 3.0


@pytest.mark.slow
def test_runner_runs_the_network_stage(tiny_twin, tmp_path):
    """A whole study with the term on (the tiny twin, small forests): the stage runs between
    upscale and budgets through the runner, its outputs feed the budgets, trends and summary,
    and a rerun skips every stage. Turning the term on in a finished run is a config change that
    needs --restart, like any key its outputs depend on."""
    import json

    from abzflux.errors import RunDirConflict
    from abzflux.runner import run_study

    cfg = load_config(tiny_twin / "config.toml")
    cfg = replace(
        cfg,
        forest=replace(cfg.forest, n_estimators=10, mtry=5, n_bootstrap=2, importance_repeats=1, pdp_rows=50),
        uncertainty=replace(cfg.uncertainty, network=True, network_replicates=2, network_trees=5),
    )
    out = tmp_path / "run"
    rec = run_study(cfg, out)
    assert not rec["stages"]["network"]["skipped"]
    assert (out / "network" / "network_errors.parquet").exists() and not (out / "network" / "work").exists()
    assert json.loads((out / "stages" / "network.json").read_text())["replicate_seconds"] > 0
    ann = pd.read_csv(out / "budgets_annual.csv")
    assert ann[ann.flux == "nee"].tg_c_sd_network.notna().all()
    bt = pd.read_csv(out / "trends" / "budget_trends.csv")
    assert bt[bt.flux == "nee"].slope_sd_network.notna().all()
    ok = bt.lbound.notna()
    assert (bt.lbound_total[ok] <= bt.lbound[ok] + 1e-9).all() and (bt.ubound_total[ok] >= bt.ubound[ok] - 1e-9).all()
    assert json.loads((out / "summary.json").read_text())["uncertainty"].endswith("+network")
    again = run_study(cfg, out)
    assert all(v["skipped"] for v in again["stages"].values())
    with pytest.raises(RunDirConflict, match="uncertainty.network_replicates"):
        run_study(replace(cfg, uncertainty=replace(cfg.uncertainty, network_replicates=3)), out)


def test_terms_without_cv_name_the_missing_setting(fast_config, tmp_path):
    from abzflux.errors import ConfigError
    from abzflux.steps import extrapolation as stage_extrapolation
    from abzflux.steps import network as stage_network

    ctx = Context(cfg=load_config(fast_config), out=tmp_path)  # a run directory without cv/
    with pytest.raises(ConfigError, match=r"the network simulation needs the cross-validation") as e:
        stage_network.run(ctx)
    assert "[uncertainty.network]" in str(e.value) and 'forest.cv = "loso" or "site_oob"' in str(e.value)
    with pytest.raises(ConfigError, match=r"\[uncertainty.extrapolation\].*the extrapolation term needs"):
        stage_extrapolation.run(ctx)
    assert list(tmp_path.iterdir()) == []  # refused before writing anything
