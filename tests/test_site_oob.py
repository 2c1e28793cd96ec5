"""Tests of the grouped out-of-bag CV (``[forest] cv = "site_oob"``, abzflux.cv.site_oob_cv): the
balanced design, no leak of a site into the trees that predict it (by hand reconstruction), the
quantile-forest median, determinism, the guard on too few out-of-bag trees, closeness to exact
leave-one-site-out on a seeded table, and fit_flux's modes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import abzflux.cv as cv
from abzflux import seeds
from abzflux._rf import grow_forest, presort
from abzflux.cv import loso_cv, site_oob_cv, site_oob_design


def site_table(n_sites=8, n_per=12, seed=0):
    rng = np.random.default_rng(seed)
    n = n_sites * n_per
    X = pd.DataFrame({"a": rng.uniform(0, 1, n), "b": rng.uniform(0, 1, n), "c": rng.uniform(0, 1, n)})
    sites = np.repeat([f"S{k:02d}" for k in range(n_sites)], n_per)
    offset = dict(zip(np.unique(sites), rng.normal(scale=0.3, size=n_sites)))
    y = 4 * X.a + 3 * X.b**2 + np.sin(3 * X.c) + pd.Series(sites).map(offset).to_numpy()
    return X, y.to_numpy(), sites


def test_design_is_balanced_and_seeded():
    held = site_oob_design(10, 25, 0.2, seed=3)  # K = 5 trees per round, 2 sites each
    assert held.shape == (25, 10)
    assert (held.sum(axis=1) == 2).all()
    assert (held.sum(axis=0) == 5).all()  # every site out of exactly 25 / 5 trees
    for r in range(5):  # each round of 5 trees holds every site out exactly once
        assert (held[5 * r : 5 * r + 5].sum(axis=0) == 1).all()
    np.testing.assert_array_equal(held, site_oob_design(10, 25, 0.2, seed=3))
    assert not np.array_equal(held, site_oob_design(10, 25, 0.2, seed=4))
    # a partial last round: counts differ by at most one; 1/0.3 rounds to K = 3 (chunks 4, 3, 3)
    h = site_oob_design(10, 7, 0.3, seed=1)
    assert set(h.sum(axis=0)) <= {2, 3} and sorted(set(h.sum(axis=1))) == [3, 4]
    with pytest.raises(ValueError, match=r"site_fraction must be in \(0, 0.5\]"):
        site_oob_design(10, 10, 0.6, seed=1)
    with pytest.raises(ValueError, match="only 3 sites"):
        site_oob_design(3, 10, 0.1, seed=1)


def _by_hand(X, y, sites, seed, mtry, n_trees, fraction):
    """The grouped forest grown directly, and each row's mean over the trees that held its site out."""
    usites, code = np.unique(sites, return_inverse=True)
    held = site_oob_design(len(usites), n_trees, fraction, seed)
    M = X.to_numpy(float)
    f = grow_forest(
        M,
        y,
        is_cat=np.zeros(M.shape[1], bool),
        n_levels=np.zeros(M.shape[1], np.int64),
        n_trees=n_trees,
        mtry=mtry,
        nodesize=5,
        seed=seeds.integer(seed, "cv_oob", mtry),
        order=presort(M),
        group=code,
        held=held,
    )
    return f, held, code


def test_rows_are_predicted_only_by_trees_that_never_saw_their_site():
    X, y, sites = site_table(seed=1)
    res = site_oob_cv(X, y, sites, grid=[2], n_trees=12, site_fraction=0.25, seed=5, categorical=(), min_oob_trees=1)
    f, held, code = _by_hand(X, y, sites, 5, 2, 12, 0.25)
    # each tree's bootstrap drew exactly as many rows as its training sites have, from them only
    root_w = f.wcount[f.roots]
    np.testing.assert_array_equal(root_w, (~held[:, code]).sum(axis=1))
    per_tree = f.predict_trees(X.to_numpy(float))
    expect = np.array([per_tree[i, held[:, code[i]]].mean() for i in range(len(y))])
    got = res.predictions.sort_values("row").pred.to_numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    # ... which differs from the whole forest's prediction (the in-bag trees)
    assert np.abs(got - per_tree.mean(axis=1)).max() > 0.05


