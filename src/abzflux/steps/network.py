"""(c2) network: the network-simulation error term (``[uncertainty] network = true``). The
residual model of each flux from the leave-one-site-out residuals, then
``uncertainty.network_replicates`` replicates: pseudo observations drawn from the run's own
fitted maps at the real site-months, forests refitted, the grid predicted and summed per zone,
against the surrogate truth (:mod:`abzflux.network`). Outputs in ``network/``; the budgets step
adds the term to the ± and the trends step to the budget trends'."""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from .. import _atomic
from .. import budgets as budgets_mod
from .. import layout as L
from .. import network as net
from .. import upscale as upscale_mod
from ..context import Context
from ..forest import FluxForest
from ..formats import model_view, open_grid, plan_predictors
from ..predictors import training_rows
from ..vocab import FLUXES
from .budgets import PERMAFROST_KEYS
from .forest import FOREST_KEYS, cv_outputs
from .sites import PREDICTOR_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def loso_residuals(rows: pd.DataFrame, cvp: pd.DataFrame, flux: str, mtry: int, x_m, y_m) -> pd.DataFrame:
    """The LOSO residuals of one flux at the chosen mtry with each row's method, month and site
    coordinates (``x_m``, ``y_m``: the grid's projected coordinates of the rows' cells)."""
    p = cvp[(cvp.flux == flux) & (cvp.mtry == mtry)][["row", "obs", "pred"]]
    r = pd.DataFrame(
        {
            "row": np.arange(len(rows)),
            "site_id": rows.site_id.astype(str).to_numpy(),
            "method": rows["method"].to_numpy() if "method" in rows else np.full(len(rows), None),
            "month": rows.month.to_numpy(np.int64),
            "x": np.asarray(x_m, np.float64),
            "y": np.asarray(y_m, np.float64),
        }
    ).merge(p, on="row", how="inner")
    return r.assign(residual=r.obs - r.pred)


def build(ctx: Context, workdir) -> tuple[net.NetworkJob, dict]:
    """The replicates' job: rows, residual models, the grid's prediction job, zone weights and
    the fitted maps' zone sums (the surrogate truth without its field)."""
    cfg, lay = ctx.cfg, ctx.layout
    cvp, info, table = cv_outputs(ctx, "the network simulation", "uncertainty.network")
    pset = ctx.predictor_set
    names = list(pset.names)
    raw, zds = open_grid(cfg.inputs.predictors, chunks={}), open_grid(cfg.inputs.zones, chunks={})
    plans = plan_predictors(raw, pset, cfg.inputs.predictors)
    pred = model_view(raw, plans, str(cfg.inputs.predictors))
    xs, ys = np.asarray(pred.x.values, np.float64), np.asarray(pred.y.values, np.float64)
    rows_by, models = {}, {}
    for flux in FLUXES:
        rows = training_rows(table, flux, pset).reset_index(drop=True)
        mtry = int(info[flux]["mtry"])
        res = loso_residuals(rows, cvp, flux, mtry, xs[rows.ix.to_numpy()], ys[rows.iy.to_numpy()])
        models[flux] = net.fit_residual_model(res)
        final = FluxForest.load(lay.model(flux))
        X = rows[names]
        _, codes = np.unique(rows.site_id.astype(str).to_numpy(), return_inverse=True)
        rows_by[flux] = net.FluxRows(
            X=X,
            base=final.predict(X[final.feature_names_]),
            site_codes=codes,
            groups=net.method_group(rows["method"].to_numpy() if "method" in rows else np.full(len(rows), None)),
            month=rows.month.to_numpy(np.int64),
            iy=rows.iy.to_numpy(np.int64),
            ix=rows.ix.to_numpy(np.int64),
            mtry=mtry,
            y=rows[flux].to_numpy(np.float64),
            site_ids=rows.site_id.astype(str).to_numpy(),
        )
        m = models[flux]
        log.info(
            f"{flux}: LOSO residual model: field SD {m['field_sd']:.2f} g C m-2 month-1, range "
            f"{m['field_range_m'] / 1e3:.0f} km; site SD EC {m['methods']['EC']['sd_site']:.2f}, chamber "
            f"{m['methods']['chamber']['sd_site']:.2f}; noise SD EC {m['methods']['EC']['sd_noise']:.2f}, chamber "
            f"{m['methods']['chamber']['sd_noise']:.2f} (× s(month), {m['n_sites']} sites)"
        )
    y0, y1 = ctx.years()
    times = pd.DatetimeIndex(pred.time.values)
    sel = np.nonzero((times.year >= y0) & (times.year <= y1))[0]
    ujob, land = upscale_mod.build_job(
        pred,
        zds,
        cfg.inputs.predictors,
        cfg.inputs.zones,
        {f: lay.model(f) for f in FLUXES},
        {},
        "",
        "",
        sel,
        plans,
        pset,
        (cfg.budgets.permafrost, cfg.budgets.permafrost_threshold),
        key=f"network:{ctx.cache.get('fingerprint', '')}",
    )
    chunks = upscale_mod.plan_chunks(land, times[sel], cfg.run.tile)
    w = budgets_mod.zone_weights(ctx.zones(), ctx.veg())
    zones = list(w.zone.values)
    W, keep = net.strided_weights(
        sp.csr_matrix(w.values.reshape(len(zones), -1)), (len(ys), len(xs)), cfg.uncertainty.network_stride
    )
    ujob.cells = keep
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    ut = pd.DatetimeIndex(up.time.values)
    if not ut.equals(times[sel]):
        raise RuntimeError("upscaled.zarr's months differ from the run's years; rerun upscale")
    base_tg, finite = {}, {}
    for f in FLUXES:
        a = np.asarray(up[f].values, np.float64).reshape(len(ut), -1)
        finite[f] = np.isfinite(a)
        base_tg[f] = np.asarray((W @ np.nan_to_num(a).T).T) / budgets_mod.TG
    us = cfg.uncertainty
    fs = cfg.forest
    distance_sd = {}
    if us.network_distance:
        land = np.asarray(np.abs(w.values.reshape(len(zones), -1)).sum(0)).ravel() > 0
        gx, gy = np.meshgrid(xs, ys)
        cell_xy = np.c_[gx.ravel(), gy.ravel()]
        for k, flux in enumerate(FLUXES):
            r = rows_by[flux]
            ids = np.asarray(r.site_ids)
            first = np.unique(ids, return_index=True)[1]
            site_xy = {ids[i]: (xs[r.ix[i]], ys[r.iy[i]]) for i in first}
            t1 = time.perf_counter()
            dm, sd_land = net.fit_distance_term(
                r.X,
                r.y,
                ids,
                site_xy,
                r.month,
                models[flux]["season"],
                cell_xy[land],
                mtry=r.mtry,
                nodesize=fs.nodesize,
                categorical=tuple(pset.categorical),
                seed=cfg.run.seed,
                flux_index=k,
            )
            models[flux]["distance"] = dm
            sd = np.zeros(len(ys) * len(xs))
            sd[land] = sd_land
            distance_sd[flux] = sd.reshape(len(ys), len(xs))
            log.info(
                f"{flux}: distance term: +{dm['psill']:.1f} (g C m-2 month-1)² × s(month)² at range "
                f"{dm['range_m'] / 1e3:.0f} km beyond {dm['r_ref_m'] / 1e3:.0f} km; cell SD up to "
                f"{sd_land.max() if len(sd_land) else 0:.1f} ({time.perf_counter() - t1:.0f} s)"
            )
    job = net.NetworkJob(
        rows=rows_by,
        models=models,
        upscale_job=ujob,
        chunks=chunks,
        weights=W,
        zones=zones,
        base_tg=base_tg,
        finite=finite,
        months=ut.month.to_numpy(np.int64),
        years=ut.year.to_numpy(np.int64),
        shape=(len(ys), len(xs)),
        spacing=(float(np.abs(np.diff(ys)).mean()), float(np.abs(np.diff(xs)).mean())),
        seed=cfg.run.seed,
        n_trees=us.network_trees or fs.n_estimators,
        nodesize=fs.nodesize,
        central=fs.central,
        categorical=tuple(pset.categorical),
        workdir=net.workdir_for(workdir),
        distance_sd=distance_sd,
    )
    return job, models


