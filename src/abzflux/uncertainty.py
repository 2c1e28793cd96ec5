"""Uncertainty methods beside the paper's row bootstrap (docs/uncertainty.md).

* Resampling units of the bootstrap ensemble (``[uncertainty] method``): ``rows`` (the paper's:
  site-months drawn with replacement), ``sites`` (whole sites drawn with replacement: a cluster
  bootstrap, since the months of one site are strongly correlated) and ``blocks`` (sites grouped
  into square spatial blocks of ``block_km``; whole blocks drawn with replacement, since nearby
  sites are correlated too).
* An extrapolation-aware SD term (``[uncertainty] extrapolation = true``) that grows with the
  dissimilarity index (DI, :class:`abzflux.compare.AOA`) of a cell's predictors to the training
  data. Its slope comes from the leave-one-site-out CV: the absolute site-mean residual of each
  held-out site against the DI of that site's rows to the other sites' rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from . import budgets as budgets_mod
from . import cv, seeds
from .compare import AOA, CONTINUOUS
from .formats import FLUXES, flux_attrs, with_month_bounds, write_crs

#: E|e| = sigma * sqrt(2/pi) for a zero-mean normal error e: the SD from a mean absolute error.
HALF_NORMAL = float(np.sqrt(np.pi / 2))


# --------------------------------------------------------------------------- resampling
def site_blocks(x_m: np.ndarray, y_m: np.ndarray, block_km: float) -> np.ndarray:
    """Spatial block label of each site from its projected coordinates (m): square blocks of
    ``block_km`` on the grid's own projection (equal-area), anchored at the projection origin."""
    s = float(block_km) * 1000.0
    bx = np.floor(np.asarray(x_m, np.float64) / s).astype(np.int64)
    by = np.floor(np.asarray(y_m, np.float64) / s).astype(np.int64)
    return np.array([f"{a}_{b}" for a, b in zip(bx, by)], dtype=object)


def resample_rows(
    site_ids: np.ndarray, method: str, rng: np.random.Generator, block_of_site: dict | None = None
) -> np.ndarray:
    """Row indices of one bootstrap member.

    ``rows``: n row indices drawn with replacement from the n rows. ``sites``: as many sites as
    there are, drawn with replacement, each contributing all its rows (a site drawn twice
    contributes them twice). ``blocks``: the same with spatial blocks (``block_of_site`` maps a
    site to its block). The result is sorted by draw, so a member's rows are whole units."""
    site_ids = np.asarray(site_ids)
    n = len(site_ids)
    if method == "rows":
        return rng.integers(0, n, n)
    if method == "sites":
        unit = site_ids
    elif method == "blocks":
        if block_of_site is None:
            raise ValueError("block bootstrap needs block_of_site")
        unit = np.array([block_of_site[s] for s in site_ids], dtype=object)
    else:
        raise ValueError(f"unknown bootstrap method {method!r}")
    names, codes = np.unique(unit.astype(str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(names)))
    ends = np.append(starts[1:], n)
    draw = rng.integers(0, len(names), len(names))
    return np.concatenate([order[starts[u] : ends[u]] for u in draw])


# --------------------------------------------------------------------------- extrapolation term
def fit_extrapolation(site_di: np.ndarray, site_abs_error: np.ndarray) -> dict:
    """Least-squares line |site-mean LOSO residual| = a + b * DI over the held-out sites.

    The intercept is the error floor of sites like the training data (site effects, flux
    measurement noise); the bootstrap is meant to cover that part and it is not spatially
    coherent. The slope (b >= 0; a negative fitted slope means no growth, b = 0) is the error
    that extrapolation adds. ``di_ref`` is the median site DI: the term starts there."""
    d = np.asarray(site_di, np.float64)
    e = np.asarray(site_abs_error, np.float64)
    ok = np.isfinite(d) & np.isfinite(e)
    d, e = d[ok], e[ok]
    if len(d) < 3 or np.ptp(d) == 0:
        return {
            "a": float(np.mean(e)) if len(e) else float("nan"),
            "b": 0.0,
            "di_ref": float(np.median(d)) if len(d) else 0.0,
            "n_sites": int(len(d)),
        }
    b, a = np.polyfit(d, e, 1)
    return {
        "a": float(a),
        "b": float(max(b, 0.0)),
        "di_ref": float(np.median(d)),
        "n_sites": int(len(d)),
        "r": float(np.corrcoef(d, e)[0, 1]),
    }


def extrapolation_sd(di: np.ndarray, model: dict) -> np.ndarray:
    """SD (flux units) added at dissimilarity ``di``: sqrt(pi/2) * b * max(DI - di_ref, 0), the
    half-normal SD of the mean absolute error that the DI beyond the typical site DI adds."""
    di = np.asarray(di, np.float64)
    with np.errstate(invalid="ignore"):
        return HALF_NORMAL * model["b"] * np.clip(di - model["di_ref"], 0.0, None)


