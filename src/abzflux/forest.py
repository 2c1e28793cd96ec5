"""Random forests per flux, with the original workflow's randomForest defaults.

:class:`FluxForest` is a scikit-learn regressor that takes a DataFrame with the paper's
predictors. Categorical predictors (``month``, ``veg_type``) enter as one column each, so
``mtry`` counts the 17 logical predictors, never one-hot columns. R's randomForest orders a
factor's levels by the node mean of the response before scanning splits; scikit-learn trees
have no factor mode, so we order levels once, by their training mean of the response, and
split on that rank. For a single split this ordering is optimal (Breiman et al. 1984); deeper
in a tree it is an approximation of R's per-node ordering.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor

from .predictors import CATEGORICAL, VEG_RECODE


class UnknownLevelError(ValueError):
    """A categorical predictor has a level at prediction that training never saw."""


class FluxForest(RegressorMixin, BaseEstimator):
    """Random forest regression of a monthly flux on the paper's predictors.

    Parameters
    ----------
    n_estimators : int
        Trees (randomForest ``ntree``, default 500).
    mtry : int or None
        Predictors tried at each split; ``None`` gives randomForest's regression default
        ``max(floor(p / 3), 1)`` for p logical predictors.
    nodesize : int
        randomForest ``nodesize``: nodes with this many rows or fewer are not split
        (scikit-learn ``min_samples_split = nodesize + 1``).
    categorical : tuple of str
        Columns treated as categorical (levels ordered by training mean of y).
    random_state : int
        Seed of the forest (bootstrap rows and split candidates).
    n_jobs : int or None
        Threads for fitting and prediction.
    """

    def __init__(self, n_estimators=500, mtry=None, nodesize=5, categorical=CATEGORICAL,
                 random_state=448, n_jobs=None):
        self.n_estimators = n_estimators
        self.mtry = mtry
        self.nodesize = nodesize
        self.categorical = categorical
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _encode(self, X: pd.DataFrame) -> np.ndarray:
        cols = []
        for c in self.feature_names_:
            v = X[c].to_numpy()
            if c in self.levels_:
                if c == "veg_type":
                    v = pd.Series(v).replace(VEG_RECODE).to_numpy()
                rank = self.levels_[c]
                codes = pd.Series(v).map(rank)
                bad = codes.isna() & pd.Series(v).notna()
                if bad.any():
                    unknown = sorted(set(pd.Series(v)[bad].tolist()))[:10]
                    raise UnknownLevelError(
                        f"predictor {c!r}: level(s) {unknown} not seen in training "
                        f"(training levels {sorted(rank)})")
                v = codes.to_numpy(dtype=np.float64)
            cols.append(np.asarray(v, dtype=np.float32))
        return np.column_stack(cols)

    def fit(self, X: pd.DataFrame, y):
        """Fit on a DataFrame of predictors and a flux vector (g C m-2 month-1)."""
        y = np.asarray(y, dtype=np.float64)
        self.feature_names_ = list(X.columns)
        self.levels_ = {}
        for c in self.categorical:
            if c not in X:
                continue
            v = pd.Series(X[c].to_numpy())
            if c == "veg_type":
                v = v.replace(VEG_RECODE)
            means = pd.Series(y).groupby(v.to_numpy()).mean().sort_values(kind="mergesort")
            self.levels_[c] = {lvl: float(i) for i, lvl in enumerate(means.index)}
        p = len(self.feature_names_)
        self.mtry_ = int(self.mtry) if self.mtry is not None else max(p // 3, 1)
        if not 1 <= self.mtry_ <= p:
            raise ValueError(f"mtry must be in 1..{p}, got {self.mtry_}")
        self.model_ = RandomForestRegressor(
            n_estimators=self.n_estimators, max_features=self.mtry_, min_samples_split=self.nodesize + 1,
            min_samples_leaf=1, bootstrap=True, random_state=self.random_state, n_jobs=self.n_jobs)
        self.model_.fit(self._encode(X), y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted flux (g C m-2 month-1) for each row of X."""
        return self.model_.predict(self._encode(X[self.feature_names_]))

    def known_levels(self, column: str) -> list:
        """Training levels of a categorical predictor (after recoding)."""
        return sorted(self.levels_.get(column, {}))
