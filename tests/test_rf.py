"""Engine-level tests of the numba regression forest (abzflux._rf).

The bootstrap of every tree is reproduced here in pure Python from the documented random
stream (``SeedSequence(seed).generate_state(n_trees)`` seeding one xorshift64* generator per
tree), so leaf values, weighted counts and thresholds can be checked exactly on the sample
each tree actually drew. A small pure-Python re-implementation of R's ``regTree`` rule is
compared node by node with the compiled trees.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from abzflux._rf import PackedForest, grow_forest, presort

# --------------------------------------------------------------------------- helpers
_M64 = (1 << 64) - 1
_MULT = 2685821657736338717


def _randint(state: list, k: int) -> int:
    """xorshift64* step and uniform integer in [0, k), as the engine draws them."""
    x = state[0]
    x ^= x >> 12
    x ^= (x << 25) & _M64
    x ^= x >> 27
    state[0] = x
    r = (x * _MULT) & _M64
    return int(((r >> 11) * (1.0 / 9007199254740992.0)) * k)


def tree_states(seed: int, n_trees: int) -> list[list[int]]:
    seeds = np.random.SeedSequence(seed).generate_state(n_trees, dtype=np.uint64)
    seeds[seeds == 0] = 1
    return [[int(s)] for s in seeds]


def bootstrap(state: list, pool, n: int) -> np.ndarray:
    counts = np.zeros(n)
    for _ in range(len(pool)):
        counts[pool[_randint(state, len(pool))]] += 1.0
    return counts


def bootstrap_counts(seed: int, n_trees: int, n: int, rows=None) -> list[np.ndarray]:
    pool = np.arange(n) if rows is None else np.asarray(rows)
    return [bootstrap(st, pool, n) for st in tree_states(seed, n_trees)]


def tree(f: PackedForest, t: int) -> dict:
    """Node arrays of tree t with children relative to the tree's root."""
    a = int(f.roots[t])
    b = int(f.roots[t + 1]) if t + 1 < f.n_trees else f.n_nodes
    nd = f.nodes[a:b]
    rel = lambda c: np.where(c >= 0, c - a, -1)  # noqa: E731
    return {
        "left": rel(nd["left"]),
        "right": rel(nd["right"]),
        "feat": nd["feat"],
        "thr": nd["thr"],
        "catmask": f.catmask[a:b],
        "value": f.value[a:b],
        "wcount": f.wcount[a:b],
        "root": a,
    }


