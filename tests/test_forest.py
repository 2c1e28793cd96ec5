"""Tests of the random forest wrapper (abzflux.forest.FluxForest)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import r2_score

from abzflux.forest import FluxForest, UnknownLevelError
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


def test_predictor_set():
    assert len(PREDICTOR_NAMES) == 17
    assert set(CATEGORICAL) == {"month", "veg_type"}


# ------------------------------------------------------------------------- hyper-parameters


def test_default_mtry_counts_logical_predictors():
    X = make_X(120)
    m = small_forest().fit(X, X.srad)
    assert m.mtry_ == 5  # floor(17 / 3)
    assert m.model_.n_features_in_ == 17  # one column per categorical, no one-hot
    assert m.model_.max_features == 5
    assert all(t.max_features_ == 5 for t in m.model_.estimators_)


@pytest.mark.parametrize("mtry", [1, 9, 17])
def test_explicit_mtry(mtry):
    X = make_X(60)
    m = small_forest(mtry=mtry, n_estimators=3).fit(X, X.srad)
    assert m.mtry_ == mtry
    assert m.model_.max_features == mtry


def test_default_mtry_with_few_columns():
    X = make_X(60)[["srad", "vpd"]]
    m = small_forest(n_estimators=3).fit(X, X.srad)
    assert m.mtry_ == 1  # max(floor(2 / 3), 1)


@pytest.mark.parametrize("mtry", [18, -1, 100])
def test_mtry_out_of_range(mtry):
    X = make_X(40)
    with pytest.raises(ValueError, match="mtry"):
        small_forest(mtry=mtry, n_estimators=2).fit(X, X.srad)


def test_mtry_zero_is_out_of_range():
    X = make_X(40)
    with pytest.raises(ValueError, match="mtry"):
        small_forest(mtry=0, n_estimators=2).fit(X, X.srad)


@pytest.mark.parametrize("nodesize,split", [(5, 6), (1, 2), (10, 11)])
def test_nodesize_maps_to_min_samples_split(nodesize, split):
    X = make_X(200)
    m = small_forest(nodesize=nodesize, n_estimators=10).fit(X, X.srad)
    assert m.model_.min_samples_split == split
    assert m.model_.min_samples_leaf == 1
    assert m.model_.bootstrap is True
    # no node with nodesize rows or fewer was split
    for t in m.model_.estimators_:
        tr = t.tree_
        internal = tr.children_left != -1
        assert internal.any()
        assert (tr.n_node_samples[internal] > nodesize).all()


def test_matches_sklearn_reference_on_numeric_predictors():
    """With no categorical columns the wrapper is exactly RandomForestRegressor."""
    X = make_X(150, seed=1).drop(columns=["month", "veg_type"])
    y = 2 * X.srad + 50 * X.vpd
    m = FluxForest(n_estimators=15, nodesize=3, random_state=11).fit(X, y)
    ref = RandomForestRegressor(n_estimators=15, max_features=5, min_samples_split=4,
                                random_state=11).fit(X.to_numpy(np.float32), y)
    Xt = make_X(50, seed=2).drop(columns=["month", "veg_type"])
    np.testing.assert_array_equal(m.predict(Xt), ref.predict(Xt.to_numpy(np.float32)))


# --------------------------------------------------------------------- categorical encoding


def test_levels_ranked_by_training_mean():
    n = 240
    X = make_X(n, seed=3)
    # balanced: every veg level sees every month equally often, so level means differ only
    # by the level's own effect
    X["veg_type"] = np.resize(np.repeat([21, 30, 70, 160], 12), n)
    X["month"] = np.resize(np.arange(1, 13), n)
    veg_effect = {21: 5.0, 30: -3.0, 70: 10.0, 160: 0.0}
    # month effect: the larger the month, the lower y, except month 6 which is highest
    month_effect = {mo: -float(mo) for mo in range(1, 13)}
    month_effect[6] = 100.0
    y = X.veg_type.map(veg_effect) + X.month.map(month_effect)
    m = small_forest(n_estimators=2).fit(X, y)
    # veg_type means: 30 < 160 < 21 < 70
    veg_means = y.groupby(X.veg_type).mean()
    assert list(veg_means.sort_values().index) == [30, 160, 21, 70]
    assert m.levels_["veg_type"] == {30: 0.0, 160: 1.0, 21: 2.0, 70: 3.0}
    assert m.levels_["month"] == {12: 0.0, 11: 1.0, 10: 2.0, 9: 3.0, 8: 4.0, 7: 5.0, 5: 6.0,
                                  4: 7.0, 3: 8.0, 2: 9.0, 1: 10.0, 6: 11.0}
    assert m.known_levels("veg_type") == [21, 30, 70, 160]
    assert m.known_levels("srad") == []


def test_encoding_matches_hand_ranked_sklearn_forest():
    """Predictions equal a RandomForestRegressor fit on columns we rank-encode by hand."""
    X = make_X(200, seed=4, veg=[21, 33, 90])
    y = X.srad + X.veg_type.map({21: 40.0, 33: -20.0, 90: 0.0}) + 3 * X.month
    m = FluxForest(n_estimators=10, random_state=5).fit(X, y)
    veg_rank = {33: 0.0, 90: 1.0, 21: 2.0}  # means -20 < 0 < 40 (+ comparable srad, month)
    assert m.levels_["veg_type"] == veg_rank
    month_means = {mo: y[X.month == mo].mean() for mo in range(1, 13)}
    month_rank = {mo: float(r) for r, mo in enumerate(sorted(month_means, key=month_means.get))}
    assert m.levels_["month"] == month_rank

    def encode(df):
        e = df.copy()
        e["veg_type"] = df.veg_type.map(veg_rank)
        e["month"] = df.month.map(month_rank)
        return e.to_numpy(np.float32)

    ref = RandomForestRegressor(n_estimators=10, max_features=5, min_samples_split=6,
                                random_state=5).fit(encode(X), y)
    Xt = make_X(60, seed=6, veg=[21, 33, 90])
    np.testing.assert_array_equal(m.predict(Xt), ref.predict(encode(Xt)))


def test_categorical_only_signal_is_recovered_exactly():
    """y depends only on veg_type and month; other predictors constant: predictions are the
    cell means, which a forest can only reach if the encoding keeps levels separable."""
    n = 12 * 4 * 10
    X = make_X(n, seed=7)
    for c in PREDICTOR_NAMES:
        if c not in CATEGORICAL:
            X[c] = 1.0
    X["veg_type"] = np.resize(np.repeat([21, 41, 80, 120], 12), n)
    X["month"] = np.resize(np.arange(1, 13), n)
    veg_effect = {21: 1.0, 41: 7.0, 80: -4.0, 120: 2.5}
    y = X.veg_type.map(veg_effect) + 0.5 * X.month
    # mtry=17: every split sees every predictor (with mtry < 17 and 15 constant columns,
    # scikit-learn occasionally leaves an impure node unsplit, whatever the encoding)
    m = FluxForest(n_estimators=10, nodesize=1, mtry=17, random_state=0).fit(X, y)
    np.testing.assert_allclose(m.predict(X), y, atol=1e-9)


def test_veg_class_1_is_recoded_to_31():
    X = make_X(300, seed=8, veg=[1, 21, 90])
    y = 2 * X.srad + 30 * (X.veg_type == 1)
    m = small_forest().fit(X, y)
    assert 31 in m.levels_["veg_type"] and 1 not in m.levels_["veg_type"]
    assert m.known_levels("veg_type") == [21, 31, 90]
    X31 = X.assign(veg_type=X.veg_type.replace({1: 31}))
    np.testing.assert_array_equal(m.predict(X31), m.predict(X))
    # the forest learnt the class: class-1 rows are predicted ~30 higher than otherwise
    Xt = X.iloc[:50].copy()
    hi = m.predict(Xt.assign(veg_type=31))
    lo = m.predict(Xt.assign(veg_type=21))
    assert (hi - lo).mean() > 10


def test_trained_on_31_predicts_class_1():
    X = make_X(200, seed=9, veg=[31, 33])
    y = X.srad + 20 * (X.veg_type == 31)
    m = small_forest().fit(X, y)
    assert m.levels_["veg_type"] == {33: 0.0, 31: 1.0}
    X1 = X.assign(veg_type=X.veg_type.replace({31: 1}))
    np.testing.assert_array_equal(m.predict(X1), m.predict(X))


def test_float_codes_match_integer_levels():
    """The pipeline extracts veg_type and month as float64; they must hit the integer levels."""
    X = make_X(150, seed=10)
    m = small_forest().fit(X, X.srad)
    Xf = X.astype({"veg_type": np.float64, "month": np.float64})
    np.testing.assert_array_equal(m.predict(Xf), m.predict(X))


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
    assert a.levels_ == b.levels_
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
    assert r2_score(y, m.predict(X)) > 0.95
    assert r2_score(3.0 * Xt.srad, m.predict(Xt)) > 0.8
    # and it is a regressor in the scikit-learn sense
    assert m.score(Xt, 3.0 * Xt.srad) == pytest.approx(r2_score(3.0 * Xt.srad, m.predict(Xt)))


def test_sklearn_clone_keeps_parameters():
    from sklearn.base import clone
    m = FluxForest(n_estimators=7, mtry=3, nodesize=2, random_state=9)
    c = clone(m)
    assert c.get_params() == m.get_params()