@pytest.mark.parametrize("central", ["mean", "qrf_median"])
@pytest.mark.parametrize("extreme", ["S00", "S04", "S07"])
def test_extreme_site_never_reaches_its_predictions(central, extreme):
    """One site's response is 1e4, another's -1e4, all others lie in [0, 1]: a leaf value, or a
    leaf draw, from trees that saw the site would show it in that site's predictions."""
    X, _, sites = site_table(seed=2)
    rng = np.random.default_rng(3)
    y = rng.uniform(0, 1, len(sites))
    other = "S01" if extreme != "S01" else "S02"
    y[sites == extreme] = 1e4
    y[sites == other] = -1e4
    res = site_oob_cv(
        X,
        y,
        sites,
        grid=[1, 3],
        n_trees=16,
        site_fraction=0.25,
        seed=3,
        categorical=(),
        central=central,
        min_oob_trees=1,
    )
    p = res.predictions
    assert (p[p.site_id == extreme].pred <= 1.0).all()
    assert (p[p.site_id == other].pred >= 0.0).all()
    assert len(p) == 2 * len(y) and np.isfinite(p.pred).all()


def test_qrf_median_draws_from_the_trees_own_sites_by_hand():
    X, y, sites = site_table(seed=4)
    res = site_oob_cv(
        X,
        y,
        sites,
        grid=[2],
        n_trees=8,
        site_fraction=0.25,
        seed=9,
        categorical=(),
        central="qrf_median",
        min_oob_trees=1,
    )
    f, held, code = _by_hand(X, y, sites, 9, 2, 8, 0.25)
    M = X.to_numpy(float)
    leaves = f.apply(M)
    draws = cv.qrf_leaf_draws(f, M, y, seeds.integer(9, "cv_oob", 2), exclude=held[:, code].T)
    for t in range(8):  # every leaf's draw is a response of a row of a site the tree trained on
        train = ~held[t, code]
        for leaf in np.unique(leaves[train, t]):
            assert draws[leaf] in set(y[train & (leaves[:, t] == leaf)])
    per_tree = draws[leaves]
    expect = np.array([np.median(per_tree[i, held[:, code[i]]]) for i in range(len(y))])
    np.testing.assert_array_equal(res.predictions.sort_values("row").pred.to_numpy(), expect)


def test_same_seed_same_predictions():
    X, y, sites = site_table(seed=5)
    kw = dict(grid=[1, 2], n_trees=20, site_fraction=0.25, categorical=(), min_oob_trees=1)
    a = site_oob_cv(X, y, sites, seed=1, **kw)
    b = site_oob_cv(X, y, sites, seed=1, **kw)
    c = site_oob_cv(X, y, sites, seed=2, **kw)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    assert not np.allclose(a.predictions.pred, c.predictions.pred)


def test_too_few_out_of_bag_trees_is_refused():
    X, y, sites = site_table(seed=6)
    with pytest.raises(ValueError, match=r"held out by only 1 of 8 trees .* at least 20"):
        site_oob_cv(X, y, sites, grid=[2], n_trees=8, site_fraction=0.125, categorical=())
    with pytest.raises(ValueError, match="at least 3 sites"):
        site_oob_cv(X[:24], y[:24], sites[:24], grid=[2], n_trees=40, site_fraction=0.5, categorical=())


def test_close_to_exact_loso_and_far_from_in_bag():
    """On a seeded 24-site table the grouped out-of-bag skill lies within a few per cent of exact
    leave-one-site-out; the in-bag predictions of the same trees (what a leak would give) are
    far better, so the tolerance would catch one."""
    X, y, sites = site_table(n_sites=24, n_per=12, seed=7)
    loso = loso_cv(X, y, sites, grid=[2], n_trees=60, seed=1, categorical=())
    oob = site_oob_cv(X, y, sites, grid=[2], n_trees=600, site_fraction=0.1, seed=1, categorical=())
    r_loso = loso.metrics.caret_RMSE.item()
    r_oob = oob.metrics.caret_RMSE.item()
    assert abs(r_oob - r_loso) / r_loso < 0.05
    f, held, code = _by_hand(X, y, sites, 1, 2, 600, 0.1)
    per_tree = f.predict_trees(X.to_numpy(float))
    inbag = np.array([per_tree[i, ~held[:, code[i]]].mean() for i in range(len(y))])
    r_in = cv.caret_metrics(y, inbag, sites)["RMSE"]
    assert r_in < 0.75 * r_loso
    np.testing.assert_allclose(
        oob.predictions.groupby("site_id").pred.mean(), loso.predictions.groupby("site_id").pred.mean(), atol=0.25
    )


def _rows(n_sites=10, seed=8):
    X, y, sites = site_table(n_sites=n_sites, seed=seed)
    extra = {c: 0 for c in cv.BREAKDOWN_COLUMNS if c != "site_id"}
    return X.assign(flux=y, site_id=sites, **extra)


