"""Leave-one-site-out cross-validation, mtry tuning and skill metrics (caret semantics).

The original workflow tuned ``mtry`` with ``caret::train`` over caret's default grid
(``floor(seq(2, p, length = 3))``: {2, 9, 17} for 17 predictors), one fold per site, metric
RMSE, ``selectionFunction = "best"``: the ``mtry`` with the lowest RMSE averaged over folds.
caret's reported skill is the unweighted mean over held-out sites of per-site RMSE, MAE and
R² = squared Pearson correlation (NA for a site with fewer than 2 distinct observed or predicted
values). We report that ("caret-style") and the pooled metrics over all held-out predictions
(R², RMSE, MAE and mean bias = mean(pred − obs), positive = overestimation).

Every fold × mtry forest has its own seed derived from (seed, fold, mtry), so results are the
same run sequentially, on threads, or on a dask.distributed cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import seeds
from ._rf import grow_forest, presort
from .forest import FluxForest, qrf_leaf_draws, qrf_median
from .predictors import CATEGORICAL
from .vocab import CENTRALS, CV_MODES, DEFAULT_SEED, MIN_OOB_TREES


def mtry_grid(p: int, tune_length: int = 3) -> list[int]:
    """caret's default ``mtry`` grid for randomForest regression (``var_seq``)."""
    if tune_length == 1:
        return [max(p // 3, 1)]
    n = p if p <= tune_length else tune_length
    return sorted(set(int(np.floor(v)) for v in np.linspace(2, p, n)))


def fold_seed(seed: int, fold: int, mtry: int) -> int:
    """The seed of the fold × mtry forest (the ``cv_fold`` stream, :mod:`abzflux.seeds`)."""
    return seeds.integer(seed, "cv_fold", fold, mtry)


# --------------------------------------------------------------------------- metrics
def _r2(obs: np.ndarray, pred: np.ndarray) -> float:
    if len(np.unique(obs)) < 2 or len(np.unique(pred)) < 2:
        return np.nan
    return float(np.corrcoef(obs, pred)[0, 1] ** 2)


def caret_metrics(obs, pred, sites) -> dict:
    """Mean (and SD) over sites of per-site RMSE, R² (squared Pearson) and MAE, NaN ignored."""
    df = pd.DataFrame({"o": np.asarray(obs, float), "p": np.asarray(pred, float), "s": np.asarray(sites)})
    per = df.groupby("s", sort=True).apply(
        lambda g: pd.Series(
            {
                "RMSE": np.sqrt(np.mean((g.p - g.o) ** 2)),
                "Rsquared": _r2(g.o.values, g.p.values),
                "MAE": np.mean(np.abs(g.p - g.o)),
            }
        ),
        include_groups=False,
    )
    out = {}
    for k in ("RMSE", "Rsquared", "MAE"):
        out[k] = float(per[k].mean(skipna=True))
        out[k + "SD"] = float(per[k].std(skipna=True, ddof=1))
    out["n_sites"] = int(len(per))
    out["n_sites_r2"] = int(per["Rsquared"].notna().sum())
    return out


def pooled_metrics(obs, pred) -> dict:
    """Metrics over all held-out predictions together."""
    o, p = np.asarray(obs, float), np.asarray(pred, float)
    sse = float(np.sum((p - o) ** 2))
    sst = float(np.sum((o - o.mean()) ** 2))
    return {
        "R2": _r2(o, p),
        "R2_sse": 1 - sse / sst if sst > 0 else np.nan,
        "RMSE": float(np.sqrt(sse / len(o))),
        "MAE": float(np.mean(np.abs(p - o))),
        "bias": float(np.mean(p - o)),
        "n": int(len(o)),
    }


def skill_table(pred: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """caret-style and pooled skill, overall or per group of column ``by``."""
    groups = [(None, pred)] if by is None else list(pred.groupby(by, dropna=False, sort=True))
    rows = []
    for key, g in groups:
        c = caret_metrics(g.obs, g.pred, g.site_id)
        p = pooled_metrics(g.obs, g.pred)
        rows.append(
            {
                **({} if by is None else {by: key}),
                **{f"caret_{k}": v for k, v in c.items()},
                **{f"pooled_{k}": v for k, v in p.items()},
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- LOSO
@dataclass
class LosoResult:
    """Held-out predictions for every mtry, the per-mtry metrics, and the chosen mtry."""

    predictions: pd.DataFrame  # row, site_id, mtry, obs, pred
    metrics: pd.DataFrame  # one row per mtry: caret-style and pooled
    best_mtry: int


def _encode(X: pd.DataFrame, categorical) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrix with factor codes over the whole table (as R factors keep all levels)."""
    enc = FluxForest(categorical=categorical, n_estimators=1)
    enc.feature_names_ = list(X.columns)
    enc.levels_ = {}
    for c in categorical:
        if c in X.columns:
            v = enc._levels_of(c, X[c].to_numpy())
            enc.levels_[c] = np.array(sorted(pd.unique(v[pd.notna(v)])))  # NaN is not a level
    M = enc._matrix(X)
    is_cat = np.array([c in enc.levels_ for c in X.columns])
    n_levels = np.array([len(enc.levels_[c]) if c in enc.levels_ else 0 for c in X.columns])
    return M, is_cat, n_levels


def _checked(X, y, sites, grid, central, what: str):
    """The CV's inputs checked: y as float64 and finite, site ids as str (at least 3 sites),
    ``central`` known, the mtry grid (default :func:`mtry_grid`) sorted within 1..p."""
    y = np.asarray(y, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    n_sites = len(np.unique(sites))
    if n_sites < 3:
        raise ValueError(f"{what} needs at least 3 sites, got {n_sites}")
    if not np.isfinite(y).all():
        raise ValueError("response contains NaN or inf; apply listwise deletion first")
    if central not in CENTRALS:
        raise ValueError(f"central must be one of {list(CENTRALS)}, got {central!r}")
    p = X.shape[1]
    grid = mtry_grid(p) if grid is None else sorted(set(int(g) for g in grid))
    bad = [g for g in grid if not 1 <= g <= p]
    if bad:
        raise ValueError(f"mtry grid values {bad} outside 1..{p}")
    return y, sites, grid


def _fold_predictions(M, y, is_cat, n_levels, order, train, test, grid, n_trees, nodesize, seed, central, fold):
    out = []
    for m in grid:
        s = fold_seed(seed, fold, m)
        f = grow_forest(
            M,
            y,
            is_cat=is_cat,
            n_levels=n_levels,
            n_trees=n_trees,
            mtry=m,
            nodesize=nodesize,
            seed=s,
            rows=train,
            order=order,
        )
        if central == "qrf_median":  # the fold's own leaf draws, from its training rows only
            out.append(qrf_median(f, qrf_leaf_draws(f, M[train], y[train], s), M[test]))
        else:
            out.append(f.predict(M[test]))
    return out


def loso_cv(
    X: pd.DataFrame,
    y,
    sites,
    grid=None,
    *,
    n_trees=500,
    nodesize=5,
    seed=DEFAULT_SEED,
    categorical=CATEGORICAL,
    central="mean",
    client=None,
    progress=None,
    holdout=None,
) -> LosoResult:
    """Leave-one-site-out CV of random forests over an mtry grid.

    Each fold trains on every row of the other sites and predicts the held-out site's rows; no
    row of the held-out site reaches its fold's forest. ``central`` is the forests' central value
    (:data:`abzflux.vocab.CENTRALS`): the held-out predictions, and so the metrics and the chosen
    mtry, are those of the mean forest or of the quantile forest's median (its leaf draws from
    the fold's training rows, seeded as :class:`~abzflux.forest.FluxForest` seeds them). ``client`` (a dask.distributed Client)
    spreads folds over a cluster with identical results. ``holdout`` (site ids) evaluates only
    those folds, each still trained on all other sites (for timing and spot checks).
    """
    y, sites, grid = _checked(X, y, sites, grid, central, "leave-one-site-out CV")
    usites = np.unique(sites)
    M, is_cat, n_levels = _encode(X, categorical)
    order = presort(M)
    folds = [
        (k, np.nonzero(sites != s)[0], np.nonzero(sites == s)[0])
        for k, s in enumerate(usites)
        if holdout is None or s in set(map(str, holdout))
    ]
    args = (grid, n_trees, nodesize, seed, central)
    if client is not None:
        fut_data = client.scatter([M, y, is_cat, n_levels, order], broadcast=True)
        futs = [client.submit(_fold_predictions, *fut_data, tr, te, *args, k, pure=False) for k, tr, te in folds]
        results = []
        for i, fu in enumerate(futs):
            results.append(fu.result())
            if progress:
                progress(i + 1, len(folds))
    else:
        results = []
        for i, (k, tr, te) in enumerate(folds):
            results.append(_fold_predictions(M, y, is_cat, n_levels, order, tr, te, *args, k))
            if progress:
                progress(i + 1, len(folds))
    parts = []
    for (_, _, te), res in zip(folds, results):
        for m, pr in zip(grid, res):
            parts.append(pd.DataFrame({"row": te, "site_id": sites[te], "mtry": m, "obs": y[te], "pred": pr}))
    pred = pd.concat(parts, ignore_index=True)
    return _result(pred)


# --------------------------------------------------------------------------- grouped out-of-bag
def site_oob_design(n_sites: int, n_trees: int, site_fraction: float, seed: int) -> np.ndarray:
    """The sites each tree holds out, (n_trees, n_sites) bool, balanced: K = round(1 / fraction)
    consecutive trees split a fresh random permutation of the sites into K near-equal chunks
    and hold out one chunk each, so every site is held out by ``n_trees // K`` or
    ``n_trees // K + 1`` trees (the ``cv_oob_sites`` stream of ``seed``)."""
    if not 0.0 < site_fraction <= 0.5:
        raise ValueError(f"site_fraction must be in (0, 0.5], got {site_fraction}")
    k = max(2, int(round(1.0 / site_fraction)))
    if k > n_sites:
        raise ValueError(f"site_oob holds out 1/{k} of the sites per tree but there are only {n_sites} sites")
    rng = seeds.rng(seed, "cv_oob_sites")
    held = np.zeros((n_trees, n_sites), dtype=bool)
    for r0 in range(0, n_trees, k):
        for j, chunk in enumerate(np.array_split(rng.permutation(n_sites), k)):
            if r0 + j < n_trees:
                held[r0 + j, chunk] = True
    return held


def disc_design(
    xy, n_trees: int, r_min: float, r_max: float, rng: np.random.Generator, max_share: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Spatially buffered held-out sets: tree t holds out every site within a radius R_t of a
    random centre site (R_t log-uniform on [r_min, r_max], m; at most ``max_share`` of the sites,
    the nearest to the centre), so a held-out site is predicted from sites at least as far as
    its nearest training site. Returns ``held`` (n_trees, n_sites) bool and ``dist`` (n_trees,
    n_sites): a held-out site's distance (m) to the nearest site the tree trains on (NaN where
    the site is not held out). ``xy``: (n_sites, 2) site coordinates on an equal-area
    projection (m); ``rng``: the design's generator (the network term's: ``network_disc``)."""
    xy = np.asarray(xy, np.float64)
    n = len(xy)
    if n < 3:
        raise ValueError(f"a buffered design needs at least 3 sites, got {n}")
    if not 0 < r_min <= r_max:
        raise ValueError(f"need 0 < r_min <= r_max, got {r_min}, {r_max}")
    D = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    cap = max(1, min(n - 1, int(max_share * n)))
    held = np.zeros((n_trees, n), dtype=bool)
    dist = np.full((n_trees, n), np.nan)
    for t in range(n_trees):
        c = int(rng.integers(n))
        r = float(np.exp(rng.uniform(np.log(r_min), np.log(r_max))))
        idx = np.nonzero(D[c] <= r)[0]
        if len(idx) > cap:
            idx = np.argsort(D[c], kind="stable")[:cap]
        held[t, idx] = True
        dist[t, idx] = D[np.ix_(idx, np.nonzero(~held[t])[0])].min(axis=1)
    return held, dist


def held_out_site_means(
    X: pd.DataFrame,
    y,
    sites,
    held,
    *,
    mtry: int,
    weight=None,
    nodesize=5,
    seed=DEFAULT_SEED,
    categorical=CATEGORICAL,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Grouped out-of-bag forest on a given design (``held``: (n_trees, n_sites) bool over the
    sorted unique ``sites``; tree t draws its bootstrap from the rows of the sites it does not
    hold out). Returns the per-site means of ``weight · y`` (n_sites,) and, per site and tree,
    the mean of ``weight · prediction`` of the site's rows where the tree held the site out
    (n_sites, n_trees; NaN elsewhere). ``weight``: per-row factor (default 1)."""
    y = np.asarray(y, np.float64)
    usites, code = np.unique(np.asarray(sites).astype(str), return_inverse=True)
    held = np.asarray(held, dtype=bool)
    if held.shape[1] != len(usites):
        raise ValueError(f"held has {held.shape[1]} sites, the rows {len(usites)}")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    M, is_cat, n_levels = _encode(X, categorical)
    f = grow_forest(
        M,
        y,
        is_cat=is_cat,
        n_levels=n_levels,
        n_trees=held.shape[0],
        mtry=mtry,
        nodesize=nodesize,
        seed=seed,
        order=presort(M),
        group=code,
        held=held,
    )
    per_row = w / np.bincount(code)[code]  # a site's rows average with equal weight
    q = np.zeros((len(usites), held.shape[0]))
    for b0 in range(0, len(y), block):
        sl = slice(b0, b0 + block)
        S = np.zeros((len(usites), len(y[sl])))
        S[code[sl], np.arange(len(y[sl]))] = per_row[sl]
        q += S @ f.predict_trees(M[sl])
    q[~held.T] = np.nan
    return np.bincount(code, weights=per_row * y, minlength=len(usites)), q


def site_oob_cv(
    X: pd.DataFrame,
    y,
    sites,
    grid=None,
    *,
    n_trees=1500,
    site_fraction=0.1,
    nodesize=5,
    seed=DEFAULT_SEED,
    categorical=CATEGORICAL,
    central="mean",
    progress=None,
    min_oob_trees=MIN_OOB_TREES,
) -> LosoResult:
    """Grouped out-of-bag CV over an mtry grid: the fast stand-in for :func:`loso_cv`.

    Per mtry one forest of ``n_trees`` trees; tree t holds out a random share ``site_fraction``
    of the sites (:func:`site_oob_design`, the same design for every mtry) and draws its
    bootstrap, as many draws as rows, from the rows of the other sites only. A row's held-out
    prediction is the mean (``central = "mean"``) over the trees that held its site out, or the
    type-7 median over those trees of one leaf draw per leaf from the tree's own training sites'
    rows (``"qrf_median"``, as :func:`loso_cv` draws from the fold's training rows). No row of a
    site reaches a tree that predicts it. Metrics and the chosen mtry as :func:`loso_cv`.
    Raises if a site is held out by fewer than ``min_oob_trees`` trees.
    """
    y, sites, grid = _checked(X, y, sites, grid, central, "grouped out-of-bag CV")
    usites, code = np.unique(sites, return_inverse=True)
    held = site_oob_design(len(usites), n_trees, site_fraction, seed)
    per_site = held.sum(axis=0)
    if per_site.min() < min_oob_trees:
        worst = usites[int(np.argmin(per_site))]
        raise ValueError(
            f"site {worst} is held out by only {int(per_site.min())} of {n_trees} trees (site_fraction "
            f"{site_fraction}); site_oob needs at least {min_oob_trees}: raise the number of trees"
        )
    M, is_cat, n_levels = _encode(X, categorical)
    order = presort(M)
    parts = []
    for i, m in enumerate(grid):
        s = seeds.integer(seed, "cv_oob", m)
        f = grow_forest(
            M,
            y,
            is_cat=is_cat,
            n_levels=n_levels,
            n_trees=n_trees,
            mtry=m,
            nodesize=nodesize,
            seed=s,
            order=order,
            group=code,
            held=held,
        )
        value = None
        if central == "qrf_median":
            # each tree's leaf draws from the rows of the sites it trained on
            draws = qrf_leaf_draws(f, M, y, s, exclude=held[:, code].T)
            per_tree = f.predict_trees(M, draws)
            per_tree[~held[:, code].T] = np.nan
            pr = np.nanmedian(per_tree, axis=1)
        else:
            pr, n_out = f.predict_oob(M, code, held, value)
            if n_out.min() < min_oob_trees:  # the design above guarantees it; a cheap guard
                raise AssertionError("a row has fewer out-of-bag trees than its site's count")
        parts.append(pd.DataFrame({"row": np.arange(len(y)), "site_id": sites, "mtry": m, "obs": y, "pred": pr}))
        if progress:
            progress(i + 1, len(grid))
    pred = pd.concat(parts, ignore_index=True)
    if not np.isfinite(pred.pred).all():
        raise AssertionError("site_oob left a row without a held-out prediction")
    return _result(pred)


def _result(pred: pd.DataFrame) -> LosoResult:
    mets = []
    for m, g in pred.groupby("mtry", sort=True):
        t = skill_table(g)
        t.insert(0, "mtry", m)
        mets.append(t)
    metrics = pd.concat(mets, ignore_index=True)
    best = int(metrics.loc[metrics.caret_RMSE.idxmin(), "mtry"])  # caret "best": lowest mean RMSE
    metrics["selected"] = metrics.mtry == best
    return LosoResult(pred, metrics, best)


SKILL_BREAKDOWNS = (None, "month", "biome", "veg_type", "disturbance", "method")


def skill_tables(chosen: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The CV skill of the chosen mtry per flux, overall and by each breakdown, by file stem
    (``skill``, ``skill_by_month``, ...)."""
    out = {}
    for by in SKILL_BREAKDOWNS:
        parts = []
        for f, g in chosen.groupby("flux", sort=False):
            g = g.assign(disturbance=g.disturbance.fillna("none").replace("", "none")) if by == "disturbance" else g
            t = skill_table(g, by)
            t.insert(0, "flux", f)
            parts.append(t)
        out[f"skill{'' if by is None else '_by_' + by}"] = pd.concat(parts, ignore_index=True)
    return out


@dataclass
class FluxFit:
    """One flux's final forest and what the forest step records of it."""

    model: FluxForest
    info: dict  # models/forest.json's entry
    predictions: pd.DataFrame | None  # the CV predictions with the rows' breakdown columns (None without CV)
    metrics: pd.DataFrame | None  # CV metrics by mtry
    overall: dict | None  # the CV metrics of the chosen mtry
    seconds: dict  # {"cv": ..., "fit": ...}
    fitted: pd.DataFrame | None = None  # the final forest's in-sample prediction of every training row


#: Columns of the training rows that go with the CV predictions (skill breakdowns).
BREAKDOWN_COLUMNS = ["site_id", "year", "month", "biome", "region", "veg_type", "method", "disturbance"]


def fit_flux(
    rows: pd.DataFrame,
    flux: str,
    x_cols: list[str],
    *,
    mtry: int | None,
    grid: list | None,
    n_estimators: int,
    nodesize: int,
    central,
    cv: str | bool,
    seed: int,
    forest_seed: int,
    dropped: list,
    progress=None,
    client=None,
    categorical=CATEGORICAL,
    oob_site_fraction: float = 0.1,
    oob_trees: int = 1500,
) -> FluxFit:
    """CV over the mtry grid (``mtry`` fixed: that one) -- exact leave-one-site-out (``cv =
    "loso"`` or true), grouped out-of-bag (``"site_oob"``: :func:`site_oob_cv` with
    ``oob_site_fraction`` and ``oob_trees``) or none (``"none"`` or false) -- the chosen mtry,
    and the final forest refit on all ``rows``. ``grid``: the mtry values to tune over (default
    :func:`mtry_grid`); ``categorical``: the factors among ``x_cols``."""
    mode = ("loso" if cv else "none") if isinstance(cv, bool) else cv
    if mode not in CV_MODES:
        raise ValueError(f"cv must be one of {list(CV_MODES)} (or true / false), got {cv!r}")
    grid = [mtry] if mtry is not None else (grid or mtry_grid(len(x_cols)))
    best = mtry
    pred = m = overall = None
    t0 = time.perf_counter()
    if mode != "none":
        args = (rows[x_cols], rows[flux].to_numpy(), rows.site_id.to_numpy(), grid)
        kw = dict(n_trees=n_estimators, nodesize=nodesize, seed=seed, progress=progress)
        kw.update(categorical=categorical, central=central)
        try:
            if mode == "site_oob":
                kw.update(n_trees=oob_trees, site_fraction=oob_site_fraction)
                res = site_oob_cv(*args, **kw)
            else:
                res = loso_cv(*args, client=client, **kw)
        finally:
            if progress is not None:
                progress(None, None)
        best = res.best_mtry if best is None else best
        pred = res.predictions.merge(
            rows[BREAKDOWN_COLUMNS].reset_index().rename(columns={"index": "row"}), on=["row", "site_id"]
        )
        pred.insert(0, "flux", flux)
        m = res.metrics.copy()
        m.insert(0, "flux", flux)
        overall = m[m.mtry == best].iloc[0].to_dict()
    elif best is None:
        best = max(len(x_cols) // 3, 1)
    cv_s = time.perf_counter() - t0
    model = FluxForest(
        n_estimators=n_estimators,
        mtry=best,
        nodesize=nodesize,
        central=central,
        random_state=forest_seed,
        categorical=categorical,
    )
    t0 = time.perf_counter()
    model.fit(rows[x_cols], rows[flux].to_numpy())
    fit_s = time.perf_counter() - t0
    fitted = model.predict(rows[x_cols])
    obs = rows[flux].to_numpy()
    info = {
        "rows": int(len(rows)),
        "sites": int(rows.site_id.nunique()),
        "mtry": int(best),
        "mtry_grid": [int(g) for g in grid],
        "tuned": mtry is None and mode != "none",
        "n_estimators": n_estimators,
        "nodesize": nodesize,
        "central": central,
        "sites_dropped_by_listwise_deletion": dropped,
        "in_sample_r2": float(np.corrcoef(fitted, obs)[0, 1] ** 2),
        "in_sample_rmse": float(np.sqrt(np.mean((fitted - obs) ** 2))),
        "cv": {
            k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
            for k, v in (overall or {}).items()
        },
    }
    if mode == "site_oob":  # (LOSO runs keep forest.json as it always was: no key means LOSO)
        k = max(2, int(round(1.0 / oob_site_fraction)))
        info["cv_mode"] = mode
        info["oob_site_fraction"] = oob_site_fraction
        info["oob_trees"] = oob_trees
        info["oob_trees_per_site"] = [oob_trees // k, -(-oob_trees // k)]
    fitted_rows = rows[["site_id", "year", "month"]].assign(obs=obs, fitted=fitted)
    fitted_rows.insert(0, "flux", flux)
    return FluxFit(
        model,
        info,
        pred,
        m,
        overall,
        {"cv": round(cv_s, 2), "fit": round(fit_s, 2)},
        fitted_rows.reset_index(drop=True),
    )
