"""A randomForest-style regression forest compiled with numba.

Why our own trees: leave-one-site-out tuning fits ~600 forests of 500 trees per flux, and
prediction over a domain runs ~10^11 tree traversals. scikit-learn's trees re-sort the node's
samples at every split and have no factor splits. These trees follow R's randomForest
(``regTree``): features presorted once, each node's samples kept as aligned segments of the
per-feature sorted lists and stably partitioned at each split; bootstrap rows counted with their
multiplicity; ``mtry`` candidate features drawn without replacement at every node; the split
maximising ``SL²/WL + SR²/WR`` (first best wins), threshold at the midpoint of adjacent values; a
node with ``nodesize`` or fewer (bootstrap-weighted) rows, or with no improving split among its
``mtry`` candidates, is a leaf holding the weighted mean response. Categorical features are
split as R does: levels present in the node ordered by their node mean of y and scanned like an
ordered variable; the split stores the set of levels that go left as a 64-bit mask.

Every tree has its own xorshift64* stream seeded from a ``numpy.random.SeedSequence``, so a
forest is bit-identical whatever the number of threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .vocab import DEFAULT_SEED

_MULT = np.uint64(2685821657736338717)
_S12, _S25, _S27, _S11 = np.uint64(12), np.uint64(25), np.uint64(27), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


@njit(cache=True, inline="always")
def _next(state):
    x = state[0]
    x ^= x >> _S12
    x ^= x << _S25
    x ^= x >> _S27
    state[0] = x
    return x * _MULT


@njit(cache=True, inline="always")
def _randint(state, k):
    """Uniform integer in [0, k)."""
    return int(((_next(state) >> _S11) * _INV53) * k)


@njit(cache=True)
def _build_tree(
    XT, y, yraw, is_cat, n_levels, order, counts, mtry, nodesize, state, left, right, feat, thr, catmask, value, wcount
):
    """Grow one tree on the rows with counts > 0; returns the number of nodes written.

    ``XT`` is the feature-major (p, n) copy of X: a split scan reads one contiguous row. Split
    criteria use the centred response ``y``; leaf values are means of the raw response ``yraw``.
    """
    p, n = XT.shape
    # Per-feature sorted lists of the in-bag rows (aligned segments per node).
    m = 0
    for i in range(n):
        if counts[i] > 0:
            m += 1
    S = np.empty((p, m), np.int32)
    for f in range(p):
        k = 0
        for j in range(n):
            r = order[f, j]
            if counts[r] > 0:
                S[f, k] = r
                k += 1
    buf = np.empty(m, np.int32)
    goes_left = np.zeros(n, np.bool_)
    perm = np.arange(p)
    max_lv = 1
    for f in range(p):
        if n_levels[f] > max_lv:
            max_lv = n_levels[f]
    lv_w = np.zeros(max_lv)
    lv_s = np.zeros(max_lv)
    lv_mean = np.zeros(max_lv)
    stack_node = np.empty(2 * m + 2, np.int64)
    stack_start = np.empty(2 * m + 2, np.int64)
    stack_end = np.empty(2 * m + 2, np.int64)
    sp = 0
    stack_node[0], stack_start[0], stack_end[0] = 0, 0, m
    sp = 1
    n_nodes = 1
    while sp > 0:
        sp -= 1
        node, s, e = stack_node[sp], stack_start[sp], stack_end[sp]
        W = 0.0
        Sy = 0.0
        Syy = 0.0
        Sraw = 0.0
        y0 = y[S[0, s]]
        const = True
        for i in range(s, e):
            r = S[0, i]
            c = counts[r]
            W += c
            Sy += c * y[r]
            Syy += c * y[r] * y[r]
            Sraw += c * yraw[r]
            if y[r] != y0:
                const = False
        value[node] = Sraw / W
        wcount[node] = W
        left[node] = -1
        right[node] = -1
        if W <= nodesize or const or e - s < 2:
            continue
        parent = Sy * Sy / W
        best = parent
        best_f = -1
        best_thr = 0.0
        best_mask = np.uint64(0)
        for k in range(mtry):
            j = k + _randint(state, p - k)
            tmp = perm[k]
            perm[k] = perm[j]
            perm[j] = tmp
            f = perm[k]
            if is_cat[f]:
                L = n_levels[f]
                for lv in range(L):
                    lv_w[lv] = 0.0
                    lv_s[lv] = 0.0
                for i in range(s, e):
                    r = S[0, i]
                    lv = int(XT[f, r])
                    lv_w[lv] += counts[r]
                    lv_s[lv] += counts[r] * y[r]
                npres = 0
                for lv in range(L):
                    if lv_w[lv] > 0:
                        lv_mean[npres] = lv_s[lv] / lv_w[lv]
                        buf[npres] = lv
                        npres += 1
                if npres < 2:
                    continue
                # insertion sort of present levels by node mean (stable)
                for a in range(1, npres):
                    key_m = lv_mean[a]
                    key_l = buf[a]
                    b = a - 1
                    while b >= 0 and lv_mean[b] > key_m:
                        lv_mean[b + 1] = lv_mean[b]
                        buf[b + 1] = buf[b]
                        b -= 1
                    lv_mean[b + 1] = key_m
                    buf[b + 1] = key_l
                WL = 0.0
                SL = 0.0
                mask = np.uint64(0)
                for a in range(npres - 1):
                    lv = buf[a]
                    WL += lv_w[lv]
                    SL += lv_s[lv]
                    mask |= np.uint64(1) << np.uint64(lv)
                    WR = W - WL
                    SR = Sy - SL
                    crit = SL * SL / WL + SR * SR / WR
                    if crit > best:
                        best = crit
                        best_f = f
                        best_mask = mask
            else:
                WL = 0.0
                SL = 0.0
                for i in range(s, e - 1):
                    r = S[f, i]
                    WL += counts[r]
                    SL += counts[r] * y[r]
                    xa = XT[f, r]
                    xb = XT[f, S[f, i + 1]]
                    if xa < xb:
                        WR = W - WL
                        SR = Sy - SL
                        crit = SL * SL / WL + SR * SR / WR
                        if crit > best:
                            best = crit
                            best_f = f
                            best_thr = 0.5 * (xa + xb)
                            if best_thr == xb:  # midpoint rounded up to xb: keep xa on the left
                                best_thr = xa
        # Split only on a real improvement; the tolerance scales with the node's spread, not its
        # mean, so adding a constant to y never changes the tree.
        if best_f < 0 or best - parent <= 1e-12 * (Syy - parent):
            continue
        # route the node's rows
        nl = 0
        for i in range(s, e):
            r = S[0, i]
            if is_cat[best_f]:
                gl = ((best_mask >> np.uint64(int(XT[best_f, r]))) & np.uint64(1)) == np.uint64(1)
            else:
                gl = XT[best_f, r] <= best_thr
            goes_left[r] = gl
            if gl:
                nl += 1
        if nl == 0 or nl == e - s:
            continue
        for f in range(p):
            a = s
            b = 0
            for i in range(s, e):
                r = S[f, i]
                if goes_left[r]:
                    S[f, a] = r
                    a += 1
                else:
                    buf[b] = r
                    b += 1
            for i in range(b):
                S[f, a + i] = buf[i]
        feat[node] = best_f
        thr[node] = best_thr
        catmask[node] = best_mask
        lch = n_nodes
        rch = n_nodes + 1
        n_nodes += 2
        left[node] = lch
        right[node] = rch
        stack_node[sp], stack_start[sp], stack_end[sp] = rch, s + nl, e
        sp += 1
        stack_node[sp], stack_start[sp], stack_end[sp] = lch, s, s + nl
        sp += 1
    return n_nodes


@njit(cache=True, inline="always")
def _grow_tree(
    t,
    pool,
    npool,
    seed,
    XT,
    y,
    yraw,
    is_cat,
    n_levels,
    order,
    mtry,
    nodesize,
    cap,
    left,
    right,
    feat,
    thr,
    catmask,
    value,
    wcount,
):
    """Tree t: npool bootstrap draws with replacement from pool[:npool], grown into slab
    [t*cap, (t+1)*cap); returns its node count."""
    state = np.empty(1, np.uint64)
    state[0] = seed
    counts = np.zeros(XT.shape[1], np.float64)
    for _ in range(npool):
        counts[pool[_randint(state, npool)]] += 1.0
    o = t * cap
    return _build_tree(
        XT,
        y,
        yraw,
        is_cat,
        n_levels,
        order,
        counts,
        mtry,
        nodesize,
        state,
        left[o : o + cap],
        right[o : o + cap],
        feat[o : o + cap],
        thr[o : o + cap],
        catmask[o : o + cap],
        value[o : o + cap],
        wcount[o : o + cap],
    )


@njit(cache=True, parallel=True)
def _grow_batch(
    XT,
    y,
    yraw,
    is_cat,
    n_levels,
    order,
    pool,
    seeds,
    mtry,
    nodesize,
    cap,
    left,
    right,
    feat,
    thr,
    catmask,
    value,
    wcount,
    sizes,
):
    """Grow len(seeds) trees in parallel; tree t uses slab [t*cap, (t+1)*cap)."""
    for t in prange(seeds.shape[0]):
        sizes[t] = _grow_tree(
            t, pool, pool.shape[0], seeds[t], XT, y, yraw, is_cat, n_levels, order, mtry, nodesize, cap,
            left, right, feat, thr, catmask, value, wcount,
        )  # fmt: skip


@njit(cache=True, parallel=True)
def _grow_batch_groups(
    XT,
    y,
    yraw,
    is_cat,
    n_levels,
    order,
    group,
    held,
    seeds,
    mtry,
    nodesize,
    cap,
    left,
    right,
    feat,
    thr,
    catmask,
    value,
    wcount,
    sizes,
):
    """As :func:`_grow_batch`, but tree t's pool is the rows whose group is not held out by it
    (``held[t, group[row]]`` false): the bootstrap draws as many rows as that pool has."""
    n = XT.shape[1]
    for t in prange(seeds.shape[0]):
        pool = np.empty(n, np.int64)
        npool = 0
        for i in range(n):
            if not held[t, group[i]]:
                pool[npool] = i
                npool += 1
        sizes[t] = _grow_tree(
            t, pool, npool, seeds[t], XT, y, yraw, is_cat, n_levels, order, mtry, nodesize, cap,
            left, right, feat, thr, catmask, value, wcount,
        )  # fmt: skip


_BLOCK = 4096  # rows per block: each tree's nodes stay in cache while the block streams through it

# One node per 24-byte record, so a traversal step touches one cache line. A categorical split
# stores feature -(f + 1) and its left-going level set in ``catmask``.
NODE = np.dtype([("thr", np.float64), ("left", np.int32), ("right", np.int32), ("feat", np.int32), ("pad", np.int32)])


@njit(cache=True, inline="always")
def _leaf(x_row, nodes, catmask, node):
    while True:
        nd = nodes[node]
        if nd.left < 0:
            return node
        f = nd.feat
        if f >= 0:
            go = x_row[f] <= nd.thr
        else:
            go = ((catmask[node] >> np.uint64(int(x_row[-f - 1]))) & np.uint64(1)) == np.uint64(1)
        node = nd.left if go else nd.right


@njit(cache=True, parallel=True)
def _predict(X, nodes, catmask, value, roots, out):
    nrow = X.shape[0]
    nt = roots.shape[0]
    nblock = (nrow + _BLOCK - 1) // _BLOCK
    for b in prange(nblock):
        i0 = b * _BLOCK
        i1 = min(i0 + _BLOCK, nrow)
        acc = np.zeros(i1 - i0)
        for t in range(nt):
            root = roots[t]
            for i in range(i0, i1):
                acc[i - i0] += value[_leaf(X[i], nodes, catmask, root)]
        for i in range(i0, i1):
            out[i] = acc[i - i0] / nt


@njit(cache=True, parallel=True)
def _predict_trees(X, nodes, catmask, value, roots, out):
    nrow = X.shape[0]
    nt = roots.shape[0]
    nblock = (nrow + _BLOCK - 1) // _BLOCK
    for b in prange(nblock):
        i0 = b * _BLOCK
        i1 = min(i0 + _BLOCK, nrow)
        for t in range(nt):
            root = roots[t]
            for i in range(i0, i1):
                out[i, t] = value[_leaf(X[i], nodes, catmask, root)]


@njit(cache=True, parallel=True)
def _predict_oob(X, nodes, catmask, value, roots, group, held, out, n_out):
    """Per row, the mean over the trees that held its group out (``held[t, group[i]]``)."""
    nt = roots.shape[0]
    for i in prange(X.shape[0]):
        acc = 0.0
        k = 0
        g = group[i]
        for t in range(nt):
            if held[t, g]:
                acc += value[_leaf(X[i], nodes, catmask, roots[t])]
                k += 1
        n_out[i] = k
        out[i] = acc / k if k > 0 else np.nan


class PackedForest:
    """Trees packed into one array of node records (children are absolute indices; leaves -1)."""

    def __init__(self, roots, nodes, catmask, value, wcount):
        self.roots = roots
        self.nodes = nodes
        self.catmask = catmask
        self.value = value
        self.wcount = wcount

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.nodes.shape[0])

    def predict(self, X: np.ndarray, value: np.ndarray | None = None) -> np.ndarray:
        """Mean over trees of the leaf values (or of ``value``, one per node)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty(X.shape[0])
        _predict(X, self.nodes, self.catmask, self.value if value is None else value, self.roots, out)
        return out

    def predict_trees(self, X: np.ndarray, value: np.ndarray | None = None) -> np.ndarray:
        """Per-tree leaf values, shape (rows, trees)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], self.n_trees))
        _predict_trees(X, self.nodes, self.catmask, self.value if value is None else value, self.roots, out)
        return out

    def predict_oob(self, X: np.ndarray, group: np.ndarray, held: np.ndarray, value: np.ndarray | None = None):
        """Grouped out-of-bag prediction: for each row i the mean over the trees t with
        ``held[t, group[i]]`` (the trees that never saw row i's group), and how many they are.
        A row with no such tree gets NaN and count 0."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        group = np.ascontiguousarray(group, dtype=np.int64)
        held = np.ascontiguousarray(held, dtype=np.bool_)
        if held.shape[0] != self.n_trees or group.shape[0] != X.shape[0]:
            raise ValueError(f"held must have one row per tree ({self.n_trees}) and group one entry per row")
        out = np.empty(X.shape[0])
        n_out = np.empty(X.shape[0], np.int64)
        v = self.value if value is None else value
        _predict_oob(X, self.nodes, self.catmask, v, self.roots, group, held, out, n_out)
        return out, n_out

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Leaf node index of every row in every tree, shape (rows, trees)."""
        ids = np.arange(self.n_nodes, dtype=np.float64)
        return self.predict_trees(X, ids).astype(np.int64)

    @classmethod
    def from_sklearn(cls, model) -> PackedForest:
        """Pack a fitted scikit-learn ``RandomForestRegressor`` (single output) or
        ``DecisionTreeRegressor`` into node records.

        ``predict(X.astype(np.float32))`` then returns exactly sklearn's ``model.predict(X)``:
        sklearn compares float32 inputs with float64 thresholds (``x <= thr`` goes left) and
        averages the trees by adding them in order and dividing by their number, as here.
        """
        trees = [model] if hasattr(model, "tree_") else list(model.estimators_)
        if getattr(trees[0].tree_, "n_outputs", 1) != 1:
            raise ValueError("only single-output regression forests can be packed")
        sizes = [t.tree_.node_count for t in trees]
        offs = np.concatenate([[0], np.cumsum(sizes)])
        nodes = np.zeros(offs[-1], NODE)
        value = np.empty(offs[-1])
        for t, o in zip(trees, offs[:-1]):
            tr = t.tree_
            n = tr.node_count
            leaf = tr.children_left < 0
            nd = nodes[o : o + n]
            nd["thr"] = tr.threshold
            nd["feat"] = np.where(leaf, 0, tr.feature)
            nd["left"] = np.where(leaf, -1, tr.children_left + o)
            nd["right"] = np.where(leaf, -1, tr.children_right + o)
            value[o : o + n] = tr.value[:, 0, 0]
        return cls(offs[:-1].astype(np.int32), nodes, np.zeros(offs[-1], np.uint64), value, np.zeros(0, np.float32))

    def to_arrays(self) -> dict:
        return {
            "roots": self.roots,
            "nodes": self.nodes,
            "catmask": self.catmask,
            "value": self.value,
            "wcount": self.wcount,
        }

    @classmethod
    def from_arrays(cls, d) -> PackedForest:
        return cls(d["roots"], d["nodes"], d["catmask"], d["value"], d["wcount"])


def presort(X: np.ndarray) -> np.ndarray:
    """Stable argsort of every column, shape (p, n), int32."""
    return np.ascontiguousarray(np.argsort(X, axis=0, kind="stable").T.astype(np.int32))


def grow_forest(
    X,
    y,
    *,
    is_cat,
    n_levels,
    n_trees=500,
    mtry=5,
    nodesize=5,
    seed=DEFAULT_SEED,
    rows=None,
    order=None,
    batch=64,
    group=None,
    held=None,
) -> PackedForest:
    """Grow a forest on ``X[rows]`` (all rows by default).

    Parameters
    ----------
    X : (n, p) float64; categorical columns hold level codes 0..n_levels-1.
    y : (n,) float64 response.
    is_cat, n_levels : per-feature flags and level counts (n_levels ≤ 64).
    rows : indices of the training rows (a fold); the bootstrap draws len(rows) of them.
    order : ``presort(X)``, reusable across folds of one dataset.
    group, held : grouped out-of-bag growing (site_oob CV): ``group`` (n,) the group code of every
        row (0..G-1), ``held`` (n_trees, G) bool, tree t's held-out groups. Tree t then draws its
        bootstrap (as many draws as rows) from the rows of the groups it does not hold out only;
        ``rows`` must be None. Without them every tree draws from ``rows`` as randomForest does.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    n, p = X.shape
    pool_rows = np.arange(n) if rows is None else np.asarray(rows)
    centre = float(np.mean(y[pool_rows])) if len(pool_rows) else 0.0
    yc = y - centre  # split sums in centred units: the same splits for any offset of y
    is_cat = np.asarray(is_cat, dtype=np.bool_)
    n_levels = np.asarray(n_levels, dtype=np.int64)
    if np.any(n_levels > 64):
        raise ValueError("categorical predictors may have at most 64 levels")
    if not 1 <= mtry <= p:
        raise ValueError(f"mtry must be in 1..{p}, got {mtry}")
    pool = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    grouped = held is not None
    if grouped:
        if rows is not None or group is None:
            raise ValueError("grouped growing takes group and held, and no rows")
        group = np.ascontiguousarray(group, dtype=np.int64)
        held = np.ascontiguousarray(held, dtype=np.bool_)
        if group.shape != (n,) or held.ndim != 2 or held.shape[0] != n_trees:
            raise ValueError(
                f"group must have shape ({n},) and held ({n_trees}, groups), got {group.shape}, {held.shape}"
            )
        if group.min() < 0 or group.max() >= held.shape[1]:
            raise ValueError("group codes must lie in 0..held.shape[1]-1")
    if order is None:
        order = presort(X)
    XT = np.ascontiguousarray(X.T)
    seeds = np.random.SeedSequence(seed).generate_state(n_trees, dtype=np.uint64)
    seeds[seeds == 0] = 1  # xorshift state must be non-zero
    cap = 2 * min(len(pool), n) + 1
    parts: dict[str, list] = {k: [] for k in ("nodes", "catmask", "value", "wcount")}
    roots = []
    offset = 0
    for b0 in range(0, n_trees, batch):
        sd = seeds[b0 : b0 + batch]
        nb = len(sd)
        left = np.empty(nb * cap, np.int64)
        right = np.empty(nb * cap, np.int64)
        feat = np.zeros(nb * cap, np.int32)
        thr = np.zeros(nb * cap, np.float64)
        catmask = np.zeros(nb * cap, np.uint64)
        value = np.empty(nb * cap, np.float64)
        wcount = np.empty(nb * cap, np.float64)
        sizes = np.empty(nb, np.int64)
        bufs = (left, right, feat, thr, catmask, value, wcount, sizes)
        if grouped:
            hb = np.ascontiguousarray(held[b0 : b0 + nb])
            _grow_batch_groups(
                XT, yc, y, is_cat, n_levels, order, group, hb, sd, int(mtry), float(nodesize), cap, *bufs
            )
        else:
            _grow_batch(XT, yc, y, is_cat, n_levels, order, pool, sd, int(mtry), float(nodesize), cap, *bufs)
        for t in range(nb):
            sl = slice(t * cap, t * cap + sizes[t])
            nd = np.zeros(sizes[t], NODE)
            lt, rt, ft = left[sl], right[sl], feat[sl]
            nd["left"] = np.where(lt >= 0, lt + offset, -1)
            nd["right"] = np.where(rt >= 0, rt + offset, -1)
            nd["feat"] = np.where(is_cat[ft], -ft - 1, ft)
            nd["thr"] = thr[sl]
            parts["nodes"].append(nd)
            parts["catmask"].append(catmask[sl])
            parts["value"].append(value[sl])
            parts["wcount"].append(wcount[sl].astype(np.float32))
            roots.append(offset)
            offset += int(sizes[t])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return PackedForest(np.asarray(roots, np.int64), **arrays)


# --------------------------------------------------------------------------- fast inference
# Level-synchronous traversal: every tree is renumbered breadth-first so that a node's two
# children are adjacent (right = left + 1) and leaves point to themselves. A block of rows then
# walks a tree together, one level at a time, with one branch-free step per row:
#     node = child[node] + (not x[feat[node]] <= thr[node])
# The rows of a block are independent, so their memory loads overlap instead of waiting on
# each other as in a per-row pointer chase. Each tree runs for its depth; rows that reached a
# leaf stay there (leaf: child = itself, threshold +inf). Results equal the per-row traversal
# exactly: the same comparisons, and trees are added in order then divided by their number.
#
# What makes it fast (measured in benchmarks/bench_inference.py): the predictors are read as
# float32 when every value is exactly a float32 (the predictor stacks are float32), against
# float32 thresholds rounded *down* from the float64 ones -- for a float32 x, x <= t holds
# exactly when x <= (largest float32 <= t), so every comparison is unchanged; the rows and nodes
# are addressed with unsigned 32-bit offsets into flat arrays (no negative-index wraparound
# checks in the inner loop); and blocks of 4,096 rows, each walking a tree in sub-blocks of 256
# (4,096 x 17 predictors x 4 B = 279 KB in the L2 cache, a sub-block's 17 KB in L1). Every block
# fetches every tree's nodes again, and a forest of 500 trees (10 MB of feat/thr/child/value for
# 500,000 nodes, 40 MB for 2,000,000) does not stay in L2, nor in L3 when other processes share
# it; the 16 sub-blocks of a block find the tree's nodes in cache. With blocks of 256 rows (the
# earlier kernel) that fetch was shared by 256 rows only, and rows/s fell with the forest's size
# and the machine's load (BENCHMARKS.md, loaded machine: 2.05x sklearn on a 2,000,000-node
# forest, 3.76-4.65x on 500,000-node ones; 5.69x and 5.86-6.19x with these blocks). A batch too
# small to give every thread a few blocks is cut into smaller equal blocks (``_block_rows``). A NaN
# predictor would move a row off a leaf (NaN <= +inf is false), so batches with NaN take the
# per-row path (``_predict_rows``).
_LBLOCK = 4096
_LBLOCK_MIN = 256  # the sub-block
# Compaction (per tree, two levels a <= b chosen when the layout is built): after level a the
# rows still on an internal node are gathered into a short list that the next levels walk, and
# again after level b. Rows visit ~11 of a tree's ~19 levels on average, so without it ~40 % of
# the steps would be rows parked on a leaf. The levels minimise a cost model in units of one
# dense step per row: dense levels cost 1 each, a compaction pass _CCOMP, a step on the list
# _CIND (its row index is one more load); measured best at these values in
# benchmarks/bench_inference.py's forest (+13 % rows/s over no compaction). The share of rows
# still travelling below each level is estimated from the tree itself, as the share of its
# leaves that lie deeper (random-forest leaves hold about nodesize samples each), so the saved
# forests need no training counts.
_CCOMP = 0.5
_CIND = 1.3


@njit(cache=True, inline="always")
def _step(Xf, o, nd, feat, thr, child, catmask, has_cat):
    """One level for one row (row offset o into Xf) at node nd: the node it moves to."""
    if has_cat:
        f = feat[nd]
        if f >= 0:
            right = not (Xf[o + np.uint32(f)] <= thr[nd])
        else:
            code = np.uint64(int(Xf[o + np.uint32(-f - 1)]))
            right = ((catmask[nd] >> code) & np.uint64(1)) == np.uint64(0)
    else:
        right = not (Xf[o + np.uint32(feat[nd])] <= thr[nd])
    return child[nd] + np.int32(right)


@njit(cache=True, inline="always", boundscheck=False)
def _walk_block(Xf, base, unf, idx, m, n_levels, feat, thr, child, catmask, has_cat):
    """n_levels levels for the block's first m rows (idx: their nodes)."""
    for _ in range(n_levels):
        for i in range(m):
            idx[i] = _step(Xf, base + np.uint32(i) * unf, np.uint32(idx[i]), feat, thr, child, catmask, has_cat)


@njit(cache=True, inline="always", boundscheck=False)
def _walk_list(Xf, base, unf, rows, nodes, k, n_levels, feat, thr, child, catmask, has_cat):
    """n_levels levels for the k listed rows (rows: row numbers in the block, nodes: their nodes)."""
    for _ in range(n_levels):
        for j in range(k):
            nodes[j] = _step(Xf, base + rows[j] * unf, np.uint32(nodes[j]), feat, thr, child, catmask, has_cat)


@njit(cache=True, parallel=True, boundscheck=False)
def _predict_level(Xf, nf, feat, thr, child, catmask, value, roots, depth, stages, has_cat, out, block, sub):
    """Xf: the rows, C order, flattened (float32 or float64); thr of the same dtype; blocks of
    ``block`` rows (the last one shorter), each walking a tree in sub-blocks of ``sub`` rows.

    stages[t] = (a, b): tree t walks levels [0, a) with every row of the block, [a, b) and
    [b, depth) with the rows not yet on a leaf (a == depth: no compaction)."""
    nrow = out.shape[0]
    nt = roots.shape[0]
    unf = np.uint32(nf)
    nblock = (nrow + block - 1) // block
    for blk in prange(nblock):
        i0 = blk * block
        m = min(i0 + block, nrow) - i0
        acc = np.zeros(m)
        ms = min(m, sub)
        idx = np.empty(ms, np.int32)
        rows = np.empty(ms, np.uint32)
        nodes = np.empty(ms, np.int32)
        for t in range(nt):
            r = roots[t]
            d = depth[t]
            a = stages[t, 0]
            b = stages[t, 1]
            for s0 in range(0, m, sub):  # sub-blocks: the tree's nodes stay cached across them
                ms = min(sub, m - s0)
                base = np.uint32(i0 + s0) * unf
                for i in range(ms):
                    idx[i] = r
                if has_cat:  # two calls so that each inlined copy has the test folded away
                    _walk_block(Xf, base, unf, idx, ms, a, feat, thr, child, catmask, True)
                else:
                    _walk_block(Xf, base, unf, idx, ms, a, feat, thr, child, catmask, False)
                if a < d:
                    k = 0  # the rows still on an internal node, in order
                    for i in range(ms):
                        nd = idx[i]
                        rows[k] = np.uint32(i)
                        nodes[k] = nd
                        k += np.int32(child[np.uint32(nd)] != nd)
                    if has_cat:
                        _walk_list(Xf, base, unf, rows, nodes, k, b - a, feat, thr, child, catmask, True)
                    else:
                        _walk_list(Xf, base, unf, rows, nodes, k, b - a, feat, thr, child, catmask, False)
                    if b < d:  # second compaction: file the rows that reached a leaf, keep the others
                        k2 = 0
                        for j in range(k):
                            nd = nodes[j]
                            idx[rows[j]] = nd
                            rows[k2] = rows[j]
                            nodes[k2] = nd
                            k2 += np.int32(child[np.uint32(nd)] != nd)
                        k = k2
                        if has_cat:
                            _walk_list(Xf, base, unf, rows, nodes, k, d - b, feat, thr, child, catmask, True)
                        else:
                            _walk_list(Xf, base, unf, rows, nodes, k, d - b, feat, thr, child, catmask, False)
                    for j in range(k):
                        idx[rows[j]] = nodes[j]
                for i in range(ms):
                    acc[s0 + i] += value[np.uint32(idx[i])]
        for i in range(m):
            out[i0 + i] = acc[i] / nt


def _block_rows(nrow: int, largest: int) -> int:
    """Rows per block for a batch of ``nrow`` rows: at most ``largest``; a batch of fewer than
    4 blocks per thread is cut into a multiple of the thread count of equal blocks (of at least
    ``_LBLOCK_MIN`` rows) so that no thread idles while another finishes a block. Any block size
    gives the same numbers (rows are independent)."""
    nb = -(-nrow // largest)
    threads = numba.get_num_threads()
    if nb < 4 * threads:
        nb = min(-(-nb // threads) * threads, max(1, nrow // _LBLOCK_MIN))
    return max(1, -(-nrow // nb))


@njit(cache=True, parallel=True)
def _predict_rows(X, feat, thr, child, catmask, value, roots, out):
    """Per-row traversal of the breadth-first layout (stops at a leaf whatever x is: NaN-safe)."""
    nt = roots.shape[0]
    nf = X.shape[1]
    Xf = X.reshape(-1)
    for i in prange(X.shape[0]):
        o = i * nf  # int64: the NaN path gets the whole batch, unsplit
        acc = 0.0
        for t in range(nt):
            nd = roots[t]
            while child[nd] != nd:
                nd = _step(Xf, o, np.uint32(nd), feat, thr, child, catmask, True)
            acc += value[nd]
        out[i] = acc / nt


def as_exact_float32(X: np.ndarray) -> np.ndarray:
    """X as float32 when that loses nothing (the float32 kernel's input), else as float64.

    Convert once and pass the result to several forests: ``LevelForest.predict`` then skips the
    check."""
    X = np.asarray(X)
    if X.dtype == np.float32:
        return X
    X = np.asarray(X, dtype=np.float64)
    X32 = X.astype(np.float32)
    return X32 if np.array_equal(X32, X, equal_nan=True) else X


def _round_down_f32(thr: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold (so float32 x <= it iff x <= thr)."""
    t32 = thr.astype(np.float32)
    up = t32.astype(np.float64) > thr
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


@njit(cache=True)
def _bfs_layout(left, right, feat, thr, catmask, value, roots):
    n = left.shape[0]
    F = np.zeros(n, np.int32)
    T = np.full(n, np.inf)
    C = np.zeros(n, np.int32)
    M = np.zeros(n, np.uint64)
    V = np.zeros(n)
    new_roots = np.zeros(roots.shape[0], np.int32)
    depth = np.zeros(roots.shape[0], np.int32)
    queue = np.empty(n, np.int32)  # old ids in breadth-first order
    level = np.empty(n, np.int32)
    pos = 0
    for k in range(roots.shape[0]):
        start = pos
        new_roots[k] = pos
        queue[pos] = roots[k]
        level[pos] = 0
        pos += 1
        head = start
        d = 0
        while head < pos:
            o = queue[head]
            j = head  # new id = position in the breadth-first queue
            V[j] = value[o]
            if left[o] >= 0:
                F[j] = feat[o]
                T[j] = thr[o]
                M[j] = catmask[o]
                C[j] = pos  # children get the next two positions: right = left + 1
                queue[pos] = left[o]
                queue[pos + 1] = right[o]
                level[pos] = level[head] + 1
                level[pos + 1] = level[head] + 1
                if level[head] + 1 > d:
                    d = level[head] + 1
                pos += 2
            else:
                C[j] = j  # leaf: stays (T = +inf, so "x <= T" holds)
            head += 1
        depth[k] = d
    return F, T, C, M, V, new_roots, depth


@njit(cache=True)
def _compaction_levels(child, roots, depth):
    """Per tree (a, b), the levels after which ``_predict_level`` compacts (see _CCOMP)."""
    nt = roots.shape[0]
    n = child.shape[0]
    stages = np.empty((nt, 2), np.int32)
    level = np.zeros(n, np.int32)
    for t in range(nt):
        end = roots[t + 1] if t + 1 < nt else n
        d = depth[t]
        fa = np.zeros(d + 1)  # fa[L]: share of the leaves deeper than level L
        for j in range(roots[t], end):
            c = child[j]
            if c == j:
                for L in range(level[j]):
                    fa[L] += 1.0
            else:
                level[c] = level[j] + 1
                level[c + 1] = level[j] + 1
        fa /= max(fa[0], 1.0)
        best, ba, bb = float(d), d, d
        for a in range(d):
            for b in range(a, d + 1):
                cost = a + _CCOMP + _CIND * (b - a) * fa[a]
                if b < d:
                    cost += _CCOMP * fa[a] + _CIND * (d - b) * fa[b]
                if cost < best:
                    best, ba, bb = cost, a, b
        stages[t, 0] = ba
        stages[t, 1] = bb
    return stages


class LevelForest:
    """A forest laid out for fast, exact batch prediction (see the comment above).

    Build it from a :class:`PackedForest` (``LevelForest.from_packed``) or a fitted
    scikit-learn forest (``LevelForest.from_sklearn``); ``predict`` gives the same numbers as
    ``PackedForest.predict`` / ``sklearn predict`` (for sklearn pass the rows as float32, as
    sklearn itself converts them).
    """

    # Blocking of ``predict`` (rows): tuning, not layout, so class defaults that an instance may
    # override (benchmarks race them) and that a stored layout does not carry.
    block = _LBLOCK  # the largest block; smaller batches are cut to keep every thread busy
    sub = _LBLOCK_MIN

    def __init__(self, feat, thr, child, catmask, value, roots, depth):
        self.feat, self.thr, self.child, self.catmask = feat, thr, child, catmask
        self.value, self.roots, self.depth = value, roots, depth
        self.stages = _compaction_levels(child, roots, depth)
        self.thr32 = _round_down_f32(thr)
        self.has_cat = bool((feat < 0).any())
        if not self.has_cat:  # numeric-only (the bootstrap forests): the kernels never read it
            self.catmask = np.zeros(1, np.uint64)

    @classmethod
    def _build(cls, left, right, feat, thr, catmask, value, roots):
        """Breadth-first renumbering of trees given by absolute left/right arrays (leaf: -1)."""
        arrays = _bfs_layout(
            np.ascontiguousarray(left, np.int32),
            np.ascontiguousarray(right, np.int32),
            np.ascontiguousarray(feat, np.int32),
            np.ascontiguousarray(thr, np.float64),
            np.ascontiguousarray(catmask, np.uint64),
            np.ascontiguousarray(value, np.float64),
            np.ascontiguousarray(roots, np.int32),
        )
        return cls(*arrays)

    @classmethod
    def from_packed(cls, pf: PackedForest, value: np.ndarray | None = None) -> LevelForest:
        nd = pf.nodes
        return cls._build(
            nd["left"], nd["right"], nd["feat"], nd["thr"], pf.catmask, pf.value if value is None else value, pf.roots
        )

    @classmethod
    def from_sklearn(cls, model) -> LevelForest:
        return cls.from_packed(PackedForest.from_sklearn(model))

    #: Version of the layout and of ARRAYS: saved forests (abzflux.forest) store it with the arrays
    #: and a reader rebuilds the layout from the node records when it differs. Increase it with
    #: any change to what ``__init__``/``_build`` compute or to ARRAYS.
    LAYOUT = 1
    #: Every attribute prediction reads: the layout and what ``__init__`` derives from it.
    ARRAYS = ("feat", "thr", "child", "catmask", "value", "roots", "depth", "stages", "thr32", "has_cat")

    def to_arrays(self) -> dict:
        """The layout and its derived arrays by name (``has_cat`` as a 0-d bool array)."""
        return {k: np.asarray(getattr(self, k)) for k in self.ARRAYS}

    @classmethod
    def from_arrays(cls, d) -> LevelForest:
        """The forest of :meth:`to_arrays` as it is, nothing recomputed or copied: the arrays may
        be read-only views into a file that several processes map (abzflux.arrayfile)."""
        missing = [k for k in cls.ARRAYS if k not in d]
        if missing:
            raise KeyError(f"level-forest arrays missing: {missing}")
        self = cls.__new__(cls)
        for k in cls.ARRAYS:
            setattr(self, k, d[k])
        self.has_cat = bool(d["has_cat"])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Mean over trees for each row of X (rows, predictors), float32 or float64.

        float32 input, or float64 input whose every value is exactly a float32, takes the
        float32 kernel; other float64 input the float64 kernel; both give identical results.
        """
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (rows, predictors), got shape {X.shape}")
        out = np.empty(X.shape[0])
        if X.shape[0] == 0:
            return out
        X = np.ascontiguousarray(as_exact_float32(X))
        if np.isnan(X).any():
            _predict_rows(X, self.feat, self.thr, self.child, self.catmask, self.value, self.roots, out)
            return out
        thr = self.thr32 if X.dtype == np.float32 else self.thr
        step = max(1, (2**31 - 1) // X.shape[1])  # 32-bit offsets: split huge batches
        for a in range(0, X.shape[0], step):
            part = X[a : a + step]
            _predict_level(
                part.reshape(-1),
                part.shape[1],
                self.feat,
                thr,
                self.child,
                self.catmask,
                self.value,
                self.roots,
                self.depth,
                self.stages,
                self.has_cat,
                out[a : a + step],
                _block_rows(part.shape[0], self.block),
                self.sub,
            )
        return out
