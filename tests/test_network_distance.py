"""The distance-dependent pieces of the uncertainty terms: the buffered (disc) design and the
network term's error-vs-distance curve, the labelled leave-cluster-out forest and the
extrapolation term's multi-CV (docs/uncertainty.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from abzflux import cv
from abzflux import network as net
from abzflux.compare import AOA
from abzflux.uncertainty import fit_extrapolation, flux_extrapolation, multicv_site_errors


def test_disc_design_by_hand():
    # sites on a line (m): 0, 1, 2, 10, 11; every tree holds out a disc around a random centre
    xy = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0], [11, 0]])
    held, dist = cv.disc_design(xy, 400, 0.5, 20.0, np.random.default_rng(1), max_share=0.5)
    assert held.shape == dist.shape == (400, 5)
    assert held.any(1).all() and (held.sum(1) <= 2).all()  # the cap: at most half of 5 sites -> 2
    for t in range(400):
        h = np.nonzero(held[t])[0]
        train = np.nonzero(~held[t])[0]
        # a held site's distance is to the nearest site the tree trains on
        for j in h:
            assert dist[t, j] == pytest.approx(np.abs(xy[train, 0] - xy[j, 0]).min())
        assert np.isnan(dist[t, ~held[t]]).all()
        # held sites are the nearest to some centre: contiguous on the line
        assert np.ptp(h) == len(h) - 1 or set(h) <= {3, 4}
    # the same generator state gives the same design
    h2, d2 = cv.disc_design(xy, 400, 0.5, 20.0, np.random.default_rng(1), max_share=0.5)
    assert (h2 == held).all() and np.array_equal(d2, dist, equal_nan=True)
    with pytest.raises(ValueError, match="r_min"):
        cv.disc_design(xy, 10, 0.0, 1.0, np.random.default_rng(1))


def _sites_table(rng, n_sites=30, per=12):
    site = np.repeat([f"s{i:02d}" for i in range(n_sites)], per)
    x1 = np.repeat(rng.uniform(0, 10, n_sites), per) + rng.normal(0, 0.1, n_sites * per)
    x2 = rng.uniform(0, 1, n_sites * per)
    return pd.DataFrame({"site_id": site, "x1": x1, "x2": x2})


def test_held_out_site_means_never_predict_a_site_from_itself():
    rng = np.random.default_rng(3)
    d = _sites_table(rng)
    y = d.x1.to_numpy() + 0.0
    y[d.site_id == "s05"] = 1000.0  # an extreme site: any tree that saw it would show it
    usites = np.unique(d.site_id)
    groups = [usites[:10], usites[10:20], usites[20:]]
    held = np.stack([np.isin(usites, groups[k]) for k in np.repeat([0, 1, 2], 20)])
    w = rng.uniform(0.5, 2.0, len(d))
    ysite, q = cv.held_out_site_means(d[["x1", "x2"]], y, d.site_id, held, mtry=2, weight=w, categorical=())
    assert ysite.shape == (30,) and q.shape == (30, 60)
    # the weighted site means of y, by hand
    hand = pd.Series(w * y).groupby(d.site_id.to_numpy()).mean()
    assert np.allclose(ysite, hand.loc[usites].to_numpy())
    # a value exactly where the tree held the site out
    assert (np.isfinite(q) == held.T).all()
    # s05 is predicted by the trees of group 0, which never saw it: no 1000 anywhere
    assert np.nanmax(q[5]) < 20 * w.max()
    # the trees of groups 1 and 2 trained on s05: its rows pull their predictions near it up
    assert np.nanmax(q[[i for i in range(30) if i != 5]]) > 100
    with pytest.raises(ValueError, match="held has"):
        cv.held_out_site_means(d[["x1", "x2"]], y, d.site_id, held[:, :29], mtry=2, categorical=())


def test_distance_curve_recovers_a_known_error_growth():
    # per site and tree: q = b_site(bin) + tree noise; the site-mean error in a bin has variance
    # g(d) = 10 + 40 (1 - exp(-d / 500)); the trees' own noise (SD 6) is removed by the correction
    rng = np.random.default_rng(7)
    n_sites, n_trees = 3000, 120
    dist = np.full((n_trees, n_sites), np.nan)
    q = np.full((n_sites, n_trees), np.nan)
    centres = np.array([50.0, 200, 400, 800, 1600])
    g = lambda d: 10 + 40 * (1 - np.exp(-d / 500))  # noqa: E731
    for j in range(n_sites):
        for k, c in enumerate(centres):
            trees = np.arange(k * 24, (k + 1) * 24)
            b = rng.normal(0, np.sqrt(g(c)))
            dist[trees, j] = c
            q[j, trees] = b + rng.normal(0, 6.0, len(trees))
    curve = net.distance_curve(np.zeros(n_sites), q, dist, n_bins=5)
    assert len(curve) == 5 and (curve.pairs == n_sites).all()
    assert np.allclose(curve.h, centres)
    assert np.allclose(curve.gamma, g(centres), rtol=0.08)
    m = net.fit_distance_model(curve, r_ref=50.0)
    assert m["psill"] == pytest.approx(40, rel=0.25) and m["range_m"] == pytest.approx(500, rel=0.5)


def test_distance_variance_by_hand():
    m = {"psill": 100.0, "range_m": 1000.0, "r_ref_m": 100.0}
    d = np.array([0.0, 100.0, 1100.0, 1e9])
    expect = 100 * (np.exp(-0.1) - np.exp(-d / 1000))
    assert np.allclose(net.distance_variance(m, d), np.clip(expect, 0, None))
    assert net.distance_variance(m, d)[0] == 0.0  # nearer than the LOSO distance: nothing added
    assert (net.distance_variance({"psill": 0.0, "range_m": np.nan, "r_ref_m": 1.0}, d) == 0).all()
    xy = np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 0.0]])
    assert np.allclose(net.nearest_other(xy), [5.0, 5.0, np.hypot(97, 4)])
    assert np.allclose(net.nearest_distance(xy, [[0.0, 1.0], [90.0, 0.0]]), [1.0, 10.0])


def _clustered(rng, n_sites=60, per=10):
    # three environmental clusters of sites; the response bends outside the middle one
    c = rng.integers(0, 3, n_sites)
    centre = np.array([-3.0, 0.0, 3.0])[c]
    x1 = np.repeat(centre + rng.normal(0, 0.4, n_sites), per) + rng.normal(0, 0.1, n_sites * per)
    x2 = rng.normal(0, 1, n_sites * per)
    site = np.repeat([f"s{i:02d}" for i in range(n_sites)], per)
    y = x1**2 + 0.5 * x2 + np.repeat(rng.normal(0, 0.5, n_sites), per) + rng.normal(0, 0.3, n_sites * per)
    return pd.DataFrame({"site_id": site, "x1": x1, "x2": x2, "flux": y, "month": 7})


def test_multicv_reaches_larger_dissimilarity_and_its_errors_grow():
    rng = np.random.default_rng(11)
    d = _clustered(rng)
    aoa = AOA(d[["x1", "x2"]].to_numpy(), d.site_id.to_numpy(), np.ones(2))
    kw = dict(mtry=2, nodesize=5, categorical=(), seed=5, continuous=("x1", "x2"), levels=(2, 4, 8), n_trees=280)
    e = multicv_site_errors(d, ["x1", "x2"], d.flux.to_numpy(), aoa, **kw)
    assert set(e.level) <= {2, 4, 8} and e.di.notna().all() and (e.abs_error >= 0).all()
    # every site appears once per level (its cluster of that level held it out)
    assert (e.groupby("level").site_id.nunique() == 60).all()
    # bigger clusters held out -> further from the training rows, and larger errors
    by = e.groupby("level")[["di", "abs_error"]].mean()
    assert by.di.loc[2] > by.di.loc[8] > float(np.nanmean(aoa.train_di))
    assert by.abs_error.loc[2] > by.abs_error.loc[8]
    # deterministic for a seed
    pd.testing.assert_frame_equal(e, multicv_site_errors(d, ["x1", "x2"], d.flux.to_numpy(), aoa, **kw))
    # a site's leave-cluster-out error is its mean residual against the forest of the other clusters
    assert np.allclose(e.abs_error, e.residual.abs())


def test_flux_extrapolation_with_multicv_fits_a_slope_from_the_clusters():
    rng = np.random.default_rng(12)
    d = _clustered(rng)
    # LOSO-like predictions: each site's rows predicted well (a small error, no DI growth)
    pred = pd.DataFrame(
        {"row": np.arange(len(d)), "flux": "nee", "mtry": 2, "obs": d.flux, "pred": d.flux + rng.normal(0, 0.3, len(d))}
    )
    rows = d.rename(columns={"flux": "nee"})
    base, _, e0 = flux_extrapolation(rows, pred, 2, None, "nee", 10_000, ("x1", "x2"))
    mc = {"x_cols": ["x1", "x2"], "y": rows.nee.to_numpy(), "nodesize": 5, "categorical": (), "seed": 5}
    m, _, e = flux_extrapolation(rows, pred, 2, None, "nee", 10_000, ("x1", "x2"), multicv=mc)
    assert base["cv"] == "loso" and m["cv"] == "multicv"
    assert set(e.level) > {1} and (e.level == 1).sum() == len(e0)
    # the LOSO residuals alone show no growth; the left-out clusters do
    assert base["b"] < m["b"] and m["b"] > 0
    # the term still starts at the typical leave-one-site-out DI
    assert m["di_ref"] == pytest.approx(np.median(e0.di))
    assert m["b"] == pytest.approx(fit_extrapolation(e.di.to_numpy(), e.abs_error.to_numpy())["b"])


def test_method_label_names_the_distance_part(tmp_path):
    from dataclasses import replace

    from abzflux.config import Config, Inputs
    from abzflux.summary import uncertainty_label

    cfg = Config(inputs=Inputs(sites=tmp_path, predictors=tmp_path, zones=tmp_path))
    u = cfg.uncertainty
    assert uncertainty_label(cfg) == "rows"
    assert uncertainty_label(replace(cfg, uncertainty=replace(u, network=True))) == "rows+network"
    both = replace(u, network=True, network_distance=True, extrapolation=True, method="blocks")
    assert uncertainty_label(replace(cfg, uncertainty=both)) == "blocks+extrap+network+dist"
    assert uncertainty_label(replace(cfg, uncertainty=replace(u, network_distance=True))) == "rows"
    # the report's label of run.json's record; a record from before the settings: the row bootstrap
    from abzflux.summary import label_of

    assert label_of({}) == "rows"
    assert label_of({"method": "sites", "network": True, "network_distance": True}) == "sites+network+dist"
