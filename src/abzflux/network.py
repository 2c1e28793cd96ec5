"""Network simulation: the error of the site network and the method, by simulation
(``[uncertainty] network = true``; docs/uncertainty.md, "The network-simulation term").

The run's own fitted monthly maps are taken as a surrogate world. Per replicate:

1. A surrogate truth per flux: the fitted map plus a Gaussian random field ``F`` (static in
   time, exponential covariance) that stands for the spatial variability the forest cannot
   represent, scaled per calendar month by ``s(month)``:
   ``truth(t, cell) = fitted(t, cell) + s(m_t) · F(cell)``.
2. Pseudo observations at the real site-months of the training table:
   ``obs = f̂(X_row) + s(m) · (F(site cell) + u_site + e_row)`` with ``f̂(X_row)`` the final
   forest's prediction of the row (the surrogate world at the site), ``u_site ~ N(0, σ_site²)``
   a site random effect and ``e_row ~ N(0, σ_noise²)`` within-site noise, both by measurement
   method (EC, chamber, other).
3. Forests refitted on the pseudo observations with the run's settings (mtry fixed at the run's
   chosen value, no CV), the grid predicted, the zones summed as the budgets sum them.
4. error = estimate − truth per zone, year and flux (Tg C yr-1).

The residual model (σ_site, σ_noise per method, the field's SD and range, ``s(month)``) is fitted
to the leave-one-site-out (LOSO) residuals (:func:`fit_residual_model`): a one-way
random-effects ANOVA (method of moments, unbalanced) per method on the residuals divided by
``s(month)``, and an exponential variogram of the site-mean residuals whose partial sill is the
field's variance. Everything here takes arrays and tables; the step module does the I/O.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import cv, seeds
from . import upscale as upscale_mod
from .budgets import TG
from .forest import FluxForest
from .trends import sen_slope
from .vocab import FLUXES

log = logging.getLogger(__name__)

#: Measurement-method groups of the residual model (rows without a method: "other").
METHODS = ("EC", "chamber", "other")
#: A calendar month with fewer LOSO residuals than this takes the smallest estimated scale.
MIN_MONTH_ROWS = 20
#: The variogram's distance bins: this many, up to a third of the largest site distance (beyond,
#: pairs span continents and the regions' offsets dominate).
VARIOGRAM_BINS = 12
VARIOGRAM_SHARE = 1 / 3
#: The fluxes scored (NEE as Reco − GPP from the refitted GPP and Reco forests too).
SCORED = (*FLUXES, "nee_derived")


# --------------------------------------------------------------------------- residual model
def method_group(method) -> np.ndarray:
    """The residual model's method group of each row: EC, chamber or other."""
    m = pd.Series(np.asarray(method, dtype=object)).astype("string").str.strip().str.lower()
    out = np.full(len(m), "other", dtype=object)
    out[(m == "ec").fillna(False).to_numpy(bool)] = "EC"
    out[(m == "chamber").fillna(False).to_numpy(bool)] = "chamber"
    return out


def seasonal_scale(month, residual, min_rows: int = MIN_MONTH_ROWS) -> np.ndarray:
    """s(month), months 1–12: the RMS residual of the calendar month over the RMS of all
    residuals. A month with fewer than ``min_rows`` residuals takes the smallest estimated
    scale (the months without data are the winter months of chamber-heavy networks)."""
    month = np.asarray(month, np.int64)
    r = np.asarray(residual, np.float64)
    overall = float(np.sqrt(np.mean(r**2)))
    s = np.full(12, np.nan)
    if overall == 0:
        return np.ones(12)
    for k in range(1, 13):
        sel = month == k
        if sel.sum() >= min_rows:
            s[k - 1] = np.sqrt(np.mean(r[sel] ** 2)) / overall
    if np.isnan(s).all():
        return np.ones(12)
    return np.where(np.isnan(s), np.nanmin(s), s)


