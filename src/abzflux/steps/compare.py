"""(f) compare: extrapolation diagnostics (MESS, AOA, environmental clusters) always; the
comparison with reference products when ``inputs.references`` are given. Writes ``compare/``
(docs/compare.md); the methods are :mod:`abzflux.compare`."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from .. import _atomic, seeds
from .. import budgets as budgets_mod
from .. import compare as cmp
from .. import layout as L
from ..context import Context
from ..formats import grid_crs
from ..predictors import training_rows
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)


def run(ctx: Context) -> None:
    cfg, cs = ctx.cfg, ctx.cfg.compare
    pred, zones = ctx.predictors(), budgets_mod.with_cell_area(ctx.zones())
    crs = grid_crs(pred, cfg.inputs.predictors)
    y0, y1 = ctx.years()
    lay = ctx.layout
    out = fresh_dir(lay.tmp(L.COMPARE))
    ny, nx = pred.sizes["y"], pred.sizes["x"]
    times_all = pd.DatetimeIndex(pred.time.values)
    tsel = np.nonzero((times_all.year >= y0) & (times_all.year <= y1))[0]
    times = times_all[tsel]
    periods = cmp.mess_periods(y0, y1, cs.mess_period_length)
    pnames = [f"{a}-{b}" for a, b in periods]
    V = len(cmp.CONTINUOUS)
    table = pd.read_parquet(lay.sites)
    rows = training_rows(table, "nee").reset_index(drop=True)
    land = np.asarray((zones["land_fraction"].fillna(0) > 0).values)

    # ---- pass 0 (bands of rows): MESS reference sets at the training cells, k-means sample
    cells = np.unique(rows.iy.to_numpy() * nx + rows.ix.to_numpy())
    ref_per = np.empty((len(periods), len(cells), V))
    flat = np.flatnonzero(land.ravel())
    samp = flat[np.unique(np.linspace(0, flat.size - 1, min(cs.cluster_sample, flat.size)).round().astype(int))]
    sample = np.empty((len(samp), V))
    band = cmp.band_rows(ny, nx, len(times))
    cached = None
    for i0 in range(0, ny, band):
        ys = slice(i0, min(i0 + band, ny))
        per, clim, mean = cmp.band_summaries(pred, ys, tsel, times, periods)
        for idx, dest in ((cells, "ref"), (samp, "sample")):
            sel = (idx >= ys.start * nx) & (idx < ys.stop * nx)
            loc = idx[sel] - ys.start * nx
            if dest == "ref":
                ref_per[:, sel] = per[:, loc]
            else:
                sample[sel] = mean[loc]
        if ys.stop - ys.start == ny:
            cached = (per, clim, mean)  # one band holds the grid: pass 1 reuses it
    pos = pd.Series(np.arange(len(cells)), index=cells)
    row_cell = pos[rows.iy.to_numpy() * nx + rows.ix.to_numpy()].to_numpy()
    refs_by_period = [ref_per[p][row_cell[(rows.year >= a).to_numpy() & (rows.year <= b).to_numpy()]]
                      for p, (a, b) in enumerate(periods)]
    for name, r in zip(pnames, refs_by_period):
        if len(r) == 0:
            log.info(f"MESS {name}: no NEE training rows in this period; its MESS is missing")

    imp_path = lay.importance
    weights = np.ones(V)
    if imp_path.exists():
        imp = pd.read_csv(imp_path)
        imp = imp[imp.flux == "nee"].set_index("predictor").importance
        weights = np.array([imp.get(v, 0.0) for v in cmp.CONTINUOUS], np.float64)
    else:
        log.info("AOA: no permutation importance (forest.importance_repeats = 0): equal weights")
    trows = rows
    if len(rows) > cs.aoa_max_training:
        trows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, cs.aoa_max_training).round().astype(int))]
        log.info(f"AOA: {len(trows)} of {len(rows)} training rows (compare.aoa_max_training)")
    aoa = cmp.AOA(trows[list(cmp.CONTINUOUS)].to_numpy(np.float64), trows.site_id.to_numpy(), weights)
    predict_cluster, centres, used = cmp.fit_clusters(sample, cs.n_clusters, seeds.integer(cfg.run.seed, "kmeans"))
    n_clusters = len(centres)

    # ---- pass 1: bands of rows -> extrapolation.zarr, area shares, SD inside/outside
    store = out / "extrapolation.zarr"
    cmp.extrapolation_template(pred, crs, pnames, aoa.threshold, n_clusters).to_zarr(store, compute=False, mode="w",
                                                                   consolidated=False)
    g: Any = zarr.open_group(str(store), mode="r+")
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    sd_vars = [v for v in ("gpp_sd", "reco_sd", "nee_sd", "nee_derived_sd") if v in up]
    zone_names = list(budgets_mod.zone_weights(zones.isel(y=slice(0, 2), x=slice(0, 2))).zone.values)
    mess_acc = np.zeros((2, len(periods), len(zone_names)))  # area with MESS, area with MESS < 0
    sd_acc = {v: np.zeros(4) for v in sd_vars}  # inside: sum w*sd, sum w; outside: same
    for i0 in range(0, ny, band):
        ys = slice(i0, min(i0 + band, ny))
        nb = ys.stop - ys.start
        per, clim, mean = cached if cached is not None else cmp.band_summaries(pred, ys, tsel, times, periods)
        lb = land[ys].ravel()
        per[:, ~lb], clim[:, ~lb], mean[~lb] = np.nan, np.nan, np.nan
        w = budgets_mod.zone_weights(zones.isel(y=ys)).values.reshape(len(zone_names), -1)
        ms = np.full((len(periods), nb * nx), np.nan, np.float32)
        mod = np.full((len(periods), nb * nx), -1, np.int16)
        for p in range(len(periods)):
            if len(refs_by_period[p]):
                ms[p], mod[p] = cmp.mess(per[p], refs_by_period[p])
                fin = np.isfinite(ms[p])
                mess_acc[0, p] += w[:, fin].sum(1)
                mess_acc[1, p] += w[:, fin & (ms[p] < 0)].sum(1)
        di_m = np.stack([aoa.di(clim[m]) for m in range(12)])
        with np.errstate(invalid="ignore"):
            di = np.where(np.isfinite(di_m).all(0), di_m.max(0), np.nan)
        inside = np.where(np.isfinite(di), (di <= aoa.threshold).astype(np.int8), -1).astype(np.int8)
        lab = predict_cluster(mean)
        for v in sd_vars:
            ann = cmp.annual_sums(np.asarray(up[v].isel(y=ys).values, np.float64).reshape(len(up.time), -1))
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # cells without SD (water)
                sd = np.nanmean(ann, 0)
            fin = np.isfinite(sd)
            for k, sel in ((0, fin & (inside == 1)), (2, fin & (inside == 0))):
                sd_acc[v][k] += (w[0][sel] * sd[sel]).sum()
                sd_acc[v][k + 1] += w[0][sel].sum()
        sh = (nb, nx)
        g["mess"][:, ys] = ms.reshape(len(periods), *sh)
        g["mess_mod"][:, ys] = mod.reshape(len(periods), *sh)
        g["mess_class"][:, ys] = np.stack([np.where(np.isfinite(m_), cmp.mess_class(m_), 0) for m_ in ms]).reshape(
            len(periods), *sh)
        g["di"][ys] = di.reshape(sh).astype(np.float32)
        g["di_month"][:, ys] = di_m.reshape(12, *sh).astype(np.float32)
        g["aoa"][ys] = inside.reshape(sh)
        g["cluster"][ys] = lab.reshape(sh)
    up.close()

    with np.errstate(invalid="ignore", divide="ignore"):
        share = mess_acc[1] / mess_acc[0]
    pd.DataFrame([{"period": pn, "zone": z, "share_extrapolated": share[p, k]}
                  for p, pn in enumerate(pnames) for k, z in enumerate(zone_names)]).to_csv(
        out / "mess_area.csv", index=False)
    sd_rows = []
    for v, (si, wi, so, wo) in sd_acc.items():
        a = si / wi if wi > 0 else np.nan
        b = so / wo if wo > 0 else np.nan
        sd_rows.append({"flux": v[:-3], "inside_mean_sd": a, "outside_mean_sd": b,
                        "ratio": b / a if a and np.isfinite(a) and a > 0 else np.nan})
    pd.DataFrame(sd_rows, columns=["flux", "inside_mean_sd", "outside_mean_sd", "ratio"]).to_csv(
        out / "aoa_sd.csv", index=False)
    lab_grid = np.asarray(g["cluster"][:])
    all_rows = table[table[["gpp", "reco", "nee"]].notna().any(axis=1)]
    site_lab = lab_grid[all_rows.iy.to_numpy(), all_rows.ix.to_numpy()]
    ct = cmp.cluster_table(np.where(lab_grid.ravel() >= 0, lab_grid.ravel(), -1),
                       np.asarray((zones["land_fraction"].fillna(0) * zones["cell_area"]).values).ravel(),
                       site_lab, all_rows.site_id.to_numpy(), centres, cmp.CONTINUOUS)
    ct.drop(columns=[c for c, u in zip(cmp.CONTINUOUS, used) if not u]).to_csv(out / "clusters.csv", index=False)
    inside_share = cmp.aoa_share(g, zones)
    log.info(f"extrapolation: {len(periods)} MESS periods; AOA threshold {aoa.threshold:.3f}, "
            f"{100 * inside_share:.0f}% of the land area inside; {n_clusters} clusters")

    refs = ctx.references()
    if refs:
        cmp.compare_products(refs, xr.open_zarr(lay.upscaled, consolidated=False), zones, ctx.fire(),
                         crs, out, cfg.budgets.source_threshold, cs.regrid_subsamples)
    _atomic.replace(out, lay.compare)


SPEC = StepSpec(
    "compare", run, writes=(L.COMPARE,), depends=("trends", "upscale", "interpret", "sites"),
    reads=(L.SITES, "interpret/importance.csv", L.UPSCALED),
    config_keys=("compare.subtract_fire", "compare.regrid_subsamples", "compare.mess_period_length",
                 "compare.n_clusters", "compare.cluster_sample", "compare.aoa_max_training",
                 "budgets.source_threshold", "fire.first_year", "run.years", "run.seed"),
    inputs=("predictors", "zones", "fire", "references"),
    summary="extrapolation (MESS, AOA, clusters); comparison with reference products when given")
