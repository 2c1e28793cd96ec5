"""Tests of the random forest wrapper (abzflux.forest.FluxForest) over the numba engine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import abzflux.forest as forest_mod
from abzflux._rf import grow_forest
from abzflux.forest import FluxForest, UnknownLevelError, partial_dependence, permutation_importance
from abzflux.predictors import CATEGORICAL, PREDICTOR_NAMES, VEG_CLASSES

VEG = sorted(VEG_CLASSES)  # 21, 30, 31, 33, 41, 50, 60, 70, 80, 90, 120, 160


def make_X(n: int, seed: int = 0, veg=VEG) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {}
    for c in PREDICTOR_NAMES:
        if c == "month":
            cols[c] = rng.integers(1, 13, n)
        elif c == "veg_type":
            cols[c] = rng.choice(list(veg), n)
        else:
            cols[c] = rng.uniform(0.0, 1.0, n)
    cols["srad"] = rng.uniform(0.0, 300.0, n)
    return pd.DataFrame(cols)[list(PREDICTOR_NAMES)]


def small_forest(**kw) -> FluxForest:
    kw.setdefault("n_estimators", 20)
    return FluxForest(**kw)


def r2(y, p) -> float:
    y, p = np.asarray(y, float), np.asarray(p, float)
    return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)


@pytest.fixture
def grow_spy(monkeypatch):
    """Records the arguments FluxForest passes to the engine."""
    calls = []

    def spy(M, y, **kw):
        calls.append({"M": M.copy(), "y": np.asarray(y).copy(), **kw})
        return grow_forest(M, y, **kw)

    monkeypatch.setattr(forest_mod, "grow_forest", spy)
    return calls


def test_predictor_set():
    assert len(PREDICTOR_NAMES) == 17
    assert set(CATEGORICAL) == {"month", "veg_type"}


# ------------------------------------------------------------------------- hyper-parameters


def test_default_mtry_counts_logical_predictors(grow_spy):
    X = make_X(120)
    m = small_forest().fit(X, X.srad)
    assert m.mtry_ == 5  # floor(17 / 3)
    (call,) = grow_spy
    assert call["mtry"] == 5
    assert call["M"].shape == (120, 17)  # one column per categorical, no one-hot
    assert list(np.nonzero(call["is_cat"])[0]) == [PREDICTOR_NAMES.index("month"), PREDICTOR_NAMES.index("veg_type")]
    assert call["n_levels"][PREDICTOR_NAMES.index("month")] == 12
    assert call["n_levels"][PREDICTOR_NAMES.index("veg_type")] == len(set(X.veg_type))
    assert call["n_trees"] == 20 and call["nodesize"] == 5 and call["seed"] == 448
    # split features of the packed forest index the 17 columns (factors as -(j + 1))
    f = m.forest_.nodes["feat"][m.forest_.nodes["left"] >= 0]
    assert f.min() >= -17 and f.max() < 17
    assert (f == -(PREDICTOR_NAMES.index("month") + 1)).any() or (f == -(PREDICTOR_NAMES.index("veg_type") + 1)).any()


@pytest.mark.parametrize("mtry", [1, 9, 17])
def test_explicit_mtry(mtry, grow_spy):
    X = make_X(60)
    m = small_forest(mtry=mtry, n_estimators=3).fit(X, X.srad)
    assert m.mtry_ == mtry
    assert grow_spy[0]["mtry"] == mtry


def test_default_mtry_with_few_columns():
    X = make_X(60)[["srad", "vpd"]]
    m = small_forest(n_estimators=3).fit(X, X.srad)
    assert m.mtry_ == 1  # max(floor(2 / 3), 1)


@pytest.mark.parametrize("mtry", [18, -1, 100, 0])
def test_mtry_out_of_range(mtry):
    X = make_X(40)
    with pytest.raises(ValueError, match="mtry"):
        small_forest(mtry=mtry, n_estimators=2).fit(X, X.srad)


@pytest.mark.parametrize("nodesize", [1, 5, 10])
def test_nodesize_no_small_node_is_split(nodesize, grow_spy):
    X = make_X(200)
    m = small_forest(nodesize=nodesize, n_estimators=10).fit(X, X.srad)
    assert grow_spy[0]["nodesize"] == nodesize
    f = m.forest_
    internal = f.nodes["left"] >= 0
    assert internal.any()
    assert (f.wcount[internal] > nodesize).all()
    assert (f.wcount[f.roots] == 200).all()  # bootstrap of n rows


def test_bad_inputs():
    X = make_X(40)
    with pytest.raises(ValueError, match="central"):
        small_forest(central="median").fit(X, X.srad)
    with pytest.raises(ValueError, match="NaN"):
        small_forest().fit(X, X.srad.where(X.index != 3))
    m = small_forest(n_estimators=2).fit(X, X.srad)
    with pytest.raises(KeyError, match="ndvi"):
        m.predict(X.drop(columns="ndvi"))
    with pytest.raises(ValueError, match="srad"):
        m.predict(X.assign(srad=np.where(X.index == 0, np.nan, X.srad)))
    with pytest.raises(ValueError, match="qrf_median"):
        m.predict_quantiles(X)


def test_get_params_round_trip():
    m = FluxForest(n_estimators=7, mtry=3, nodesize=2, central="qrf_median", random_state=9)
    assert FluxForest(**m.get_params()).get_params() == m.get_params()
    assert m.get_params()["nodesize"] == 2 and m.get_params()["central"] == "qrf_median"


# --------------------------------------------------------------------- categorical encoding


def test_levels_are_sorted_and_codes_follow_them(grow_spy):
    X = make_X(200, seed=4, veg=[90, 21, 33])
    y = X.srad + X.veg_type.map({21: 40.0, 33: -20.0, 90: 0.0}) + 3 * X.month
    m = FluxForest(n_estimators=10, random_state=5).fit(X, y)
    assert list(m.levels_["veg_type"]) == [21, 33, 90]
    assert list(m.levels_["month"]) == list(range(1, 13))
    assert m.known_levels("veg_type") == [21, 33, 90]
    assert m.known_levels("srad") == []
    M = grow_spy[0]["M"]
    np.testing.assert_array_equal(M[:, PREDICTOR_NAMES.index("veg_type")], X.veg_type.map({21: 0, 33: 1, 90: 2}))
    np.testing.assert_array_equal(M[:, PREDICTOR_NAMES.index("month")], X.month - 1)

    # identical to the engine on a matrix we encode by hand
    def encode(df):
        return df.assign(veg_type=df.veg_type.map({21: 0, 33: 1, 90: 2}), month=df.month - 1).to_numpy(float)

    is_cat = np.isin(PREDICTOR_NAMES, CATEGORICAL)
    n_levels = [{"month": 12, "veg_type": 3}.get(c, 0) for c in PREDICTOR_NAMES]
    ref = grow_forest(encode(X), y.to_numpy(), is_cat=is_cat, n_levels=n_levels, n_trees=10, mtry=5, nodesize=5, seed=5)
    Xt = make_X(60, seed=6, veg=[21, 33, 90])
    np.testing.assert_array_equal(m.predict(Xt), ref.predict(encode(Xt)))


def test_categorical_only_signal_is_recovered_exactly():
    """y depends only on veg_type and month; other predictors constant: predictions are the
    cell means, reachable only with factor splits that keep the levels separable."""
    n = 12 * 4 * 10
    X = make_X(n, seed=7)
    for c in PREDICTOR_NAMES:
        if c not in CATEGORICAL:
            X[c] = 1.0
    X["veg_type"] = np.resize(np.repeat([21, 41, 80, 120], 12), n)
    X["month"] = np.resize(np.arange(1, 13), n)
    veg_effect = {21: 1.0, 41: 7.0, 80: -4.0, 120: 2.5}
    y = X.veg_type.map(veg_effect) + 0.5 * X.month
    # mtry=17: every node sees both factors (with mtry < 17 and 15 constant columns a node may
    # draw only constant columns and stay a leaf, as in R)
    m = FluxForest(n_estimators=10, nodesize=1, mtry=17, random_state=0).fit(X, y)
    np.testing.assert_allclose(m.predict(X), y, atol=1e-9)


def test_non_monotone_level_effect_needs_one_split():
    """Month effect high in months 1, 7 and 12 only: a factor split isolates them at once."""
    X = make_X(240, seed=20)
    for c in PREDICTOR_NAMES:
        if c not in CATEGORICAL:
            X[c] = 0.5
    X["month"] = np.resize(np.arange(1, 13), 240)
    X["veg_type"] = 21
    y = np.where(X.month.isin([1, 7, 12]), 10.0, 0.0)
    m = FluxForest(n_estimators=5, mtry=17, nodesize=1).fit(X, y)
    f = m.forest_
    assert f.n_nodes == 5 * 3  # every tree: root + two pure leaves
    month_code = PREDICTOR_NAMES.index("month")
    assert (f.nodes["feat"][f.roots] == -(month_code + 1)).all()
    lows = sum(1 << (mo - 1) for mo in range(1, 13) if mo not in (1, 7, 12))
    assert (f.catmask[f.roots] == lows).all()
    np.testing.assert_array_equal(m.predict(X), y)


def test_veg_class_1_is_recoded_to_31():
    X = make_X(300, seed=8, veg=[1, 21, 90])
    y = 0.2 * X.srad + 30 * (X.veg_type == 1)
    m = small_forest().fit(X, y)
    assert 31 in m.levels_["veg_type"] and 1 not in m.levels_["veg_type"]
    assert m.known_levels("veg_type") == [21, 31, 90]
    X31 = X.assign(veg_type=X.veg_type.replace({1: 31}))
    np.testing.assert_array_equal(m.predict(X31), m.predict(X))
    # the forest learnt the class: class-1 rows are predicted ~30 higher than otherwise,
    # while classes 21 and 90 (no effect) are predicted alike
    Xt = X.iloc[:50].copy()
    hi = m.predict(Xt.assign(veg_type=31))
    lo = m.predict(Xt.assign(veg_type=21))
    assert (hi - lo).mean() > 20
    assert abs((m.predict(Xt.assign(veg_type=90)) - lo).mean()) < 3


def test_trained_on_31_predicts_class_1():
    X = make_X(200, seed=9, veg=[31, 33])
    y = X.srad + 20 * (X.veg_type == 31)
    m = small_forest().fit(X, y)
    assert list(m.levels_["veg_type"]) == [31, 33]
    X1 = X.assign(veg_type=X.veg_type.replace({31: 1}))
    np.testing.assert_array_equal(m.predict(X1), m.predict(X))


def test_float_codes_match_integer_levels():
    """The pipeline extracts veg_type and month as float64; they must hit the integer levels."""
    X = make_X(150, seed=10)
    m = small_forest().fit(X, X.srad)
    Xf = X.astype({"veg_type": np.float64, "month": np.float64})
    np.testing.assert_array_equal(m.predict(Xf), m.predict(X))
    mf = small_forest().fit(Xf, X.srad)  # and trained on floats, the same forest
    np.testing.assert_array_equal(mf.predict(X), m.predict(X))


def test_pandas_categorical_dtype_with_class_1():
    X = make_X(100, seed=11, veg=[1, 21])
    X["veg_type"] = pd.Categorical(X.veg_type)
    X["month"] = pd.Categorical(X.month)
    m = small_forest().fit(X, X.srad)
    assert m.known_levels("veg_type") == [21, 31]


def test_pandas_categorical_dtype_without_class_1():
    X = make_X(150, seed=12)
    Xc = X.assign(veg_type=pd.Categorical(X.veg_type), month=pd.Categorical(X.month))
    a = small_forest().fit(X, X.srad)
    b = small_forest().fit(Xc, X.srad)
    assert a.levels_.keys() == b.levels_.keys()
    for c in a.levels_:
        np.testing.assert_array_equal(a.levels_[c], b.levels_[c])
    np.testing.assert_array_equal(a.predict(X), b.predict(Xc))


@pytest.mark.parametrize("column,level", [("veg_type", 99), ("veg_type", 160), ("month", 13)])
def test_unknown_level_raises(column, level):
    X = make_X(120, seed=13, veg=[21, 30, 33])
    m = small_forest(n_estimators=5).fit(X, X.srad)
    Xt = X.iloc[:10].copy()
    Xt.loc[Xt.index[3], column] = level
    with pytest.raises(UnknownLevelError) as info:
        m.predict(Xt)
    msg = str(info.value)
    assert repr(column) in msg and str(level) in msg
    assert isinstance(info.value, ValueError)


def test_column_order_at_prediction_does_not_matter():
    X = make_X(150, seed=14)
    m = small_forest().fit(X, X.srad + X.vpd)
    Xt = make_X(40, seed=15)
    shuffled = Xt[list(reversed(Xt.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(m.predict(shuffled), m.predict(Xt))


def test_fit_rows_equals_fit_on_subset():
    X = make_X(120, seed=21, veg=[21, 30, 33])
    y = X.srad + 50 * (X.veg_type == 30)
    rows = np.nonzero(X.veg_type.to_numpy() != 33)[0]
    a = small_forest().fit(X, y, rows=rows)
    b = small_forest().fit(X.iloc[rows].reset_index(drop=True), y.iloc[rows].to_numpy())
    assert a.known_levels("veg_type") == [21, 30]  # levels from the training rows only
    Xt = make_X(30, seed=22, veg=[21, 30])
    np.testing.assert_array_equal(a.predict(Xt), b.predict(Xt))


# ---------------------------------------------------------------------- seeds and learning


def test_same_seed_same_predictions_different_seed_different():
    X = make_X(200, seed=16)
    y = X.srad + 100 * X.ndvi
    Xt = make_X(50, seed=17)
    a = small_forest(random_state=1).fit(X, y).predict(Xt)
    b = small_forest(random_state=1).fit(X, y).predict(Xt)
    c = small_forest(random_state=2).fit(X, y).predict(Xt)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_learns_a_linear_function():
    X = make_X(400, seed=18)
    y = 3.0 * X.srad
    Xt = make_X(400, seed=19)
    m = FluxForest(n_estimators=50, random_state=448).fit(X, y)
    assert r2(y, m.predict(X)) > 0.95
    assert r2(3.0 * Xt.srad, m.predict(Xt)) > 0.8


# ---------------------------------------------------------------------- persistence


@pytest.mark.parametrize("central", ["mean", "qrf_median"])
def test_save_load_round_trip(tmp_path, central):
    X = make_X(150, seed=23, veg=[1, 21, 90])
    y = X.srad + 40 * (X.veg_type == 90)
    m = small_forest(central=central, mtry=7, nodesize=3, random_state=4).fit(X, y)
    path = tmp_path / "gpp.npz"
    m.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["gpp.npz"]  # no temporary left behind
    back = FluxForest.load(path)
    assert back.get_params() == m.get_params()
    assert back.mtry_ == 7 and back.feature_names_ == list(PREDICTOR_NAMES)
    assert back.known_levels("veg_type") == [21, 31, 90]
    Xt = make_X(40, seed=24, veg=[1, 21, 31, 90]).astype({"veg_type": float})
    np.testing.assert_array_equal(back.predict(Xt), m.predict(Xt))
    if central == "qrf_median":
        q = (0.05, 0.5, 0.95)
        np.testing.assert_array_equal(back.predict_quantiles(Xt, q), m.predict_quantiles(Xt, q))
    with pytest.raises(UnknownLevelError, match="veg_type"):
        back.predict(Xt.assign(veg_type=33))


def test_save_accepts_numpy_integer_parameters(tmp_path):
    X = make_X(60, seed=30)
    m = small_forest(n_estimators=np.int64(5), mtry=np.int64(3), random_state=np.int64(2)).fit(X, X.srad)
    m.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(FluxForest.load(tmp_path / "m.npz").predict(X), m.predict(X))


def test_save_load_string_levels(tmp_path):
    X = make_X(60, seed=31)[["srad", "vpd"]].assign(land=np.resize(["dry", "wet", "moist"], 60))
    y = X.srad + 100 * (X.land == "wet")
    m = small_forest(n_estimators=5, categorical=("land",)).fit(X, y)
    assert m.known_levels("land") == ["dry", "moist", "wet"]
    m.save(tmp_path / "m.npz")
    back = FluxForest.load(tmp_path / "m.npz")
    assert back.known_levels("land") == ["dry", "moist", "wet"]
    np.testing.assert_array_equal(back.predict(X), m.predict(X))


# ---------------------------------------------------------------------- quantile regression forest

# one draw per leaf: the helpers below reproduce each tree's bootstrap (see tests/test_rf.py)
_M64, _MULT = (1 << 64) - 1, 2685821657736338717


def _bootstrap_counts(seed, n_trees, n):
    seeds = np.random.SeedSequence(seed).generate_state(n_trees, dtype=np.uint64)
    seeds[seeds == 0] = 1
    out = []
    for x in map(int, seeds):
        c = np.zeros(n)
        for _ in range(n):
            x ^= x >> 12
            x ^= (x << 25) & _M64
            x ^= x >> 27
            c[int(((((x * _MULT) & _M64) >> 11) * (1.0 / 9007199254740992.0)) * n)] += 1
        out.append(c)
    return out


def step_data(n=300, seed=25):
    X = make_X(n, seed=seed)
    rng = np.random.default_rng(seed)
    truth = np.where(X.ndvi > 0.5, 10.0, 0.0)
    return X, truth + rng.normal(size=n), truth


def test_qrf_per_tree_values_are_training_responses_of_the_leaf():
    X, y, _ = step_data()
    m = small_forest(central="qrf_median", random_state=3).fit(X, y)
    M = m._matrix(X)
    leaves = m.forest_.apply(M)
    draws = m.leaf_draw_[leaves]  # (rows, trees)
    for t in range(leaves.shape[1]):
        for leaf in np.unique(leaves[:, t]):
            members = leaves[:, t] == leaf
            assert draws[members, t][0] in set(y[members])
    Xt = make_X(30, seed=26)
    per_tree = m.forest_.predict_trees(m._matrix(Xt), m.leaf_draw_)
    assert np.isin(per_tree, y).all()
    np.testing.assert_array_equal(m.predict(Xt), np.quantile(per_tree, 0.5, axis=1))


def test_qrf_draws_come_from_all_training_rows_not_only_in_bag():
    """Single-leaf trees: each tree keeps one of all n responses, uniformly (quantregForest)."""
    X = make_X(12, seed=27)
    y = np.arange(12.0)
    m = FluxForest(n_estimators=240, nodesize=100, central="qrf_median", random_state=8).fit(X, y)
    assert m.forest_.n_nodes == 240
    draws = m.leaf_draw_[m.forest_.roots].astype(int)
    assert np.bincount(draws, minlength=12).min() >= 5  # every row drawn (~20 times each)
    out_of_bag = [c[d] == 0 for c, d in zip(_bootstrap_counts(8, 240, 12), draws)]
    assert 0.2 < np.mean(out_of_bag) < 0.55  # (1 - 1/12)^12 = 0.35 of draws are out of bag
    np.testing.assert_array_equal(m.predict(X.iloc[:2]), np.median(draws))


def test_qrf_median_and_quantiles_on_noisy_step():
    X, y, truth = step_data()
    m = small_forest(n_estimators=60, central="qrf_median", random_state=3).fit(X, y)
    Xt, _, truth_t = step_data(n=200, seed=28)
    away = np.abs(Xt.ndvi - 0.5).to_numpy() > 0.1
    med = m.predict(Xt)
    assert np.abs(med - truth_t)[away].mean() < 0.8
    q = m.predict_quantiles(Xt, (0.1, 0.5, 0.9))
    assert q.shape == (200, 3)
    assert (np.diff(q, axis=1) >= 0).all()
    np.testing.assert_array_equal(q[:, 1], med)
    width = (q[:, 2] - q[:, 0])[away].mean()
    assert 1.0 < width < 4.5  # N(0, 1) noise: true 10-90 % width 2.56
    # the mean forest on the same data gives different (mean) central predictions
    mean = small_forest(n_estimators=60, random_state=3).fit(X, y).predict(Xt)
    assert not np.array_equal(mean, med)
    assert np.abs(mean - truth_t)[away].mean() < 0.8


# ---------------------------------------------------------------------- interpretation


def relevant_data(n=200, seed=29):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.uniform(0, 10, n),
            "n1": rng.uniform(0, 10, n),
            "n2": rng.uniform(0, 10, n),
            "month": rng.integers(1, 13, n),
        }
    )
    return X, 2.0 * X.x1.to_numpy()


def test_permutation_importance():
    X, y = relevant_data()
    m = FluxForest(n_estimators=20, mtry=2).fit(X, y)
    X0 = X.copy()
    p0 = m.predict(X)
    imp = permutation_importance(m, X, y, n_repeats=4, seed=1)
    assert imp.predictor.iloc[0] == "x1" and set(imp.predictor) == set(X.columns)
    assert (imp.n_repeats == 4).all()
    assert imp.importance.is_monotonic_decreasing
    top = imp.set_index("predictor")
    assert top.loc["x1", "importance"] > 5.0  # permuting x1 costs ~ the SD of y (5.8)
    assert top.loc["x1", "importance"] > 10 * top.loc[["n1", "n2", "month"], "importance"].abs().max()
    assert (imp.importance_sd >= 0).all() and imp.importance_sd.notna().all()
    base = np.sqrt(np.mean((p0 - y) ** 2))
    assert imp.baseline_rmse.iloc[0] == pytest.approx(base, rel=1e-12)
    # by hand: the mean over repeats of RMSE(permuted) - RMSE(intact), same permutations
    rng = np.random.default_rng(np.random.SeedSequence([1, 11]))
    scores = {}
    for name in m.feature_names_:
        s = []
        for _ in range(4):
            perm = rng.permutation(len(X))
            Xp = X.assign(**{name: X[name].to_numpy()[perm]})
            s.append(np.sqrt(np.mean((m.predict(Xp) - y) ** 2)) - base)
        scores[name] = s
    for name, s in scores.items():
        assert top.loc[name, "importance"] == pytest.approx(np.mean(s), rel=1e-9, abs=1e-12)
        assert top.loc[name, "importance_sd"] == pytest.approx(np.std(s, ddof=1), rel=1e-9, abs=1e-12)
    # inputs untouched
    pd.testing.assert_frame_equal(X, X0)
    np.testing.assert_array_equal(m.predict(X), p0)


def test_partial_dependence():
    X, y = relevant_data()
    m = FluxForest(n_estimators=20, mtry=2).fit(X, y)
    pdx = partial_dependence(m, X, "x1")
    assert len(pdx) == 51 and (pdx.predictor == "x1").all() and not pdx.categorical.any()
    assert pdx.value.iloc[0] == X.x1.min() and pdx.value.iloc[-1] == pytest.approx(X.x1.max())
    np.testing.assert_allclose(np.diff(pdx.value), (X.x1.max() - X.x1.min()) / 50)
    # y = 2 x1: PD increases over the range with slope near 2
    slope = (pdx.yhat.iloc[-1] - pdx.yhat.iloc[0]) / (pdx.value.iloc[-1] - pdx.value.iloc[0])
    assert 1.5 < slope < 2.2
    assert np.corrcoef(pdx.value, pdx.yhat)[0, 1] > 0.99
    assert (np.diff(pdx.yhat) > -0.5).all()
    # by hand at one grid value: mean prediction with x1 set everywhere
    v = pdx.value.iloc[10]
    assert pdx.yhat.iloc[10] == pytest.approx(m.predict(X.assign(x1=v)).mean(), rel=1e-12)
    # fewer unique values than points: one point per ... min(unique, 51) points
    Xr = X.assign(n1=np.round(X.n1))  # 0..10: 11 unique values
    mr = FluxForest(n_estimators=5, mtry=2).fit(Xr, y)
    pdr = partial_dependence(mr, Xr, "n1")
    np.testing.assert_allclose(pdr.value, np.arange(11.0))
    # factor: one row per training level, values are the levels
    pdm = partial_dependence(m, X, "month")
    assert list(pdm.value) == list(range(1, 13)) and pdm.categorical.all()
    assert pdm.yhat.iloc[6] == pytest.approx(m.predict(X.assign(month=7)).mean(), rel=1e-12)
    # rows: PD over a subset of the training rows
    rows = np.arange(50)
    pds = partial_dependence(m, X, "x1", rows=rows)
    pdsub = partial_dependence(m, X.iloc[rows], "x1")
    pd.testing.assert_frame_equal(pds, pdsub)


def test_importance_and_partial_dependence_use_the_qrf_median():
    X, y = relevant_data(n=120, seed=31)
    y = y + np.random.default_rng(5).standard_t(2, len(y))
    med = FluxForest(n_estimators=15, mtry=2, central="qrf_median", random_state=2).fit(X, y)
    mean = FluxForest(n_estimators=15, mtry=2, random_state=2).fit(X, y)  # the same trees
    p_med, p_mean = med.predict(X), mean.predict(X)
    assert np.mean(np.abs(p_med - p_mean)) > 0.1
    imp = permutation_importance(med, X, y, n_repeats=3, seed=4).set_index("predictor")
    base = np.sqrt(np.mean((p_med - y) ** 2))
    assert imp.baseline_rmse.iloc[0] == pytest.approx(base, rel=1e-12)
    assert base != pytest.approx(np.sqrt(np.mean((p_mean - y) ** 2)), rel=1e-3)
    # by hand with the median predictions, the same permutations
    rng = np.random.default_rng(np.random.SeedSequence([4, 11]))
    for name in med.feature_names_:
        s = [
            np.sqrt(np.mean((med.predict(X.assign(**{name: X[name].to_numpy()[rng.permutation(len(X))]})) - y) ** 2))
            - base
            for _ in range(3)
        ]
        assert imp.loc[name, "importance"] == pytest.approx(np.mean(s), rel=1e-9, abs=1e-12)
    pdx = partial_dependence(med, X, "x1", n_points=5)
    for v, yh in zip(pdx.value, pdx.yhat):
        assert yh == pytest.approx(med.predict(X.assign(x1=v)).mean(), rel=1e-12)
    assert not np.allclose(pdx.yhat, partial_dependence(mean, X, "x1", n_points=5).yhat)