def anova_components(residual, site) -> dict:
    """One-way random-effects ANOVA (method of moments, unbalanced groups):
    within-site variance σ_e² = MSW; between-site σ_b² = max((MSB − MSW) / n0, 0) with
    n0 = (N − Σ n_i² / N) / (k − 1). Also the mean residual and the counts."""
    r = np.asarray(residual, np.float64)
    s = pd.Series(np.asarray(site).astype(str))
    N = len(r)
    if N == 0:
        return {"var_site": 0.0, "var_noise": 0.0, "mean": 0.0, "n_sites": 0, "n_rows": 0}
    g = pd.DataFrame({"r": r, "s": s}).groupby("s").r
    n_i, m_i = g.size().to_numpy(np.float64), g.mean().to_numpy()
    k = len(n_i)
    grand = float(r.mean())
    ssw = float(((r - s.map(g.mean()).to_numpy()) ** 2).sum())
    msw = ssw / (N - k) if N > k else 0.0
    if k < 2:
        return {"var_site": 0.0, "var_noise": msw, "mean": grand, "n_sites": k, "n_rows": N}
    msb = float((n_i * (m_i - grand) ** 2).sum()) / (k - 1)
    n0 = (N - (n_i**2).sum() / N) / (k - 1)
    return {
        "var_site": max((msb - msw) / n0, 0.0),
        "var_noise": msw,
        "mean": grand,
        "n_sites": int(k),
        "n_rows": int(N),
    }


def empirical_variogram(x, y, value, n_bins: int = VARIOGRAM_BINS, max_dist: float | None = None) -> pd.DataFrame:
    """Semivariance 0.5·mean((v_i − v_j)²) of the site pairs in equal distance bins up to
    ``max_dist`` (default: :data:`VARIOGRAM_SHARE` of the largest distance). Columns h (mean pair distance), gamma,
    pairs."""
    x, y, v = (np.asarray(a, np.float64) for a in (x, y, value))
    i, j = np.triu_indices(len(v), 1)
    d = np.hypot(x[i] - x[j], y[i] - y[j])
    sq = 0.5 * (v[i] - v[j]) ** 2
    if max_dist is None:
        max_dist = VARIOGRAM_SHARE * float(d.max()) if len(d) else 0.0
    if max_dist <= 0:
        return pd.DataFrame({"h": [], "gamma": [], "pairs": []})
    edges = np.linspace(0.0, max_dist, n_bins + 1)
    b = np.digitize(d, edges) - 1
    rows = []
    for k in range(n_bins):
        sel = b == k
        if sel.sum() >= 3:
            rows.append({"h": float(d[sel].mean()), "gamma": float(sq[sel].mean()), "pairs": int(sel.sum())})
    return pd.DataFrame(rows, columns=["h", "gamma", "pairs"])


def exponential_variogram(h, nugget, psill, range_):
    """γ(h) = nugget + psill · (1 − exp(−h / range)) (γ(0) = 0 is not imposed: h > 0 only)."""
    return nugget + psill * (1.0 - np.exp(-np.asarray(h, np.float64) / range_))


def fit_exponential(vg: pd.DataFrame, n_ranges: int = 60) -> dict:
    """Weighted least squares (weights: pairs per bin) of the exponential model with nugget and
    partial sill ≥ 0: for each range on a log grid from the first bin's distance to
    3 × the last, the nugget and sill by non-negative least squares (the model is linear in
    them); the range with the smallest weighted SSE. Deterministic (no start values)."""
    from scipy.optimize import nnls

    if len(vg) < 3:
        g = float(np.average(vg.gamma, weights=vg.pairs)) if len(vg) else 0.0
        return {"nugget": g, "psill": 0.0, "range": float("nan"), "sse": float("nan")}
    h, g, w = vg.h.to_numpy(), vg.gamma.to_numpy(), np.sqrt(vg.pairs.to_numpy(np.float64))
    pos = h[h > 0]  # co-located sites (h = 0) bound nothing
    if len(pos) == 0:
        return {"nugget": float(np.average(g, weights=w**2)), "psill": 0.0, "range": float("nan"), "sse": float("nan")}
    best = None
    for a in np.geomspace(pos.min(), h.max() * 3, n_ranges):
        A = np.stack([np.ones_like(h), 1.0 - np.exp(-h / a)], 1) * w[:, None]
        coef, resid = nnls(A, g * w)
        if best is None or resid < best[0] - 1e-12 * abs(best[0]):
            best = (resid, coef, a)
    assert best is not None
    resid, (c0, c1), a = best
    if c1 <= 0:
        return {"nugget": float(c0), "psill": 0.0, "range": float("nan"), "sse": float(resid**2)}
    return {"nugget": float(c0), "psill": float(c1), "range": float(a), "sse": float(resid**2)}


