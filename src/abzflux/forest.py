"""Random forests per flux, with the original workflow's randomForest defaults.

:class:`FluxForest` is a scikit-learn-style regressor over a DataFrame of the paper's
predictors, backed by the numba forest of :mod:`abzflux._rf`, which grows trees as R's
randomForest does (see there). Categorical predictors (``month``, ``veg_type``) are one column
each and are split as factors: at every node their levels are ordered by the node mean of the
response and scanned like an ordered variable, exactly R's regression-tree rule. ``mtry``
therefore counts the 17 logical predictors, never one-hot columns.

``central="qrf_median"`` reproduces the original code's quantile regression forest (caret
method ``"qrf"``, quantregForest >= 1.3): each leaf of each tree keeps one training response
drawn at random from all training rows that fall in it, and the prediction is the type-7
(numpy "linear") quantile of the per-tree values; ``predict_quantiles`` gives intervals.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import arrayfile, seeds
from ._rf import LevelForest, PackedForest, grow_forest
from .predictors import CATEGORICAL, VEG_RECODE
from .vocab import CENTRALS, DEFAULT_SEED


def _py(v):
    """numpy scalars to Python scalars, for JSON metadata."""
    return v.item() if isinstance(v, np.generic) else v


def qrf_leaf_draws(
    forest: PackedForest, M: np.ndarray, y: np.ndarray, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """One training response per leaf per tree (quantregForest >= 1.3), drawn at random from all
    training rows ``M``, ``y`` that fall in the leaf (in-bag or not), with the ``qrf_draw`` stream
    of ``seed``; an array over the forest's nodes (NaN where no training row lands).

    ``exclude`` (rows, trees) bool: row i is not a training row of tree t where it is true (the
    grouped out-of-bag CV: a tree draws only from the rows of the sites it saw)."""
    leaves = forest.apply(M)  # (rows, trees)
    rng = seeds.rng(seed, "qrf_draw")
    draw = np.full(forest.n_nodes, np.nan)
    flat = leaves.T.ravel()
    yy = np.tile(y, leaves.shape[1])
    key = rng.random(flat.size)  # random order, then the first row per leaf wins
    if exclude is not None:
        keep = ~np.asarray(exclude, dtype=bool).T.ravel()
        flat, yy, key = flat[keep], yy[keep], key[keep]
    o = np.lexsort((key, flat))
    first = np.r_[True, flat[o][1:] != flat[o][:-1]]
    draw[flat[o][first]] = yy[o][first]
    return draw


def qrf_median(forest: PackedForest, draws: np.ndarray, M: np.ndarray) -> np.ndarray:
    """The quantile forest's central value: the type-7 median over trees of the leaf draws."""
    return np.quantile(forest.predict_trees(M, draws), 0.5, axis=1)


#: Name prefix of the level-layout arrays in a saved forest (abzflux._rf.LevelForest.to_arrays).
LEVEL_PREFIX = "lv_"


class UnknownLevelError(ValueError):
    """A categorical predictor has a level at prediction that training never saw."""