@pytest.mark.parametrize("mode", ["site_oob", "loso", True, "none", False])
def test_fit_flux_modes(mode):
    rows = _rows()
    kw = dict(mtry=None, grid=[1, 3], n_estimators=20, nodesize=5, central="mean", seed=2, forest_seed=3)
    fit = cv.fit_flux(
        rows, "flux", ["a", "b", "c"], cv=mode, dropped=[], categorical=(), oob_site_fraction=0.25, oob_trees=80, **kw
    )
    if mode in ("none", False):
        assert fit.predictions is None and fit.info["cv"] == {} and not fit.info["tuned"]
        assert "cv_mode" not in fit.info
        return
    p = fit.predictions
    assert len(p) == 2 * len(rows) and set(p.row) == set(range(len(rows))) and np.isfinite(p.pred).all()
    assert fit.info["tuned"] and fit.info["mtry"] in (1, 3)
    if mode == "site_oob":
        assert fit.info["cv_mode"] == "site_oob"
        assert fit.info["oob_trees"] == 80 and fit.info["oob_site_fraction"] == 0.25
        assert fit.info["oob_trees_per_site"] == [20, 20]
        res = site_oob_cv(
            rows[["a", "b", "c"]],
            rows.flux,
            rows.site_id,
            [1, 3],
            n_trees=80,
            site_fraction=0.25,
            seed=2,
            categorical=(),
        )
        assert fit.info["mtry"] == res.best_mtry
        assert fit.info["cv"]["caret_RMSE"] == res.metrics.loc[res.metrics.selected, "caret_RMSE"].item()
    else:  # LOSO runs' forest.json is unchanged: no mode key
        assert "cv_mode" not in fit.info


def test_fit_flux_rejects_unknown_mode():
    with pytest.raises(ValueError, match="cv must be one of"):
        cv.fit_flux(
            _rows(), "flux", ["a"], cv="oob", mtry=None, grid=[1], n_estimators=5, nodesize=5, central="mean",
            seed=1, forest_seed=1, dropped=[], categorical=(),
        )  # fmt: skip


def test_forest_stage_site_oob_writes_every_row_and_its_mode(tiny_twin, tmp_path):
    """The forest stage with cv = "site_oob": a held-out prediction for every training row at
    every mtry, the skill tables, the mode in models/forest.json, and report captions that say
    grouped out-of-bag."""
    from types import SimpleNamespace

    from abzflux import report
    from abzflux.config import load_config
    from abzflux.context import Context
    from abzflux.predictors import training_rows
    from abzflux.steps import forest as forest_step
    from abzflux.steps import sites as sites_step

    from conftest import absolute_config

    text = (tiny_twin / "config.toml").read_text()
    forest = (
        '[forest]\nn_estimators = 20\nmtry_grid = [2, 9]\ncv = "site_oob"\noob_site_fraction = 0.25\noob_trees = 80\n'
    )
    (tmp_path / "c.toml").write_text(absolute_config(text[: text.index("[forest]")], tiny_twin) + forest)
    ctx = Context(cfg=load_config(tmp_path / "c.toml"), out=tmp_path / "run")
    (tmp_path / "run").mkdir()
    sites_step.SPEC.run(ctx)
    forest_step.SPEC.run(ctx)
    lay = ctx.layout
    info = json.loads(lay.forest_json.read_text())
    pred = pd.read_parquet(lay.cv_predictions)
    table = pd.read_parquet(lay.sites)
    for flux in ("gpp", "reco", "nee"):
        n = len(training_rows(table, flux, ctx.predictor_set))
        assert info[flux]["cv_mode"] == "site_oob" and info[flux]["oob_trees_per_site"] == [20, 20]
        p = pred[pred.flux == flux]
        assert len(p) == 2 * n and p.groupby("mtry").row.nunique().tolist() == [n, n] and p.pred.notna().all()
        assert info[flux]["cv"]["caret_RMSE"] > 0
    assert set(pd.read_csv(lay.cv / "skill.csv").flux) == {"gpp", "reco", "nee"}
    note = report._site_oob_note(SimpleNamespace(layout=lay))
    assert "grouped out-of-bag (site_oob), not exact leave-one-site-out" in note and "80-tree" in note
    assert "25 %" in note or "25%" in note


def test_report_note_only_in_site_oob_runs(tmp_path):
    from types import SimpleNamespace

    from abzflux import report

    f = tmp_path / "forest.json"
    lay = SimpleNamespace(forest_json=f)
    assert report._site_oob_note(SimpleNamespace(layout=lay)) == ""  # no forest stage output
    f.write_text(json.dumps({"nee": {"mtry": 2, "central": "mean"}}))  # a LOSO run's forest.json
    assert report._site_oob_note(SimpleNamespace(layout=lay)) == ""
    oob = {"mtry": 2, "cv_mode": "site_oob", "oob_trees": 1500, "oob_site_fraction": 0.1}
    f.write_text(json.dumps({"nee": oob}))
    note = report._site_oob_note(SimpleNamespace(layout=lay))
    assert "1500-tree forest per mtry" in note and "random 10% of the sites" in note