def fit_residual_model(res: pd.DataFrame, n_bins: int = VARIOGRAM_BINS) -> dict:
    """The residual model of one flux from its LOSO residuals.

    ``res``: columns site_id, method, month, x, y (site coordinates, m, equal-area projection),
    residual (observed − LOSO-predicted, g C m-2 month-1). Steps: ``s(month)``
    (:func:`seasonal_scale`); residuals divided by it; per method group the ANOVA components;
    the exponential variogram of the site means (all methods) whose partial sill is the field's
    variance σ_F² (its nugget holds the site effects and the site means' noise). The site effect
    of a method is what its between-site variance leaves beyond the field,
    σ_site² = max(σ_b² − σ_F², 0), so that the site means' variance equals the fitted one."""
    s = seasonal_scale(res.month.to_numpy(), res.residual.to_numpy())
    z = res.residual.to_numpy(np.float64) / s[res.month.to_numpy(np.int64) - 1]
    grp = method_group(res.method.to_numpy())
    sm = (
        pd.DataFrame({"site_id": res.site_id.astype(str).to_numpy(), "z": z, "x": res.x, "y": res.y})
        .groupby("site_id")
        .agg(z=("z", "mean"), x=("x", "first"), y=("y", "first"))
    )
    vg = empirical_variogram(sm.x, sm.y, sm.z, n_bins)
    fit = fit_exponential(vg)
    var_field = fit["psill"] if np.isfinite(fit["range"]) else 0.0
    methods = {}
    for m in METHODS:
        sel = grp == m
        a = anova_components(z[sel], res.site_id.to_numpy()[sel])
        methods[m] = {
            "sd_site": float(np.sqrt(max(a["var_site"] - var_field, 0.0))),
            "sd_between": float(np.sqrt(a["var_site"])),
            "sd_noise": float(np.sqrt(a["var_noise"])),
            "mean": float(a["mean"]),
            "n_sites": a["n_sites"],
            "n_rows": a["n_rows"],
        }
    pooled = anova_components(z, res.site_id.to_numpy())
    for m in METHODS:  # a group without sites draws like the pooled residuals
        if methods[m]["n_sites"] == 0:
            methods[m].update(
                sd_site=float(np.sqrt(max(pooled["var_site"] - var_field, 0.0))),
                sd_between=float(np.sqrt(pooled["var_site"])),
                sd_noise=float(np.sqrt(pooled["var_noise"])),
            )
    return {
        "season": [float(v) for v in s],
        "rms": float(np.sqrt(np.mean(res.residual.to_numpy(np.float64) ** 2))),
        "field_sd": float(np.sqrt(var_field)),
        "field_range_m": float(fit["range"]) if var_field > 0 else float("nan"),
        "variogram_nugget": fit["nugget"],
        "methods": methods,
        "n_sites": int(sm.shape[0]),
        "n_rows": int(len(res)),
        "variogram": vg.to_dict(orient="list"),
    }


# --------------------------------------------------------------------------- distance term
#: Distance bins of the buffered CV's error curve (log-spaced between its shortest and longest
#: held-out distance), trees of its forest, and the fewest trees that make a site's bin estimate.
DISTANCE_BINS = 8
DISTANCE_TREES = 1500
DISTANCE_MIN_TREES = 3