def site_errors(rows: pd.DataFrame, pred: pd.DataFrame, train_di: np.ndarray, flux: str) -> pd.DataFrame:
    """Per held-out site: mean DI of its rows to the other sites' rows and |mean LOSO residual|.
    ``pred`` holds the CV predictions (``row`` indexes ``rows``; obs, pred)."""
    r = pd.DataFrame({"row": np.arange(len(rows)), "site_id": rows.site_id.to_numpy(), "di": train_di})
    r = r.merge(pred[["row", "obs", "pred"]], on="row", how="inner")
    g = (
        r.assign(res=r.obs - r.pred)
        .groupby("site_id")
        .agg(di=("di", "mean"), residual=("res", "mean"), n=("row", "size"))
        .reset_index()
    )
    g["abs_error"] = g.residual.abs()
    return g.assign(flux=flux)


#: Leave-cluster-out levels of the multi-CV (k-means clusters of the sites in the DI space) and
#: trees of its forest (each cluster held out by trees // sum(levels) of them).
MULTICV_LEVELS = (4, 8, 16)
MULTICV_TREES = 1400


def multicv_site_errors(
    rows: pd.DataFrame,
    x_cols: list,
    y,
    aoa,
    *,
    mtry: int,
    nodesize: int,
    categorical,
    seed: int,
    continuous=CONTINUOUS,
    levels=MULTICV_LEVELS,
    n_trees: int = MULTICV_TREES,
) -> pd.DataFrame:
    """Leave-cluster-out errors at growing dissimilarity (the multi-CV of CAST's
    ``DItoErrormetric``, Meyer & Pebesma 2021): the sites are clustered by k-means on their mean
    position in the DI space of ``aoa`` into k clusters for each k of ``levels``; one grouped
    out-of-bag forest (:func:`abzflux.cv.held_out_site_means`) whose trees each hold out one
    cluster predicts every held-out site from the other clusters' rows only. Per level and
    site: the mean DI of its rows to the rows outside its cluster and the site-mean residual
    (observed − predicted). Leave-one-site-out predicts each site from close neighbours; whole
    clusters left out reach the DI of poorly sampled regions. Columns site_id, level, di,
    residual, n, abs_error."""
    from scipy.spatial import cKDTree
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    y = np.asarray(y, np.float64)
    site = rows.site_id.astype(str).to_numpy()
    usites, code = np.unique(site, return_inverse=True)
    Z = aoa.transform(rows[list(continuous)].to_numpy(np.float64))
    ok = np.isfinite(Z).all(1)
    zs = pd.DataFrame(Z[ok]).groupby(code[ok]).mean().reindex(range(len(usites)))
    zs = zs.fillna(zs.mean()).to_numpy()
    groups = []  # (level k, site mask)
    for k in levels:
        k = int(min(k, len(np.unique(zs, axis=0))))
        if k < 2:
            continue
        with threadpool_limits(limits=1, user_api="openmp"):  # deterministic centre sums
            lab = KMeans(n_clusters=k, n_init=10, random_state=seeds.integer(seed, "kmeans")).fit(zs).labels_
        for c in range(k):
            m = lab == c
            if 0 < m.sum() < len(usites):
                groups.append((k, m))
    if not groups:
        return pd.DataFrame(columns=["site_id", "level", "di", "residual", "n", "abs_error"])
    per = max(1, n_trees // len(groups))
    labels = np.repeat(np.arange(len(groups)), per)
    held = np.stack([groups[g][1] for g in labels])
    # per site and tree the site-mean prediction; a cluster's trees all hold out the same sites
    ysite, q = cv.held_out_site_means(
        rows[x_cols],
        y,
        site,
        held,
        mtry=mtry,
        nodesize=nodesize,
        seed=seeds.integer(seed, "extrap_multicv"),
        categorical=categorical,
    )
    out = []
    for g, (k, m) in enumerate(groups):
        test = m[code] & ok
        train = ~m[code] & ok
        if not test.any() or not train.any():
            continue
        di = cKDTree(Z[train]).query(Z[test], k=1)[0] / aoa.mean_dist
        a = pd.DataFrame({"c": code[test], "di": di}).groupby("c").agg(di=("di", "mean"), n=("di", "size"))
        c = a.index.to_numpy()
        residual = ysite[c] - q[c][:, labels == g].mean(axis=1)
        out.append(
            pd.DataFrame(
                {"site_id": usites[c], "level": k, "di": a.di.to_numpy(), "residual": residual, "n": a.n.to_numpy()}
            )
        )
    e = pd.concat(out, ignore_index=True)
    e["abs_error"] = e.residual.abs()
    return e[["site_id", "level", "di", "residual", "n", "abs_error"]]


def flux_extrapolation(
    rows: pd.DataFrame,
    cv_pred: pd.DataFrame,
    mtry: int,
    importance: pd.DataFrame | None,
    flux: str,
    max_training: int,
    continuous=CONTINUOUS,
    multicv: dict | None = None,
) -> tuple[dict, AOA, pd.DataFrame]:
    """One flux's extrapolation term: the AOA of its training rows (``importance``-weighted when
    given; at most ``max_training`` rows), the site-mean LOSO residuals (chosen ``mtry``)
    against the dissimilarity index, and the fitted DI model. Returns (model, aoa, site errors).

    ``multicv``: keyword arguments of :func:`multicv_site_errors` (x_cols, y, nodesize,
    categorical, seed): the leave-cluster-out site errors join the LOSO ones in the fit (column
    ``level``: 1 for leave-one-site-out, k for k clusters)."""
    w = np.ones(len(continuous))
    if importance is not None and (importance.flux == flux).any():
        s = importance[importance.flux == flux].set_index("predictor").importance
        w = np.array([s.get(v, 0.0) for v in continuous], np.float64)
    sub = rows
    if len(rows) > max_training:
        sub = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, max_training).round().astype(int))]
    aoa = AOA(sub[list(continuous)].to_numpy(np.float64), sub.site_id.to_numpy(), w)
    di_rows = np.full(len(rows), np.nan)
    di_rows[sub.index.to_numpy()] = aoa.train_di
    p = cv_pred[(cv_pred.flux == flux) & (cv_pred.mtry == mtry)]
    e = site_errors(rows, p, di_rows, flux).assign(level=1)
    if multicv is not None:
        mc = multicv_site_errors(rows, aoa=aoa, mtry=mtry, continuous=continuous, **multicv)
        e = pd.concat([e, mc.assign(flux=flux)], ignore_index=True)
    m = fit_extrapolation(e.di.to_numpy(), e.abs_error.to_numpy())
    if multicv is not None:  # the term starts at the typical leave-one-site-out DI, as without multi-CV
        m["di_ref"] = float(np.nanmedian(e.di[e.level == 1]))
    m["weights"] = "importance" if importance is not None else "equal"
    m["cv"] = "multicv" if multicv is not None else "loso"
    return m, aoa, e