def run(ctx: Context) -> None:
    lay, us = ctx.layout, ctx.cfg.uncertainty
    work = lay.tmp(L.NETWORK) / "work"  # the replicates' forest files, inside the stage's work directory
    job, models = build(ctx, work)  # first: a run without CV is refused before anything is written
    out = fresh_dir(lay.tmp(L.NETWORK))
    work.mkdir()
    prog = ctx.progress(f"network simulation: {us.network_replicates} replicates")
    t0 = time.perf_counter()
    try:
        errors = net.run_replicates(job, us.network_replicates, client=ctx.client(), progress=prog)
    finally:
        if prog is not None:
            prog(None, None)
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    ctx.cache.setdefault("marker_extra", {})["replicate_seconds"] = round(seconds, 2)
    errors.to_parquet(out / L.inner(L.NETWORK_ERRORS), index=False)
    net.error_summary(errors).to_csv(out / L.inner(L.NETWORK_SUMMARY), index=False)
    net.period_summary(errors).to_csv(out / L.inner(L.NETWORK_PERIOD), index=False)
    net.trend_errors(errors).to_csv(out / L.inner(L.NETWORK_TRENDS), index=False)
    record = {
        "replicates": us.network_replicates,
        "trees": job.n_trees,
        "mtry": {f: job.rows[f].mtry for f in FLUXES},
        "models": models,
    }
    (out / L.inner(L.NETWORK_JSON)).write_text(json.dumps(record, indent=2))
    p = net.period_summary(errors)
    d = p[(p.zone == "domain") & (p.flux == "nee")]
    if len(d):
        log.info(
            f"network simulation: {us.network_replicates} replicates in {seconds:.0f} s; domain NEE period-mean "
            f"error mean {d.mean_error.iloc[0]:+.1f}, SD {d.sd_error.iloc[0]:.1f}, RMS {d.rms_error.iloc[0]:.1f} Tg C yr-1"
        )
    _atomic.replace(out, lay.network)


NETWORK_KEYS = (
    "uncertainty.network_replicates",
    "uncertainty.network_trees",
    "uncertainty.network_stride",
    "uncertainty.network_distance",
)

SPEC = StepSpec(
    "network",
    run,
    writes=(L.NETWORK,),
    depends=("forest", "upscale"),
    reads=(L.SITES, L.FOREST_JSON, L.CV_PREDICTIONS, "models/", L.UPSCALED),
    config_keys=FOREST_KEYS + ("run.seed", "run.years") + NETWORK_KEYS + PREDICTOR_KEYS + PERMAFROST_KEYS,
    inputs=("predictors", "zones"),
    enabled=lambda cfg: cfg.uncertainty.network,
    enabled_by="uncertainty.network",
    summary="the network-simulation error term: residual model of the LOSO residuals, replicates of "
    "drawn site data refitted and upscaled against the surrogate truth",
)
