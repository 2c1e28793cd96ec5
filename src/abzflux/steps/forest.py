"""(b) forest: per flux, leave-one-site-out CV (or its fast grouped out-of-bag stand-in,
``cv = "site_oob"``) over the mtry grid, the chosen mtry, the final
forest refit on all rows (and its in-sample predictions of the training rows), and skill tables
and plots."""

from __future__ import annotations

import json
import logging

import pandas as pd

from .. import _atomic, plots, seeds
from .. import cv as cv_mod
from .. import layout as L
from ..context import Context
from ..errors import ConfigError, InputError
from ..predictors import training_rows
from ..vocab import FLUXES
from .sites import PREDICTOR_KEYS
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)

FOREST_KEYS = ("forest.n_estimators", "forest.mtry", "forest.mtry_grid", "forest.nodesize", "forest.central")
CV_KEYS = ("forest.cv", "forest.oob_site_fraction", "forest.oob_trees")


def cv_outputs(ctx: Context, what: str, column: str) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """This stage's outputs that a later term builds on: the CV predictions, ``forest.json`` and
    the site table. Raises a ConfigError naming ``what`` (the term) and its ``column`` (config
    key) when the run has no CV."""
    lay = ctx.layout
    if not lay.cv_predictions.exists():
        raise ConfigError(
            ctx.cfg.source,
            f"{what} needs the cross-validation residuals",
            column=column,
            expected='forest.cv = "loso" or "site_oob"',
        )
    return pd.read_parquet(lay.cv_predictions), json.loads(lay.forest_json.read_text()), pd.read_parquet(lay.sites)


def run(ctx: Context, progress_factory=None) -> None:
    lay = ctx.layout
    progress_factory = progress_factory or ctx.progress_factory
    table = pd.read_parquet(lay.sites)
    fs = ctx.cfg.forest
    models_dir, cv_dir = fresh_dir(lay.tmp(L.MODELS)), fresh_dir(lay.tmp(L.CV))
    info, all_pred, all_metrics, overall, all_fitted = {}, [], [], {}, []
    # Timings go to the stage marker, not to models/forest.json: outputs are bit-identical across runs.
    seconds = ctx.cache.setdefault("marker_extra", {}).setdefault("seconds_by_flux", {})
    pset = ctx.predictor_set
    X_cols = list(pset.names)
    for flux in FLUXES:
        rows = training_rows(table, flux, pset).reset_index(drop=True)
        all_sites = set(table.loc[table[flux].notna(), "site_id"])
        dropped = sorted(all_sites - set(rows.site_id))
        if rows.site_id.nunique() < 3:
            raise InputError(
                ctx.cfg.inputs.sites,
                f"only {rows.site_id.nunique()} site(s) with complete rows for {flux}",
                column=flux,
                expected=f"at least 3 sites with the flux and all {len(X_cols)} predictors for leave-one-site-out CV",
            )
        for c in X_cols:
            if rows[c].nunique() < 2:
                log.warning(f"{flux}: predictor {c} is constant over the training rows; it cannot split")
        grid = [fs.mtry] if fs.mtry is not None else (fs.mtry_grid or cv_mod.mtry_grid(len(X_cols)))
        what = "LOSO folds" if fs.cv == "loso" else "site_oob forests (one per mtry)"
        label = f"{flux}: {what}, mtry {','.join(map(str, sorted(set(grid))))}"
        prog = progress_factory(label) if progress_factory and fs.cross_validates else None
        fit = cv_mod.fit_flux(
            rows,
            flux,
            X_cols,
            mtry=fs.mtry,
            grid=fs.mtry_grid,
            n_estimators=fs.n_estimators,
            nodesize=fs.nodesize,
            central=fs.central,
            cv=fs.cv,
            oob_site_fraction=fs.oob_site_fraction,
            oob_trees=fs.oob_trees,
            seed=ctx.cfg.run.seed,
            forest_seed=seeds.integer(ctx.cfg.run.seed, "forest"),
            dropped=dropped,
            progress=prog,
            client=ctx.client() if fs.cv == "loso" else None,
            categorical=pset.categorical,
        )
        seconds[flux] = fit.seconds
        tag = "LOSO" if fs.cv == "loso" else "site_oob"
        fit.model.save(models_dir / f"{flux}.npz")
        info[flux] = fit.info
        all_fitted.append(fit.fitted)
        if fit.overall is not None:
            all_pred.append(fit.predictions)
            all_metrics.append(fit.metrics)
            overall[flux] = fit.overall
        log.info(
            f"{flux}: {len(rows)} rows, {info[flux]['sites']} sites, mtry {info[flux]['mtry']}"
            + (
                f" ({tag} RMSE {overall[flux]['caret_RMSE']:.1f}, R² {overall[flux]['caret_Rsquared']:.2f}, "
                f"{fit.seconds['cv']:.0f} s)"
                if flux in overall
                else ""
            )
        )
    (models_dir / L.inner(L.FOREST_JSON)).write_text(json.dumps(info, indent=2))
    # the in-sample predictions of the training rows (the report's site time series, Supp. Figs. 3-4)
    pd.concat(all_fitted, ignore_index=True).to_parquet(models_dir / L.inner(L.FOREST_FITTED), index=False)
    if all_pred:
        pred = pd.concat(all_pred, ignore_index=True)
        pred.to_parquet(cv_dir / L.inner(L.CV_PREDICTIONS), index=False)
        pd.concat(all_metrics, ignore_index=True).to_csv(cv_dir / "metrics_by_mtry.csv", index=False)
        chosen = pred.merge(
            pd.DataFrame([{"flux": f, "mtry": v["mtry"]} for f, v in info.items()]), on=["flux", "mtry"]
        )
        chosen = chosen.assign(abs_error=(chosen.pred - chosen.obs).abs())
        for stem, t in cv_mod.skill_tables(chosen).items():
            t.to_csv(cv_dir / f"{stem}.csv", index=False)
        plots.obs_vs_pred(chosen, overall, cv_dir / "obs_vs_pred.png", held_out=tag)
    _atomic.replace(cv_dir, lay.cv)
    _atomic.replace(models_dir, lay.models)


SPEC = StepSpec(
    "forest",
    run,
    writes=(L.MODELS, L.CV),
    depends=("sites",),
    reads=(L.SITES,),
    config_keys=FOREST_KEYS + CV_KEYS + ("run.seed",) + PREDICTOR_KEYS,
    summary="per flux: leave-one-site-out (or grouped out-of-bag) CV over the mtry grid, the final forest, skill tables",
)