def distance_curve(yz, q, dist, n_bins: int = DISTANCE_BINS, min_trees: int = DISTANCE_MIN_TREES) -> pd.DataFrame:
    """The error of a held-out site's mean against its distance to the nearest training site,
    from a buffered grouped out-of-bag forest (:func:`abzflux.cv.disc_design`,
    :func:`abzflux.cv.held_out_site_means`).

    ``yz`` (n_sites,): site means of the observations / s(month); ``q`` (n_sites, n_trees):
    per tree, the site mean of its predictions / s(month), NaN where the tree trained on the
    site; ``dist`` (n_trees, n_sites): that site's distance to the tree's nearest training site
    (m). Per distance bin and site with at least ``min_trees`` trees: the squared error of the
    mean over those trees, less the trees' variance / count (the finite-forest part, which a
    full forest does not have). Columns h (mean distance, m), gamma (mean squared site-mean
    error, (g C m-2 month-1)² in units of s(month)²), pairs (sites)."""
    yz = np.asarray(yz, np.float64)
    q = np.asarray(q, np.float64)
    dist = np.asarray(dist, np.float64)
    ok = np.isfinite(dist.T) & np.isfinite(q)
    d = dist.T[ok]
    rows: list[dict] = []
    if len(d) == 0 or not (d > 0).any():
        return pd.DataFrame(rows, columns=["h", "gamma", "pairs"])
    edges = np.geomspace(d[d > 0].min(), d.max() * (1 + 1e-9), n_bins + 1)
    edges[0] = 0.0
    dt = np.where(ok, dist.T, -1.0)
    for b in range(n_bins):
        m = ok & (dt >= edges[b]) & (dt < edges[b + 1])
        n = m.sum(axis=1)
        sel = n >= min_trees
        if not sel.any():
            continue
        qm = np.where(m, q, 0.0)
        mean_all = qm.sum(axis=1) / np.maximum(n, 1)
        var_all = np.where(m, (q - mean_all[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n - 1, 1)
        mean, var = mean_all[sel], var_all[sel]
        e2 = (yz[sel] - mean) ** 2 - var / n[sel]
        h = np.where(m, dt, 0.0).sum(axis=1)[sel] / n[sel]
        rows.append({"h": float(h.mean()), "gamma": float(e2.mean()), "pairs": int(sel.sum())})
    return pd.DataFrame(rows, columns=["h", "gamma", "pairs"])


def fit_distance_model(curve: pd.DataFrame, r_ref: float) -> dict:
    """The exponential model ``a + c · (1 − exp(−d / range))`` of :func:`distance_curve` (weighted
    least squares as :func:`fit_exponential`) and the reference distance ``r_ref`` (m: the
    median distance of a site to its nearest other site, where the LOSO residuals, and so the
    rest of the residual model, were measured). The error a cell adds beyond the LOSO residuals
    is ``Δ(d) = c · (exp(−r_ref / range) − exp(−d / range))`` (:func:`distance_variance`), zero
    for d ≤ r_ref."""
    fit = fit_exponential(curve)
    ok = np.isfinite(fit["range"]) and fit["psill"] > 0
    return {
        "psill": float(fit["psill"]) if ok else 0.0,
        "range_m": float(fit["range"]) if ok else float("nan"),
        "nugget": float(fit["nugget"]),
        "r_ref_m": float(r_ref),
        "curve": curve.to_dict(orient="list"),
    }


def distance_variance(model: dict, d) -> np.ndarray:
    """Δ(d) of :func:`fit_distance_model` at distances ``d`` (m), ≥ 0; zero without a fitted
    increase."""
    d = np.asarray(d, np.float64)
    if not model or not (model.get("psill", 0.0) > 0) or not np.isfinite(model.get("range_m", np.nan)):
        return np.zeros_like(d)
    a = model["range_m"]
    return np.clip(model["psill"] * (np.exp(-model["r_ref_m"] / a) - np.exp(-d / a)), 0.0, None)


def nearest_distance(site_xy, cell_xy) -> np.ndarray:
    """Distance (m) of each cell to the nearest site (equal-area projection coordinates)."""
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(site_xy, np.float64)).query(np.asarray(cell_xy, np.float64))[0]


def nearest_other(site_xy) -> np.ndarray:
    """Each site's distance (m) to its nearest other site (co-located sites: 0)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(site_xy, np.float64)
    return cKDTree(xy).query(xy, k=2)[0][:, 1]


def fit_distance_term(
    X: pd.DataFrame,
    y,
    sites,
    site_xy: dict,
    month,
    season,
    cell_xy,
    *,
    mtry: int,
    nodesize: int,
    categorical,
    seed: int,
    flux_index: int,
    n_trees: int = DISTANCE_TREES,
) -> tuple[dict, np.ndarray]:
    """The distance term of one flux: a buffered grouped out-of-bag forest (discs of sites held
    out, radii log-uniform from ``r_ref`` (the median distance of a site to its nearest other
    site, or the smallest positive one) to the 95th percentile of the cells' distances to their
    nearest site), its error curve against distance (:func:`distance_curve`) and model
    (:func:`fit_distance_model`), and each cell's SD √Δ(distance to the nearest site).

    ``site_xy``: site id -> (x, y) m; ``month``: calendar month of each row; ``season``: s(month),
    months 1–12 (the residual model's); ``cell_xy``: (n_cells, 2) coordinates of the cells to
    map. Returns the model (with the design's radii) and the cells' SDs (n_cells,)."""
    sites = np.asarray(sites).astype(str)
    usites = np.unique(sites)
    xy = np.array([site_xy[k] for k in usites], np.float64)
    nn = nearest_other(xy)
    r_ref = float(np.median(nn))
    if not r_ref > 0:
        r_ref = float(nn[nn > 0].min()) if (nn > 0).any() else 1.0
    d_cell = nearest_distance(xy, cell_xy)
    r_max = max(float(np.quantile(d_cell, 0.95)), 2.0 * r_ref)
    held, dist = cv.disc_design(xy, n_trees, r_ref, r_max, seeds.rng(seed, "network_disc", flux_index))
    w = 1.0 / np.asarray(season, np.float64)[np.asarray(month, np.int64) - 1]
    yz, q = cv.held_out_site_means(
        X,
        y,
        sites,
        held,
        mtry=mtry,
        weight=w,
        nodesize=nodesize,
        seed=seeds.integer(seed, "network_distance", flux_index),
        categorical=categorical,
    )
    model = fit_distance_model(distance_curve(yz, q, dist), r_ref)
    model.update(r_min_m=r_ref, r_max_m=r_max, trees=int(n_trees))
    return model, np.sqrt(distance_variance(model, d_cell))


# --------------------------------------------------------------------------- draws
def gaussian_field(ny: int, nx: int, dy: float, dx: float, sd: float, range_m: float, rng) -> np.ndarray:
    """A stationary Gaussian random field on a regular (ny, nx) grid of spacing (dy, dx) m with
    covariance sd² · exp(−h / range), by circulant embedding (Dietrich & Newsam 1997): the
    covariance on a torus at least twice the grid and four ranges beyond it, its FFT
    eigenvalues (negative ones, if any, set to 0), one complex normal draw; the real part is the
    field. Zero where sd is 0."""
    if not (sd > 0) or not np.isfinite(range_m) or range_m <= 0:
        return np.zeros((ny, nx))
    my = int(max(2 * ny, ny + np.ceil(4 * range_m / abs(dy))))
    mx = int(max(2 * nx, nx + np.ceil(4 * range_m / abs(dx))))
    iy = np.minimum(np.arange(my), my - np.arange(my)) * abs(dy)
    ix = np.minimum(np.arange(mx), mx - np.arange(mx)) * abs(dx)
    c = sd**2 * np.exp(-np.hypot(iy[:, None], ix[None, :]) / range_m)
    lam = np.clip(np.fft.fft2(c).real, 0.0, None)
    zc = rng.standard_normal((my, mx)) + 1j * rng.standard_normal((my, mx))
    f = np.fft.fft2(np.sqrt(lam / (my * mx)) * zc)
    return f.real[:ny, :nx]


def draw_errors(model: dict, site_codes: np.ndarray, groups: np.ndarray, rng) -> np.ndarray:
    """Site effect + within-site noise (in units of s(month)) of each row: one u ~ N(0,
    σ_site²(method)) per site (a site's first row's method), one e ~ N(0, σ_noise²(method)) per
    row. ``site_codes``: integer codes 0..n_sites−1."""
    site_codes = np.asarray(site_codes, np.int64)
    n_sites = int(site_codes.max()) + 1 if len(site_codes) else 0
    first = np.zeros(n_sites, np.int64)
    codes, idx = np.unique(site_codes, return_index=True)  # each site's first row
    first[codes] = idx
    sd_site = np.array([model["methods"][g]["sd_site"] for g in groups[first]]) if n_sites else np.zeros(0)
    sd_noise = np.array([model["methods"][g]["sd_noise"] for g in groups])
    u = rng.standard_normal(n_sites) * sd_site
    e = rng.standard_normal(len(site_codes)) * sd_noise
    return u[site_codes] + e


# --------------------------------------------------------------------------- replicates
@dataclass
class FluxRows:
    """The training rows of one flux: predictors (the final forest's columns), the final
    forest's prediction of each row (the surrogate world at the site), site codes, method
    groups, calendar months and the site cells."""

    X: pd.DataFrame
    base: np.ndarray
    site_codes: np.ndarray
    groups: np.ndarray
    month: np.ndarray
    iy: np.ndarray
    ix: np.ndarray
    mtry: int
    y: np.ndarray | None = None  # the observations (the distance term's buffered CV)
    site_ids: np.ndarray | None = None  # site id of each row


@dataclass
class NetworkJob:
    """Everything a replicate needs (picklable; the grid is predicted through
    :func:`abzflux.upscale.predict_chunk` with the replicate's forests)."""

    rows: dict  # flux -> FluxRows
    models: dict  # flux -> residual model (fit_residual_model)
    upscale_job: upscale_mod.UpscaleJob
    chunks: list
    weights: sp.csr_matrix  # (zone, cell) m2 of land
    zones: list
    base_tg: dict  # flux -> (time, zone) Tg C month-1 of the fitted maps
    finite: dict  # flux -> (time, cell) bool: cells the fitted map covers
    months: np.ndarray  # calendar month of each time step
    years: np.ndarray  # year of each time step
    shape: tuple  # (ny, nx)
    spacing: tuple  # (dy, dx) m
    seed: int
    n_trees: int
    nodesize: int
    central: str
    categorical: tuple
    workdir: str
    keep_field: bool = field(default=False)
    #: flux -> (ny, nx) SD of the distance term's field (sqrt of Δ(distance to the nearest site));
    #: empty: no distance term
    distance_sd: dict = field(default_factory=dict)


def _field_sum(job: NetworkJob, flux: str, F: np.ndarray) -> np.ndarray:
    """Tg C per time step and zone of s(m_t) · F over the cells the fitted map covers."""
    s = np.asarray(job.models[flux]["season"])[job.months - 1]
    per_t = (job.finite[flux] * F.ravel()[None, :]).astype(np.float64)  # (t, cell)
    return s[:, None] * np.asarray((job.weights @ per_t.T).T) / TG


def run_replicate(job: NetworkJob, rep: int) -> pd.DataFrame:
    """One replicate: draw, refit, predict, sum. Columns replicate, zone, year, flux, estimate,
    truth, distance_error (the distance term's part of the error), error (Tg C yr-1).
    Deterministic for (run seed, rep)."""
    rng = seeds.rng(job.seed, "network_draw", rep)
    ny, nx = job.shape
    fields, paths = {}, {}
    wd = Path(job.workdir) / f"rep{rep:03d}"
    wd.mkdir(parents=True, exist_ok=True)
    for i, flux in enumerate(FLUXES):
        m, r = job.models[flux], job.rows[flux]
        F = gaussian_field(ny, nx, job.spacing[0], job.spacing[1], m["field_sd"], m["field_range_m"], rng)
        fields[flux] = F
        s = np.asarray(m["season"])[r.month - 1]
        y = r.base + s * (F[r.iy, r.ix] + draw_errors(m, r.site_codes, r.groups, rng))
        model = FluxForest(
            n_estimators=job.n_trees,
            mtry=min(r.mtry, r.X.shape[1]),
            nodesize=job.nodesize,
            categorical=job.categorical,
            central=job.central,
            random_state=seeds.integer(job.seed, "network_forest", rep * len(FLUXES) + i),
        )
        model.fit(r.X, y)
        paths[flux] = str(wd / f"{flux}.npz")
        model.save(paths[flux])
    uj = upscale_mod.UpscaleJob(**{**job.upscale_job.__dict__, "models": paths, "members": {}})  # cells: the stride
    nt, ncell = len(job.months), ny * nx
    est = {f: np.full((nt, ncell), np.nan, np.float32) for f in FLUXES}
    cells = np.arange(ncell).reshape(ny, nx)
    for c in job.chunks:
        res = upscale_mod.predict_chunk(uj, c)["res"]
        idx = cells[c.iy0 : c.iy1, c.ix0 : c.ix1].ravel()
        for f in FLUXES:
            est[f][c.t0 : c.t0 + c.nt][:, idx] = res[f].reshape(c.nt, -1)
    shutil.rmtree(wd, ignore_errors=True)
    upscale_mod.clear_caches()  # the replicate's forests leave this worker's memory
    out = []
    tg_est, tg_true, tg_dist = {}, {}, {}
    # the distance term's fields: zero at the sites, so the pseudo observations and the refit do
    # not see them; their own stream, so the draws above do not depend on whether the term is on
    grng = seeds.rng(job.seed, "network_field", rep)
    for f in FLUXES:
        tg_est[f] = np.asarray((job.weights @ np.nan_to_num(est[f].astype(np.float64)).T).T) / TG
        tg_true[f] = job.base_tg[f] + _field_sum(job, f, fields[f])
        tg_dist[f] = np.zeros_like(tg_true[f])
        dm = job.models[f].get("distance") or {}
        if f in job.distance_sd and dm.get("psill", 0.0) > 0:
            G = job.distance_sd[f] * gaussian_field(ny, nx, job.spacing[0], job.spacing[1], 1.0, dm["range_m"], grng)
            tg_dist[f] = _field_sum(job, f, G)
            tg_true[f] = tg_true[f] + tg_dist[f]
    tg_est["nee_derived"] = tg_est["reco"] - tg_est["gpp"]
    tg_true["nee_derived"] = tg_true["reco"] - tg_true["gpp"]
    tg_dist["nee_derived"] = tg_dist["reco"] - tg_dist["gpp"]
    years = np.unique(job.years)
    for f in SCORED:
        e = np.stack([tg_est[f][job.years == yr].sum(0) for yr in years])  # (year, zone)
        t = np.stack([tg_true[f][job.years == yr].sum(0) for yr in years])
        g = np.stack([tg_dist[f][job.years == yr].sum(0) for yr in years])
        yy, zz = np.meshgrid(years, np.arange(len(job.zones)), indexing="ij")
        out.append(
            pd.DataFrame(
                {
                    "replicate": rep,
                    "zone": np.asarray(job.zones, dtype=object)[zz.ravel()],
                    "year": yy.ravel(),
                    "flux": f,
                    "estimate": e.ravel(),
                    "truth": t.ravel(),
                    # the distance term's part of the error (−its field's zone sum)
                    "distance_error": -g.ravel(),
                }
            )
        )
    df = pd.concat(out, ignore_index=True)
    df["error"] = df.estimate - df.truth
    return df


def run_replicates(job: NetworkJob, n: int, client=None, progress=None) -> pd.DataFrame:
    """Replicates 0..n−1, in this process or on a dask.distributed client (identical results:
    each replicate depends on its own seeds only); ordered by replicate."""
    parts: list = []
    if client is None:
        for rep in range(n):
            parts.append(run_replicate(job, rep))
            if progress:
                progress(rep + 1, n)
    else:
        from dask.distributed import as_completed

        jf = client.scatter(job, broadcast=True)
        futs = client.map(run_replicate, [jf] * n, list(range(n)), pure=False)
        done = 0
        for fu in as_completed(futs):
            parts.append(fu.result())
            done += 1
            if progress:
                progress(done, n)
    upscale_mod.clear_caches()
    return pd.concat(parts, ignore_index=True).sort_values(["replicate", "flux", "zone", "year"], ignore_index=True)


# --------------------------------------------------------------------------- summaries
def error_summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Per zone × year × flux: replicates, mean error, SD (ddof 1) and RMS of the replicate
    errors (the period means: :func:`period_summary`)."""
    g = errors.groupby(["zone", "year", "flux"], sort=True).error
    out = g.agg(replicates="size", mean_error="mean", sd_error=lambda e: e.std(ddof=1)).reset_index()
    out["rms_error"] = g.apply(lambda e: float(np.sqrt(np.mean(e.to_numpy() ** 2)))).to_numpy()
    return out


def period_summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Per zone × flux: the replicates' period-mean errors (mean over the years of each
    replicate) summarised like :func:`error_summary`."""
    pm = errors.groupby(["replicate", "zone", "flux"], sort=True).error.mean().reset_index()
    g = pm.groupby(["zone", "flux"], sort=True).error
    out = g.agg(replicates="size", mean_error="mean", sd_error=lambda e: e.std(ddof=1)).reset_index()
    out["rms_error"] = g.apply(lambda e: float(np.sqrt(np.mean(e.to_numpy() ** 2)))).to_numpy()
    return out


def trend_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Per replicate, zone and flux: the Theil–Sen slope (Tg C yr-2) of the estimate's annual
    series, of the truth's, and their difference ``error``."""
    rows = []
    for (rep, zone, flux), g in errors.groupby(["replicate", "zone", "flux"], sort=True):
        g = g.sort_values("year")
        se = sen_slope(g.estimate.to_numpy(), g.year.to_numpy()).slope
        st = sen_slope(g.truth.to_numpy(), g.year.to_numpy()).slope
        rows.append({"replicate": rep, "zone": zone, "flux": flux, "slope_estimate": se, "slope_truth": st})
    t = pd.DataFrame(rows)
    t["error"] = t.slope_estimate - t.slope_truth
    return t


def add_trend_term(bt: pd.DataFrame, terr: pd.DataFrame) -> pd.DataFrame:
    """The budget trends (``trends/budget_trends.csv``) with the network term of each zone's and
    flux's Theil–Sen slope: ``slope_sd_network`` = RMS over the replicates of (slope of the
    estimate − slope of the surrogate truth), and the 95 % interval widened by it in quadrature,
    side by side: ``lbound_total = slope − sqrt((slope − lbound)² + (1.96 · sd)²)``, likewise
    ``ubound_total`` (the Sen interval's half-widths taken as 1.96 SDs of its own). NEE + fire
    carries NEE's term; fluxes without one (fire) keep their interval."""
    from .trends import Z975

    t = terr.groupby(["zone", "flux"]).error.apply(rms).rename("slope_sd_network").reset_index()
    t = pd.concat([t, t[t.flux == "nee"].assign(flux="nee_fire")], ignore_index=True)
    out = bt.drop(columns=["slope_sd_network", "lbound_total", "ubound_total"], errors="ignore").merge(
        t, on=["zone", "flux"], how="left"
    )
    add = (Z975 * out.slope_sd_network.fillna(0.0)) ** 2
    out["lbound_total"] = out.slope - np.sqrt((out.slope - out.lbound) ** 2 + add)
    out["ubound_total"] = out.slope + np.sqrt((out.ubound - out.slope) ** 2 + add)
    return out


def rms(e) -> float:
    e = np.asarray(e, np.float64)
    return float(np.sqrt(np.mean(e**2))) if len(e) else float("nan")


def total_sd(*terms) -> np.ndarray:
    """√(Σ term²), missing terms counted as 0 (independent error terms add in quadrature)."""
    arr = [np.nan_to_num(np.asarray(t, np.float64)) for t in terms]
    return np.sqrt(sum(a**2 for a in arr))


def stability(errors: pd.DataFrame, zone: str = "domain", flux: str = "nee", ns=(5, 10, 20, 40)) -> pd.DataFrame:
    """How the network term of a zone's period-mean budget settles with the number of
    replicates: the RMS and SD of the first n replicates' period-mean errors."""
    pm = errors[(errors.zone == zone) & (errors.flux == flux)].groupby("replicate").error.mean().sort_index()
    rows = []
    for n in ns:
        if n <= len(pm):
            e = pm.iloc[:n].to_numpy()
            rows.append(
                {
                    "replicates": n,
                    "rms_error": rms(e),
                    "sd_error": float(np.std(e, ddof=1)),
                    "mean_error": float(e.mean()),
                }
            )
    return pd.DataFrame(rows)


def strided_weights(W: sp.csr_matrix, shape: tuple, stride: int) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Zone weights on every ``stride``-th grid row and column (from the first), each zone's
    kept weights scaled so that they sum to the zone's land area (a ratio estimator of the
    zone sum), and the kept-cell mask (None for stride 1: every cell)."""
    if stride <= 1:
        return W, None
    keep = np.zeros(shape, bool)
    keep[::stride, ::stride] = True
    Wk = W @ sp.diags(keep.ravel().astype(np.float64))
    full = np.asarray(W.sum(1)).ravel()
    kept = np.asarray(Wk.sum(1)).ravel()
    scale = np.divide(full, kept, out=np.zeros_like(full), where=kept > 0)
    return sp.csr_matrix(sp.diags(scale) @ Wk), keep


def workdir_for(path) -> str:
    """A worker-visible scratch directory for the replicates' forest files (each replicate
    creates its own subdirectory)."""
    return os.fspath(Path(path))