def ref_tree(X, y, is_cat, counts, mtry, nodesize, state):
    """Pure-Python R regTree rule on one bootstrap sample (same random draws as the engine).

    ``y`` must be centred as the engine centres it (minus the mean over the training rows);
    leaf values come back in centred units.
    """
    n, p = X.shape
    order = [np.argsort(X[:, f], kind="stable") for f in range(p)]
    perm = list(range(p))
    nodes = []

    def new():
        nodes.append({"left": -1, "right": -1, "feat": 0, "thr": 0.0, "catmask": 0, "value": 0.0, "wcount": 0.0})
        return len(nodes) - 1

    def grow(k, inside):
        rows = [[r for r in order[f] if counts[r] > 0 and inside[r]] for f in range(p)]
        W = Sy = Syy = 0.0
        for r in rows[0]:
            W += counts[r]
            Sy += counts[r] * y[r]
            Syy += counts[r] * y[r] * y[r]
        nd = nodes[k]
        nd["value"], nd["wcount"] = Sy / W, W
        if W <= nodesize or len({y[r] for r in rows[0]}) == 1 or len(rows[0]) < 2:
            return
        parent = Sy * Sy / W
        best, best_f, best_thr, best_mask = parent, -1, 0.0, 0
        for j in range(mtry):
            i = j + _randint(state, p - j)
            perm[j], perm[i] = perm[i], perm[j]
            f = perm[j]
            if is_cat[f]:
                lw, ls = {}, {}
                for r in rows[0]:
                    lv = int(X[r, f])
                    lw[lv] = lw.get(lv, 0.0) + counts[r]
                    ls[lv] = ls.get(lv, 0.0) + counts[r] * y[r]
                levels = sorted(lw, key=lambda lv: ls[lv] / lw[lv])  # stable: ties by code
                WL = SL = 0.0
                mask = 0
                for lv in levels[:-1]:
                    WL += lw[lv]
                    SL += ls[lv]
                    mask |= 1 << lv
                    crit = SL * SL / WL + (Sy - SL) * (Sy - SL) / (W - WL)
                    if crit > best:
                        best, best_f, best_mask = crit, f, mask
            else:
                rs = rows[f]
                WL = SL = 0.0
                for a in range(len(rs) - 1):
                    WL += counts[rs[a]]
                    SL += counts[rs[a]] * y[rs[a]]
                    xa, xb = X[rs[a], f], X[rs[a + 1], f]
                    if xa < xb:
                        crit = SL * SL / WL + (Sy - SL) * (Sy - SL) / (W - WL)
                        if crit > best:
                            best, best_f = crit, f
                            best_thr = 0.5 * (xa + xb)
                            if best_thr == xb:
                                best_thr = xa
        if best_f < 0 or best - parent <= 1e-12 * (Syy - parent):
            return
        if is_cat[best_f]:
            gl = np.array([(best_mask >> int(v)) & 1 == 1 for v in X[:, best_f]])
            nd["feat"], nd["catmask"] = -best_f - 1, best_mask
        else:
            gl = X[:, best_f] <= best_thr
            nd["feat"], nd["thr"] = best_f, best_thr
        lch, rch = new(), new()
        nd["left"], nd["right"] = lch, rch
        grow(lch, inside & gl)
        grow(rch, inside & ~gl)

    grow(new(), np.ones(n, bool))
    return nodes