def sd_block(
    pred: xr.Dataset, land: np.ndarray, tk: np.ndarray, ys: slice, aoas: dict, models: dict, continuous=CONTINUOUS
) -> dict:
    """The extrapolation SD maps of one block of months ``tk`` and grid rows ``ys``, by variable."""
    nb, nx = ys.stop - ys.start, pred.sizes["x"]
    cols = []
    for v in continuous:
        da = pred[v].isel(y=ys)
        a = np.asarray(
            da.isel(time=tk).values if "time" in da.dims else np.broadcast_to(da.values, (len(tk), nb, nx)), np.float64
        )
        cols.append(a.reshape(-1))
    X = np.stack(cols, 1)
    X[~np.tile(land[ys].ravel(), len(tk))] = np.nan
    data = {}
    for f in FLUXES:
        sd = extrapolation_sd(aoas[f].di(X), models[f]).reshape(len(tk), nb, nx).astype(np.float32)
        data[f"{f}_extrap_sd"] = (("time", "y", "x"), sd)
    return data


def sd_template(pred: xr.Dataset, tsel: np.ndarray, band: int, crs) -> xr.Dataset:
    """The (lazy, NaN) layout of the monthly extrapolation SD maps."""
    import dask.array as dsa

    times = pd.DatetimeIndex(pred.time.values)
    ny, nx = pred.sizes["y"], pred.sizes["x"]
    ch = (12, band, nx)
    tmpl = xr.Dataset(
        {
            f"{f}_extrap_sd": (
                ("time", "y", "x"),
                dsa.full((len(tsel), ny, nx), np.nan, dtype=np.float32, chunks=ch),
                flux_attrs(f"{f} extrapolation SD term"),
            )
            for f in FLUXES
        },
        coords={"time": times[tsel], "y": pred.y.values, "x": pred.x.values},
    )
    return write_crs(with_month_bounds(tmpl), crs)


def zone_extrapolation_sd(sd_maps: xr.Dataset, zones: xr.Dataset, veg: xr.DataArray) -> pd.DataFrame:
    """Zone-month extrapolation SD (Tg C month-1): the cell SDs summed with the zone weights, i.e.
    cell errors fully correlated within a zone (the conservative choice). Columns zone, time,
    year, month, flux, tg_c_sd_extrap."""
    ds = sd_maps.rename({f"{f}_extrap_sd": f for f in FLUXES})[list(FLUXES)]
    m = budgets_mod.monthly_budgets(ds, zones, veg=veg)
    return m.rename(columns={"tg_c": "tg_c_sd_extrap"}).drop(columns="coverage")