class FluxForest:
    """Random forest regression of a monthly flux (g C m-2 month-1) on predictors.

    Parameters
    ----------
    n_estimators : int
        Trees (randomForest ``ntree``, default 500).
    mtry : int or None
        Predictors tried at each split; ``None`` gives randomForest's regression default
        ``max(floor(p / 3), 1)`` for p logical predictors.
    nodesize : int
        randomForest ``nodesize``: a node with this many (bootstrap) rows or fewer is a leaf.
    categorical : tuple of str
        Columns split as factors.
    central : {"mean", "qrf_median"}
        Central prediction: mean of the trees (random forest) or median of one random training
        response per leaf (quantile regression forest).
    random_state : int
        Seed: bootstrap rows, split candidates and QRF draws. Results do not depend on threads.
    """

    def __init__(
        self,
        n_estimators=500,
        mtry=None,
        nodesize=5,
        categorical=CATEGORICAL,
        central="mean",
        random_state=DEFAULT_SEED,
    ):
        self.n_estimators = n_estimators
        self.mtry = mtry
        self.nodesize = nodesize
        self.categorical = tuple(categorical)
        self.central = central
        self.random_state = random_state
        self.mapped = False  # True when loaded from a file whose arrays are mapped (see load)

    # ------------------------------------------------------------------ encoding
    def _levels_of(self, col: str, values) -> np.ndarray:
        v = pd.Series(np.asarray(values))
        if col == "veg_type":
            v = v.replace(VEG_RECODE)
        return v.to_numpy()

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.feature_names_ if c not in X.columns]
        if missing:
            raise KeyError(f"predictor column(s) missing: {missing}")
        M = np.empty((len(X), len(self.feature_names_)), dtype=np.float64)
        for j, c in enumerate(self.feature_names_):
            if c in self.levels_:
                v = self._levels_of(c, X[c].to_numpy())
                lv = self.levels_[c]
                codes = pd.Series(v).map({l: i for i, l in enumerate(lv)})
                bad = codes.isna().to_numpy() & pd.notna(v)
                if bad.any():
                    unknown = sorted(set(pd.Series(v)[bad].tolist()))[:10]
                    raise UnknownLevelError(
                        f"predictor {c!r}: level(s) {unknown} not seen in training (training levels {list(lv)})"
                    )
                M[:, j] = codes.to_numpy(dtype=np.float64)
            else:
                M[:, j] = np.asarray(X[c], dtype=np.float64)
        if np.isnan(M).any():
            cols = [self.feature_names_[j] for j in np.nonzero(np.isnan(M).any(0))[0]]
            raise ValueError(f"predictors contain NaN in column(s) {cols}; drop those rows first")
        return M

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: pd.DataFrame, y, rows=None):
        """Fit on a DataFrame of predictors and a flux vector; ``rows`` restricts to a subset."""
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("response contains NaN or inf; drop those rows first")
        self.feature_names_ = list(X.columns)
        idx = np.arange(len(X)) if rows is None else np.asarray(rows)
        self.levels_ = {}
        for c in self.categorical:
            if c in X.columns:
                v = self._levels_of(c, X[c].to_numpy()[idx])
                self.levels_[c] = np.array(sorted(pd.unique(v[pd.notna(v)])))
        p = len(self.feature_names_)
        self.mtry_ = int(self.mtry) if self.mtry is not None else max(p // 3, 1)
        if not 1 <= self.mtry_ <= p:
            raise ValueError(f"mtry must be in 1..{p}, got {self.mtry_}")
        if self.central not in CENTRALS:
            raise ValueError(f"central must be one of {list(CENTRALS)}, got {self.central!r}")
        M = self._matrix(X.iloc[idx] if rows is not None else X)
        is_cat = np.array([c in self.levels_ for c in self.feature_names_])
        n_levels = np.array([len(self.levels_[c]) if c in self.levels_ else 0 for c in self.feature_names_])
        self._level = None
        self.forest_ = grow_forest(
            M,
            y[idx],
            is_cat=is_cat,
            n_levels=n_levels,
            n_trees=self.n_estimators,
            mtry=self.mtry_,
            nodesize=self.nodesize,
            seed=self.random_state,
        )
        self.leaf_draw_ = self._qrf_draws(M, y[idx]) if self.central == "qrf_median" else None
        return self

    def _qrf_draws(self, M, y) -> np.ndarray:
        return qrf_leaf_draws(self.forest_, M, y, self.random_state)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted flux for each row of X (mean of trees, or QRF median)."""
        return self._predict_matrix(self._matrix(X))

    def _predict_matrix(self, M: np.ndarray) -> np.ndarray:
        if self.central == "qrf_median":
            if self.leaf_draw_ is None:
                raise ValueError("a qrf_median forest without leaf draws: fit it first")
            return qrf_median(self.forest_, self.leaf_draw_, M)
        if len(M) >= 1024:
            # the level-synchronous layout gives the same numbers several times faster on large
            # batches (abzflux._rf.LevelForest; benchmarks/bench_inference.py)
            return self._level_forest().predict(M)
        return self.forest_.predict(M)

    def predict_quantiles(self, X: pd.DataFrame, q=(0.1, 0.5, 0.9)) -> np.ndarray:
        """Conditional quantiles (rows, len(q)) from the per-leaf training draws (QRF)."""
        if self.leaf_draw_ is None:
            raise ValueError("quantiles need central='qrf_median' at fit time")
        per_tree = self.forest_.predict_trees(self._matrix(X), self.leaf_draw_)
        return np.quantile(per_tree, q, axis=1).T

    def known_levels(self, column: str) -> list:
        """Training levels of a categorical predictor (after recoding)."""
        return list(self.levels_.get(column, []))

    def get_params(self, deep=False) -> dict:
        return {
            k: getattr(self, k) for k in ("n_estimators", "mtry", "nodesize", "categorical", "central", "random_state")
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the fitted forest to one uncompressed ``.npz`` whose arrays every process of a
        machine can map read-only (:mod:`abzflux.arrayfile`; written atomically).

        Besides the node records (and the QRF leaf draws) the file holds the level layout that
        large batches are predicted with (``lv_*``; mean forests), so no reader rebuilds it."""
        meta = {
            "params": {k: _py(v) for k, v in self.get_params().items()} | {"categorical": list(self.categorical)},
            "feature_names": list(self.feature_names_),
            "mtry": int(self.mtry_),
            "levels": {c: [_py(v) for v in lv] for c, lv in self.levels_.items()},
            "level_layout": LevelForest.LAYOUT,
        }
        arrays = {"meta": np.array(json.dumps(meta))} | self.forest_.to_arrays()
        arrays.pop("wcount")
        if self.leaf_draw_ is not None:
            arrays["leaf_draw"] = self.leaf_draw_
        if self.central == "mean":
            arrays |= {f"{LEVEL_PREFIX}{k}": v for k, v in self._level_forest().to_arrays().items()}
        arrayfile.write(path, arrays)

    def _level_forest(self) -> LevelForest:
        level = getattr(self, "_level", None)
        if level is None:
            level = self._level = LevelForest.from_packed(self.forest_)
        return level

    @classmethod
    def load(cls, path) -> FluxForest:
        """A saved forest. A file written by :meth:`save` is mapped, not read: its arrays are
        read-only views that the processes of a machine share (``mapped`` is True); a compressed
        ``.npz`` of earlier versions is read into memory and its level layout built on first use."""
        arrays, mapped = arrayfile.read(path)
        meta = json.loads(str(arrays.pop("meta")))
        self = cls(**meta["params"])
        self.feature_names_ = meta["feature_names"]
        self.mtry_ = meta["mtry"]
        self.levels_ = {c: np.array(v) for c, v in meta["levels"].items()}
        self.leaf_draw_ = arrays.pop("leaf_draw", None)
        level = {k[len(LEVEL_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(LEVEL_PREFIX)}
        # a layout of another version is not used: it is rebuilt from the node records on first use
        current = meta.get("level_layout") == LevelForest.LAYOUT and set(LevelForest.ARRAYS) <= set(level)
        self._level = LevelForest.from_arrays(level) if current else None
        arrays["wcount"] = np.zeros(0, np.float32)
        self.forest_ = PackedForest.from_arrays(arrays)
        self.mapped = mapped
        return self


# --------------------------------------------------------------------------- interpretation
def permutation_importance(
    model: FluxForest, X: pd.DataFrame, y, n_repeats: int = 100, seed: int = DEFAULT_SEED, progress=None
) -> pd.DataFrame:
    """RMSE-based permutation importance on the training rows (vip ``vi_permute``, metric rmse).

    Importance of predictor j = RMSE with column j permuted − RMSE of the intact data,
    repeated ``n_repeats`` times; returns mean and SD (g C m-2 month-1) per predictor.
    ``progress(done, total)`` is called after each permutation (predictors × repeats).
    """
    y = np.asarray(y, dtype=np.float64)
    M = model._matrix(X)
    base = float(np.sqrt(np.mean((model._predict_matrix(M) - y) ** 2)))
    rng = seeds.rng(seed, "importance")
    rows = []
    for j, name in enumerate(model.feature_names_):
        scores = np.empty(n_repeats)
        col = M[:, j].copy()
        for r in range(n_repeats):
            M[:, j] = col[rng.permutation(len(col))]
            scores[r] = np.sqrt(np.mean((model._predict_matrix(M) - y) ** 2)) - base
            if progress is not None:
                progress(j * n_repeats + r + 1, len(model.feature_names_) * n_repeats)
        M[:, j] = col
        rows.append(
            {
                "predictor": name,
                "importance": float(scores.mean()),
                "importance_sd": float(scores.std(ddof=1)) if n_repeats > 1 else np.nan,
                "n_repeats": n_repeats,
                "baseline_rmse": base,
            }
        )
    return pd.DataFrame(rows).sort_values("importance", ascending=False, kind="mergesort").reset_index(drop=True)


def partial_dependence(
    model: FluxForest, X: pd.DataFrame, column: str, n_points: int = 51, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Partial dependence (pdp ``partial``): mean prediction over the training rows with
    ``column`` set to each grid value; ``min(unique, n_points)`` evenly spaced values between
    the column's minimum and maximum for continuous predictors, every level for factors."""
    M = model._matrix(X if rows is None else X.iloc[rows])
    j = model.feature_names_.index(column)
    if column in model.levels_:
        codes = np.arange(len(model.levels_[column]), dtype=np.float64)
        values = model.levels_[column]
    else:
        v = M[:, j]
        k = min(len(np.unique(v)), n_points)
        codes = values = np.linspace(v.min(), v.max(), k)
    col = M[:, j].copy()
    yhat = np.empty(len(codes))
    for i, c in enumerate(codes):
        M[:, j] = c
        yhat[i] = model._predict_matrix(M).mean()
    M[:, j] = col
    return pd.DataFrame(
        {
            "predictor": column,
            "value": np.asarray(values, dtype=np.float64),
            "yhat": yhat,
            "categorical": column in model.levels_,
        }
    )