def mixed_data(n=40, seed=0):
    """Two continuous features (one with ties), one factor with 5 levels, one noise feature."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.uniform(0, 1, n),
            rng.integers(0, 6, n).astype(float),
            rng.integers(0, 5, n).astype(float),
            rng.normal(size=n),
        ]
    )
    lv_effect = np.array([3.0, -1.0, 4.0, 0.0, 2.0])
    y = 5 * X[:, 0] + 0.5 * X[:, 1] + lv_effect[X[:, 2].astype(int)] + 0.3 * rng.normal(size=n)
    return X, y, np.array([False, False, True, False]), np.array([0, 0, 5, 0])


# --------------------------------------------------------------------------- reference rule
@pytest.mark.parametrize("mtry,nodesize,seed", [(4, 1, 1), (2, 5, 2), (1, 3, 3)])
def test_trees_match_reference_regtree(mtry, nodesize, seed):
    """Node by node: same splits, thresholds, level masks, weighted counts and leaf means."""
    X, y, is_cat, n_levels = mixed_data(seed=seed)
    f = grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=4, mtry=mtry, nodesize=nodesize, seed=seed)
    assert f.n_trees == 4
    for t, st in enumerate(tree_states(seed, 4)):
        counts = bootstrap(st, np.arange(len(y)), len(y))
        ref = ref_tree(X, y - y.mean(), is_cat, counts, mtry, nodesize, st)
        for r in ref:
            r["value"] += y.mean()
        got = tree(f, t)
        assert len(got["left"]) == len(ref)
        np.testing.assert_array_equal(got["left"], [r["left"] for r in ref])
        np.testing.assert_array_equal(got["right"], [r["right"] for r in ref])
        internal = got["left"] >= 0
        np.testing.assert_array_equal(got["feat"][internal], [r["feat"] for r in ref if r["left"] >= 0])
        cont = internal & (got["feat"] >= 0)
        cat = internal & (got["feat"] < 0)
        np.testing.assert_array_equal(got["thr"][cont], [r["thr"] for r, c in zip(ref, cont) if c])
        np.testing.assert_array_equal(got["catmask"][cat], [r["catmask"] for r, c in zip(ref, cat) if c])
        np.testing.assert_allclose(got["value"], [r["value"] for r in ref], rtol=1e-13)
        np.testing.assert_array_equal(got["wcount"], [r["wcount"] for r in ref])


def test_reference_comparison_exercises_factor_splits():
    """Guard for the test above: its data do produce both kinds of split."""
    X, y, is_cat, n_levels = mixed_data(seed=1)
    f = grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=4, mtry=4, nodesize=1, seed=1)
    internal = f.nodes["left"] >= 0
    assert (f.nodes["feat"][internal] == -3).any()
    assert (f.nodes["feat"][internal] >= 0).any()


# --------------------------------------------------------------------------- hand-made cases
def test_step_function_root_split_at_midpoint():
    x = np.repeat(np.arange(8.0), 5)  # 0..7, five rows each
    y = np.where(x <= 3, 0.0, 10.0)
    X = x[:, None]
    f = grow_forest(X, y, is_cat=[False], n_levels=[0], n_trees=6, mtry=1, nodesize=1, seed=5)
    n_exact = 0
    for t, c in enumerate(bootstrap_counts(5, 6, len(y))):
        tr = tree(f, t)
        lo, hi = x[(c > 0) & (x <= 3)].max(), x[(c > 0) & (x > 3)].min()
        assert tr["thr"][0] == 0.5 * (lo + hi)  # midpoint of the adjacent in-bag values
        n_exact += tr["thr"][0] == 3.5
        assert len(tr["left"]) == 3  # both children are pure: leaves
        assert tr["value"][tr["left"][0]] == 0.0 and tr["value"][tr["right"][0]] == 10.0
        assert tr["value"][0] == pytest.approx(c @ y / c.sum())  # bootstrap-weighted mean
        assert tr["wcount"][tr["left"][0]] == c[x <= 3].sum()
        assert tr["wcount"][0] == len(y)
    assert n_exact >= 5  # rows with x = 3 and x = 4 are in nearly every bootstrap
    np.testing.assert_array_equal(f.predict(np.array([[0.0], [3.0], [3.2], [4.0], [9.0]])), [0, 0, 0, 10, 10])


def test_leaf_values_are_bootstrap_weighted_means():
    X, y, is_cat, n_levels = mixed_data(n=60, seed=7)
    f = grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=5, mtry=2, nodesize=3, seed=9)
    leaves = f.apply(X)
    for t, c in enumerate(bootstrap_counts(9, 5, len(y))):
        for leaf in np.unique(leaves[c > 0, t]):
            inbag = (leaves[:, t] == leaf) & (c > 0)
            assert f.value[leaf] == pytest.approx(c[inbag] @ y[inbag] / c[inbag].sum(), rel=1e-12)
            assert f.wcount[leaf] == c[inbag].sum()
        # every leaf of the tree holds in-bag rows; out-of-bag rows land in those same leaves
        tr = tree(f, t)
        n_leaves = int((tr["left"] < 0).sum())
        assert len(np.unique(leaves[c > 0, t])) == n_leaves


def test_nodesize_at_least_n_gives_single_leaf_trees():
    X, y, is_cat, n_levels = mixed_data(n=30, seed=11)
    f = grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=8, mtry=4, nodesize=30, seed=4)
    assert f.n_nodes == 8 and (f.nodes["left"] == -1).all()
    assert (f.wcount == 30).all()
    counts = bootstrap_counts(4, 8, 30)
    np.testing.assert_allclose(f.value, [c @ y / 30 for c in counts], rtol=1e-12)
    assert (f.value >= y.min()).all() and (f.value <= y.max()).all()
    assert len(np.unique(f.value)) > 1  # different bootstraps, different means
    np.testing.assert_allclose(f.predict(X[:3]), np.mean(f.value), rtol=1e-12)


@pytest.mark.parametrize("nodesize", [1, 5, 12])
def test_nodesize_rule_on_weighted_counts(nodesize):
    rng = np.random.default_rng(nodesize)
    X = rng.uniform(size=(120, 3))
    y = X @ [3.0, -2.0, 1.0] + rng.normal(scale=0.1, size=120)  # no ties: every node is splittable
    f = grow_forest(X, y, is_cat=np.zeros(3, bool), n_levels=np.zeros(3), n_trees=10, mtry=3, nodesize=nodesize, seed=1)
    internal = f.nodes["left"] >= 0
    assert (f.wcount[internal] > nodesize).all()
    leaf = ~internal
    # a leaf holding several distinct rows with different y and weight above nodesize would
    # still have been split (all features continuous and tie-free)
    leaves = f.apply(X)
    for t, c in enumerate(bootstrap_counts(1, 10, 120)):
        for node in np.unique(leaves[c > 0, t]):
            distinct = ((leaves[:, t] == node) & (c > 0)).sum()
            assert f.wcount[node] <= nodesize or distinct < 2
    assert (f.wcount[leaf] <= nodesize).any()


def test_larger_nodesize_gives_smaller_trees():
    X, y, is_cat, n_levels = mixed_data(n=80, seed=2)
    sizes = [
        grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=5, mtry=2, nodesize=ns, seed=3).n_nodes
        for ns in (1, 5, 20)
    ]
    assert sizes[0] > sizes[1] > sizes[2]


def test_factor_split_groups_levels_by_node_mean():
    """Levels 0..3 with means 0, 10, 0, 10: one split sends {0, 2} one way and {1, 3} the other,
    which no threshold on the codes could do."""
    code = np.tile(np.arange(4.0), 10)
    y = np.array([0.0, 10.0, 0.0, 10.0])[code.astype(int)]
    X = np.column_stack([code, np.linspace(0, 1, 40)])  # plus an irrelevant continuous feature
    f = grow_forest(X, y, is_cat=[True, False], n_levels=[4, 0], n_trees=5, mtry=2, nodesize=1, seed=2)
    for t in range(5):
        tr = tree(f, t)
        assert tr["feat"][0] == -1  # factor 0 encoded as -(0 + 1)
        assert int(tr["catmask"][0]) == 0b0101  # lower-mean levels {0, 2} go left
        assert len(tr["left"]) == 3  # depth 1: both children pure
        assert tr["value"][tr["left"][0]] == 0.0 and tr["value"][tr["right"][0]] == 10.0
    np.testing.assert_array_equal(f.predict(np.array([[0, 0.5], [1, 0.5], [2, 0.5], [3, 0.5]])), [0, 10, 0, 10])
    np.testing.assert_array_equal(f.predict(X), y)


def test_factor_with_64_levels_uses_top_bit():
    code = np.tile(np.arange(64.0), 3)
    y = np.where(code == 63, 10.0, 0.0) + np.where(code == 0, -5.0, 0.0)
    X = code[:, None]
    f = grow_forest(X, y, is_cat=[True], n_levels=[64], n_trees=5, mtry=1, nodesize=1, seed=1)
    np.testing.assert_array_equal(f.predict(np.array([[63.0], [0.0], [31.0], [62.0]])), [10, -5, 0, 0])
    with pytest.raises(ValueError, match="64 levels"):
        grow_forest(np.tile(np.arange(65.0), 2)[:, None], np.arange(130.0), is_cat=[True], n_levels=[65])


def test_constant_response_gives_single_leaf_trees():
    X, _, is_cat, n_levels = mixed_data(n=30)
    f = grow_forest(X, np.full(30, 2.5), is_cat=is_cat, n_levels=n_levels, n_trees=6, mtry=4, nodesize=1)
    assert f.n_nodes == 6
    np.testing.assert_array_equal(f.value, 2.5)
    np.testing.assert_array_equal(f.predict(X), 2.5)


def test_rows_subset_equals_forest_on_those_rows():
    """``rows`` trains on exactly those rows: same trees as a forest grown on X[rows]."""
    X, y, is_cat, n_levels = mixed_data(n=50, seed=4)
    rows = np.arange(0, 50, 2)[3:]
    y_poison = y.copy()
    y_poison[np.setdiff1d(np.arange(50), rows)] = 1e6  # rows outside the fold must never count
    a = grow_forest(
        X,
        y_poison,
        is_cat=is_cat,
        n_levels=n_levels,
        n_trees=5,
        mtry=2,
        nodesize=2,
        seed=6,
        rows=rows,
        order=presort(X),
    )
    b = grow_forest(X[rows], y[rows], is_cat=is_cat, n_levels=n_levels, n_trees=5, mtry=2, nodesize=2, seed=6)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.value, b.value)
    assert a.predict(X).max() <= y[rows].max()


# --------------------------------------------------------------------------- determinism
def test_same_seed_identical_other_seed_different():
    X, y, is_cat, n_levels = mixed_data(n=60, seed=5)
    kw = dict(is_cat=is_cat, n_levels=n_levels, n_trees=10, mtry=2, nodesize=3)
    a = grow_forest(X, y, seed=17, **kw)
    b = grow_forest(X, y, seed=17, **kw)
    c = grow_forest(X, y, seed=18, **kw)
    for k, v in a.to_arrays().items():
        np.testing.assert_array_equal(v, b.to_arrays()[k])
    assert a.n_nodes != c.n_nodes or not np.array_equal(a.value, c.value)
    assert not np.array_equal(a.predict(X), c.predict(X))


def test_results_do_not_depend_on_thread_count_or_batch():
    X, y, is_cat, n_levels = mixed_data(n=60, seed=6)
    kw = dict(is_cat=is_cat, n_levels=n_levels, n_trees=12, mtry=2, nodesize=2, seed=3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = grow_forest(X, y, **kw)
        pa = a.predict(X)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        b = grow_forest(X, y, **kw)
        pb = b.predict(X)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(pa, pb)
    c = grow_forest(X, y, batch=5, **kw)  # trees grown in batches of 5 instead of 64
    np.testing.assert_array_equal(c.nodes, a.nodes)
    np.testing.assert_array_equal(c.predict(X), pa)


# --------------------------------------------------------------------------- prediction API
def test_predict_is_mean_of_per_tree_values_and_apply_gives_leaves():
    X, y, is_cat, n_levels = mixed_data(n=50, seed=8)
    f = grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=7, mtry=2, nodesize=3, seed=1)
    Xt, _, _, _ = mixed_data(n=20, seed=9)
    per = f.predict_trees(Xt)
    assert per.shape == (20, 7)
    np.testing.assert_allclose(f.predict(Xt), per.mean(axis=1), rtol=1e-12)
    leaves = f.apply(Xt)
    assert leaves.shape == (20, 7) and leaves.dtype == np.int64
    assert (f.nodes["left"][leaves] == -1).all()
    np.testing.assert_array_equal(f.value[leaves], per)
    # leaf t lies inside tree t's slab of nodes
    ends = np.r_[f.roots[1:], f.n_nodes]
    assert ((leaves >= f.roots) & (leaves < ends)).all()
    # custom per-node values are used instead of the leaf means
    ones = np.arange(f.n_nodes, dtype=float)
    np.testing.assert_array_equal(f.predict_trees(Xt, ones), leaves)
    g = PackedForest.from_arrays(f.to_arrays())
    np.testing.assert_array_equal(g.predict(Xt), f.predict(Xt))


def test_prediction_routes_by_hand():
    """A tree whose structure is known: routing of new points follows threshold and mask."""
    code = np.tile(np.arange(3.0), 20)
    x = np.repeat(np.linspace(0, 1, 20), 3)
    y = np.where(code == 1, 100.0, 0.0) + np.where(x > 0.5, 1.0, 0.0)
    X = np.column_stack([x, code])
    f = grow_forest(X, y, is_cat=[False, True], n_levels=[0, 3], n_trees=3, mtry=2, nodesize=1, seed=0)
    Xt = np.array([[0.1, 1], [0.9, 1], [0.1, 0], [0.9, 2], [0.3, 2], [0.7, 0]])
    np.testing.assert_array_equal(f.predict(Xt), [100, 101, 0, 1, 0, 1])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("mtry", [0, -1, 5])
def test_mtry_out_of_range(mtry):
    X, y, is_cat, n_levels = mixed_data(n=20)
    with pytest.raises(ValueError, match="mtry"):
        grow_forest(X, y, is_cat=is_cat, n_levels=n_levels, n_trees=2, mtry=mtry)


# --------------------------------------------------------------------------- translation invariance
def test_split_rule_is_translation_invariant():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 60)
    X = x[:, None]
    kw = dict(is_cat=[False], n_levels=[0], n_trees=10, mtry=1, nodesize=1, seed=1)
    a = grow_forest(X, x, **kw)
    b = grow_forest(X, 1e6 + x, **kw)
    assert b.n_nodes == a.n_nodes
    np.testing.assert_allclose(b.predict(X) - 1e6, a.predict(X), atol=1e-6)


# --------------------------------------------------------------------------- skill
def test_skill_comparable_to_scikit_learn():
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(42)
    n, p = 1500, 6
    X = rng.uniform(-1, 1, size=(n, p))
    y = (
        np.sin(np.pi * X[:, 0]) * 2
        + X[:, 1] ** 2 * 3
        + X[:, 2]
        + 0.5 * X[:, 3] * X[:, 4]
        + rng.normal(scale=0.3, size=n)
    )
    tr, te = np.arange(1000), np.arange(1000, n)
    f = grow_forest(
        X[tr], y[tr], is_cat=np.zeros(p, bool), n_levels=np.zeros(p), n_trees=100, mtry=2, nodesize=5, seed=1
    )
    ref = RandomForestRegressor(n_estimators=100, max_features=2, min_samples_split=6, random_state=1, n_jobs=1).fit(
        X[tr], y[tr]
    )
    r2_ours = r2_score(y[te], f.predict(X[te]))
    r2_ref = r2_score(y[te], ref.predict(X[te]))
    assert r2_ours > 0.8
    assert abs(r2_ours - r2_ref) < 0.03


def test_level_layout_predicts_exactly_like_the_packed_forest_and_sklearn():
    from sklearn.ensemble import RandomForestRegressor

    from abzflux._rf import LevelForest, PackedForest

    rng = np.random.default_rng(5)
    n = 1500
    X = rng.normal(size=(n, 5))
    cat = rng.integers(0, 6, n).astype(np.float64)
    Xc = np.column_stack([X, cat])
    y = X[:, 0] * 2 + np.where(cat == 3, 4.0, 0.0) + rng.normal(size=n)
    for is_cat in (np.zeros(6, bool), np.array([False] * 5 + [True])):
        f = grow_forest(Xc, y, is_cat=is_cat, n_levels=np.where(is_cat, 6, 0), n_trees=30, mtry=3, nodesize=5, seed=3)
        lf = LevelForest.from_packed(f)
        assert lf.has_cat == bool(is_cat.any())
        Xt = np.column_stack([rng.normal(size=(5000, 5)), rng.integers(0, 6, 5000)])
        assert np.array_equal(lf.predict(Xt), f.predict(Xt))
        # breadth-first: children come after their parent; leaves never move
        internal = lf.child != np.arange(len(lf.child))
        assert (lf.child[internal] > np.nonzero(internal)[0]).all() and np.isinf(lf.thr[~internal]).all()
    rf = RandomForestRegressor(n_estimators=20, max_features=2, min_samples_leaf=3, random_state=0).fit(X, y)
    Xt = rng.normal(size=(4000, 5)).astype(np.float32)
    ref = rf.predict(Xt)
    assert np.array_equal(PackedForest.from_sklearn(rf).predict(Xt), ref)
    assert np.array_equal(LevelForest.from_sklearn(rf).predict(Xt), ref)


def test_level_float32_kernel_keeps_every_comparison_at_the_float32_boundary():
    """A split between two adjacent float32 values a < b has a float64 threshold that is no
    float32: rounded to nearest (ties to even) it would become b and send b left. The float32
    kernel rounds thresholds down, so a goes left and b right, exactly as in float64."""
    from abzflux._rf import LevelForest, _round_down_f32

    a = np.nextafter(np.float32(1.0), np.float32(2.0))  # odd last mantissa bit
    b = np.nextafter(a, np.float32(2.0))
    thr = (np.float64(a) + np.float64(b)) / 2
    assert np.float64(np.float32(thr)) == b  # the naive cast would be wrong here
    X = np.tile(np.array([[a], [b]], np.float64), (20, 1))
    y = np.tile([0.0, 10.0], 20)
    f = grow_forest(X, y, is_cat=np.zeros(1, bool), n_levels=np.zeros(1), n_trees=5, mtry=1, nodesize=1, seed=0)
    lf = LevelForest.from_packed(f)
    X32 = np.repeat(np.array([[a], [b]], np.float32), 600, axis=0)  # > one block of rows
    ref = f.predict(X32.astype(np.float64))
    assert ref[0] == 0.0 and ref[-1] == 10.0
    assert np.array_equal(lf.predict(X32), ref)
    assert np.array_equal(lf.predict(X32.astype(np.float64)), ref)  # float32-exact: same kernel
    # round-down property on arbitrary doubles
    rng = np.random.default_rng(0)
    t = np.r_[rng.normal(scale=1e3, size=10000), 1e39, -1e39, 0.0, -0.0, np.inf]
    t32 = _round_down_f32(t)
    assert (t32.astype(np.float64) <= t).all()
    nxt = np.nextafter(t32, np.float32(np.inf)).astype(np.float64)
    assert (nxt[np.isfinite(t)] > t[np.isfinite(t)]).all()


def test_level_forest_kernels_agree_with_per_row_traversal_for_factors_nan_and_float64():
    from abzflux._rf import LevelForest

    rng = np.random.default_rng(8)
    n = 2000
    X = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 7, n), rng.integers(0, 12, n)])
    y = X[:, 0] * 2 + np.where(X[:, 4] == 3, 4.0, 0.0) + np.sin(X[:, 5]) + rng.normal(size=n)
    is_cat = np.array([False] * 4 + [True, True])
    f = grow_forest(X, y, is_cat=is_cat, n_levels=np.array([0, 0, 0, 0, 7, 12]), n_trees=25, mtry=3, nodesize=3, seed=2)
    lf = LevelForest.from_packed(f)
    assert lf.has_cat
    Xt = np.column_stack([rng.normal(size=(3000, 4)), rng.integers(0, 7, 3000), rng.integers(0, 12, 3000)])
    Xt32 = Xt.astype(np.float32)
    assert np.array_equal(lf.predict(Xt32), f.predict(Xt32.astype(np.float64)))  # float32 kernel
    assert np.array_equal(lf.predict(Xt), f.predict(Xt))  # float64 kernel (values are no float32s)
    # NaN in a numeric predictor goes right at every split and stops at the leaf
    Xn = Xt.copy()
    Xn[::7, 0] = np.nan
    assert np.array_equal(lf.predict(Xn), f.predict(Xn))
    assert np.isfinite(lf.predict(Xn)).all()


def test_level_forest_compaction_levels_never_change_a_prediction():
    """Rows still travelling are compacted into a list after levels (a, b) chosen per tree. Every
    choice, from none to compacting right after the root, must give the per-row answer, for
    numeric and factor splits, float32 and float64 rows; and the chosen levels must compact
    inside the deep trees (a < b < depth), or the fast path is not being exercised at all."""
    from abzflux._rf import LevelForest, _compaction_levels

    rng = np.random.default_rng(11)
    n = 3000
    X = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 7, n)])
    y = X[:, 0] * 2 + np.where(X[:, 4] == 3, 4.0, 0.0) + np.sin(3 * X[:, 1]) + rng.normal(size=n)
    Xt = np.column_stack([rng.normal(size=(2600, 4)), rng.integers(0, 7, 2600)])
    for is_cat in (np.zeros(5, bool), np.array([False] * 4 + [True])):
        f = grow_forest(X, y, is_cat=is_cat, n_levels=np.where(is_cat, 7, 0), n_trees=12, mtry=3, nodesize=2, seed=4)
        lf = LevelForest.from_packed(f)
        ref = f.predict(Xt)
        ref32 = f.predict(Xt.astype(np.float32).astype(np.float64))
        chosen = lf.stages.copy()
        assert np.array_equal(chosen, _compaction_levels(lf.child, lf.roots, lf.depth))
        assert ((chosen[:, 0] < chosen[:, 1]) & (chosen[:, 1] < lf.depth)).mean() > 0.5
        assert (chosen[:, 0] <= chosen[:, 1]).all() and (chosen[:, 1] <= lf.depth).all()
        d = lf.depth[:, None]
        for stages in (
            chosen,
            np.hstack([d, d]),
            np.zeros_like(chosen),
            np.hstack([0 * d, d]),
            np.hstack([0 * d + 1, 0 * d + 2]),
            np.hstack([d // 2, d // 2]),
            np.hstack([d // 3, d - 1]),
        ):
            lf.stages = np.ascontiguousarray(np.minimum(stages, d), np.int32)
            assert np.array_equal(lf.predict(Xt), ref), stages[:3]
            assert np.array_equal(lf.predict(Xt.astype(np.float32)), ref32), stages[:3]


def test_level_forest_block_sizes_never_change_a_prediction():
    """Blocks of rows walk each tree in sub-blocks; any block / sub-block size, including ones
    that leave a short last block or sub-block, gives the per-row answer on deep trees with
    factor splits, float32 and float64 rows; ``_block_rows`` covers a batch with blocks of at
    most the largest size, in a multiple of the thread count when a batch is small."""
    import numba

    from abzflux._rf import _LBLOCK, _LBLOCK_MIN, LevelForest, _block_rows

    rng = np.random.default_rng(12)
    n = 4000
    X = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 9, n)])
    y = X[:, 0] * 2 + np.where(X[:, 4] == 3, 4.0, 0.0) + np.sin(3 * X[:, 1]) + rng.normal(size=n)
    is_cat = np.array([False] * 4 + [True])
    f = grow_forest(X, y, is_cat=is_cat, n_levels=np.where(is_cat, 9, 0), n_trees=8, mtry=3, nodesize=1, seed=5)
    lf = LevelForest.from_packed(f)
    assert lf.depth.min() >= 18  # deep trees: compaction and long tails are exercised
    Xt = np.column_stack([rng.normal(size=(5300, 4)), rng.integers(0, 9, 5300)])
    ref = f.predict(Xt)
    ref32 = f.predict(Xt.astype(np.float32).astype(np.float64))
    assert (lf.block, lf.sub) == (_LBLOCK, _LBLOCK_MIN)
    for block, sub in ((_LBLOCK, _LBLOCK_MIN), (256, 256), (1000, 37), (5300, 5300), (7, 3), (4096, 4096), (1, 1)):
        lf.block, lf.sub = block, sub
        assert np.array_equal(lf.predict(Xt), ref), (block, sub)
        assert np.array_equal(lf.predict(Xt.astype(np.float32)), ref32), (block, sub)
    lf.block, lf.sub = _LBLOCK, _LBLOCK_MIN
    for k in (1, 255, 257, 4095, 4097):
        assert np.array_equal(lf.predict(Xt[:k]), ref[:k])
    threads = numba.get_num_threads()
    try:
        for nt in (1, 2, 3):
            numba.set_num_threads(min(nt, numba.config.NUMBA_NUM_THREADS))
            t = numba.get_num_threads()
            for nrow in (1, 100, 256, 1000, 5000, 20000, 300_000, 1_000_003):
                b = _block_rows(nrow, _LBLOCK)
                nb = -(-nrow // b)
                assert 1 <= b <= _LBLOCK and (nb - 1) * b < nrow <= nb * b, (nrow, t, b)
                if nb < 4 * t and nrow >= t * _LBLOCK_MIN:
                    assert nb % t == 0, (nrow, t, b)
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            assert np.array_equal(lf.predict(Xt.astype(np.float32)), ref32)
    finally:
        numba.set_num_threads(threads)
