"""The whole study, top to bottom: sites -> forests -> upscaling -> budgets -> summary.

Each stage writes into the run directory and records what it was computed from (the config
keys of the stage and its upstream stages, the hashes of its inputs, the code) and a SHA-256
digest of each output in ``stages/<name>.json``. A stage whose outputs exist and whose
fingerprint is unchanged is skipped on rerun. Outputs are written under a temporary name and
renamed when complete, and a stage's marker is removed before it runs and written after its
outputs are in place, so an interrupted stage never leaves an output that looks finished.
A run directory holding outputs of another config or other inputs is refused (``--restart``
deletes them first). ``run.json`` records the config, input hashes, package versions, the
environment and seed (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from . import budgets as budgets_mod
from . import coverage as coverage_mod
from . import rundir
from .config import Config
from . import _atomic
from .errors import InputError, RunDirConflict
from .formats import (FLUXES, categories, cell_index, check_sites_in_grid, read_fire, read_predictors,
                      read_site_table, read_truth, read_zones, write_crs, grid_crs, open_grid)
from . import cv as cv_mod
from . import plots
from . import seeds
from . import trends as trends_mod
from . import upscale as upscale_mod
from .compare import stage_compare
from .forest import FluxForest, partial_dependence, permutation_importance
from .predictors import BOOTSTRAP_DROP, PREDICTOR_NAMES, STACK_VARIABLES, VEG_RECODE
from .uncertainty import resample_rows, site_blocks, stage_extrapolation, zone_extrapolation_sd

PACKAGES = ("abzflux", "numpy", "pandas", "xarray", "scikit-learn", "scipy", "numba", "zarr", "numcodecs", "dask",
            "distributed", "h5netcdf", "h5py", "pyarrow", "pyproj", "statsmodels", "matplotlib", "rioxarray",
            "typer", "rich")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Config keys that change how a run executes but never an output: they do not make a run
# directory "another config's" (every other key is a stage's config key; tests/test_resume.py).
NO_OUTPUT_EFFECT = ("run.scheduler",)


# --------------------------------------------------------------------------- provenance
def file_hash(path: Path) -> str:
    """SHA-256 of a file, or of a directory tree (relative paths and bytes, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 of abzflux's own source files: a stage reruns when the code that made it changed."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def environment(cfg: Config) -> dict:
    """Where and how the run executes (recorded in run.json; outputs do not depend on it)."""
    import numba

    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "machine": platform.machine(), "hostname": platform.node(),
            "cpu_count": os.cpu_count(), "numba_threads": int(numba.config.NUMBA_NUM_THREADS),
            "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
            "scheduler": cfg.run.scheduler or "this process"}


_atomic_write_text = _atomic.write_text
_atomic_replace = _atomic.replace


# --------------------------------------------------------------------------- stages
@dataclass
class Stage:
    name: str
    outputs: tuple[str, ...]
    func: Callable
    depends: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    optional: str | None = None  # runs only when this input is given
    extras: tuple[str, ...] = ()  # outputs written only in some runs (digested when present)
    enabled: Callable | None = None  # runs only when enabled(config) is true


@dataclass
class Context:
    cfg: Config
    out: Path
    log: Callable[[str], None]
    hashes: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name

    def input_paths(self) -> dict:
        """The given inputs by name (``references``: a list of paths)."""
        out = {k: getattr(self.cfg.inputs, k) for k in ("sites", "predictors", "zones", "fire", "truth")}
        out["references"] = self.cfg.inputs.references or None
        return {k: v for k, v in out.items() if v is not None}

    # Inputs are read and validated once per process, on first use.
    def sites(self) -> pd.DataFrame:
        if "sites" not in self.cache:
            self.cache["sites"] = read_site_table(self.cfg.inputs.sites)
        return self.cache["sites"]

    def truth(self) -> xr.Dataset | None:
        """A twin's true fluxes (compared with the estimates in the summary)."""
        if self.cfg.inputs.truth is None:
            return None
        if "truth" not in self.cache:
            ds = read_truth(self.cfg.inputs.truth, like=self.predictors())
            y0, y1 = self.years()
            t = pd.DatetimeIndex(ds.time.values)
            missing = pd.date_range(f"{y0}-01-01", f"{y1}-12-01", freq="MS").difference(t)
            if len(missing):
                raise InputError(self.cfg.inputs.truth, f"{len(missing)} month(s) of the run's years missing",
                                 column="time", where=", ".join(m.strftime("%Y-%m") for m in missing[:5]),
                                 expected=f"every month of {y0}-{y1}")
            self.cache["truth"] = ds
        return self.cache["truth"]

    def predictors(self) -> xr.Dataset:
        if "pred" not in self.cache:
            self.cache["pred"] = read_predictors(self.cfg.inputs.predictors)
        return self.cache["pred"]

    def zones(self) -> xr.Dataset:
        if "zones" not in self.cache:
            self.cache["zones"] = read_zones(self.cfg.inputs.zones, like=self.predictors())
        return self.cache["zones"]

    def veg(self) -> xr.DataArray:
        """Static vegetation classes after recoding (for vegetation × region zones)."""
        v = self.predictors()["veg_type"]
        for a, b in VEG_RECODE.items():
            v = v.where(v != a, b)
        return v

    def fire(self) -> xr.Dataset | None:
        if self.cfg.inputs.fire is None:
            return None
        if "fire" not in self.cache:
            from .fire import aggregate_fire
            from .formats import check_same_grid

            path, pred = self.cfg.inputs.fire, self.predictors()
            ds = read_fire(path)
            k = _fine_factor(ds, pred)
            if k > 1:  # a finer fire grid nested in the analysis grid: aggregate (conserving emissions)
                self.log(f"fire file is on a {k}x finer grid: aggregated onto the analysis grid")
                ds = aggregate_fire(ds, k).assign_coords(y=pred.y.values, x=pred.x.values)
            check_same_grid(ds, pred, path, self.cfg.inputs.predictors)
            f0 = self.cfg.fire.first_year
            if f0 is not None:  # the fire period (paper: 2002-2020); NEE + fire only where fire is counted
                ds = ds.sel(time=slice(f"{f0}-01-01", None))
            self.cache["fire"] = ds
        return self.cache["fire"]

    def references(self) -> list:
        """The reference products (docs/compare.md), read and checked on first use."""
        if not self.cfg.inputs.references:
            return []
        if "references" not in self.cache:
            from .compare import read_references

            self.cache["references"] = read_references(self.cfg.inputs.references, self.predictors(), self.years(),
                                                       self.fire(), self.cfg.compare.subtract_fire)
        return self.cache["references"]

    def client(self):
        """A dask.distributed client when ``run.scheduler`` is set (folds run on the cluster)."""
        addr = self.cfg.run.scheduler
        if not addr:
            return None
        if "client" not in self.cache:
            from dask.distributed import Client, LocalCluster

            if addr == "local":
                self.cache["cluster"] = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
                self.cache["client"] = Client(self.cache["cluster"])
            else:
                self.cache["client"] = Client(addr)
            self.log(f"dask.distributed: {self.cache['client']}")
        return self.cache["client"]

    def close(self) -> None:
        for k in ("client", "cluster"):
            if k in self.cache:
                self.cache.pop(k).close()

    def years(self) -> tuple[int, int]:
        """The run's calendar years: ``run.years``, or the first to the last complete year of
        the predictor stack. Every month of every year in the range must be in the stack."""
        yr = self.cfg.run.year_range(self.cfg.source)
        t = pd.DatetimeIndex(self.predictors().time.values)
        full = t.to_series().groupby(t.year).size()
        full = full[full == 12].index
        if len(full) == 0:
            raise InputError(self.cfg.inputs.predictors, "no complete calendar year of monthly predictors",
                             column="time", expected="12 monthly steps per year")
        y0, y1 = (int(full.min()), int(full.max())) if yr is None else yr
        want = pd.date_range(f"{y0}-01-01", f"{y1}-12-01", freq="MS")
        missing = want.difference(t)
        if len(missing):
            months = ", ".join(m.strftime("%Y-%m") for m in missing[:12]) + (" ..." if len(missing) > 12 else "")
            raise InputError(self.cfg.inputs.predictors, f"{len(missing)} month(s) of {y0}-{y1} missing from the "
                             f"predictor stack: {months}", column="time",
                             expected=f"every month of {y0}-{y1} (set run.years to a period the stack covers)")
        return y0, y1


def check_inputs(ctx: Context) -> None:
    """Read and check every input of one model set against the contract and the config, writing
    nothing: a bad input stops the run before the run directory is touched (and before any
    model is fitted), with an error naming the file, the column or variable and where."""
    cfg = ctx.cfg
    table = ctx.sites()
    pred = ctx.predictors()
    check_sites_in_grid(table, pred, cfg.inputs.sites)
    y0, y1 = ctx.years()
    _check_flux_sites(table, pd.DatetimeIndex(pred.time.values), cfg.inputs.sites)
    zones = ctx.zones()
    off = sites_without_land(table, pred, zones, cfg.inputs.sites)
    if off:
        ctx.log(_off_land_message(off, table))
        _check_flux_sites(table[~table.site_id.isin(off)], pd.DatetimeIndex(pred.time.values), cfg.inputs.sites)
    fire = ctx.fire()
    if fire is not None:
        fyears = set(pd.DatetimeIndex(fire.time.values).year)
        fs = cfg.fire
        if not fyears:
            raise InputError(cfg.inputs.fire, f"no fire months from fire.first_year = {fs.first_year} on",
                             column="time", expected="fire.first_year within the fire record")
        if fs.target_year is not None and not y0 <= fs.target_year <= y1:
            raise InputError(cfg.source, f"target year {fs.target_year} is outside the run's years {y0}-{y1}",
                             column="fire.target_year", expected=f"a year in {y0}-{y1}")
        check_fire_on_land(fire, zones, cfg.inputs.fire)
    ctx.references()
    ctx.truth()
    check_coverage(ctx)


def check_coverage(ctx: Context) -> None:
    """The upscaling's coverage, up front (docs/budgets.md): per zone and year, the land where every
    predictor the forests use is finite in every month, against the zones' land; then the fire
    period's months and the fire emissions' coverage of the land (docs/fire.md). Warns above
    ``budgets.coverage_warn``, stops (InputError) above ``budgets.coverage_stop``."""
    cfg, bs = ctx.cfg, ctx.cfg.budgets
    pred, zones, veg = ctx.predictors(), ctx.zones(), ctx.veg()
    y0, y1 = ctx.years()
    t = pd.DatetimeIndex(pred.time.values)
    run = pred.isel(time=np.nonzero((t.year >= y0) & (t.year <= y1))[0])
    layers = {v: run[v] for v in STACK_VARIABLES if v in run}
    fire = ctx.fire()
    # the zones' weights are computed once for both checks when they are small (else band by band)
    small = fire is not None and 64 * zones.sizes["y"] * zones.sizes["x"] * 8 <= coverage_mod.READ_BYTES * 8
    weights = coverage_mod.zone_weight_bands(zones, veg) if small else None
    cov = coverage_mod.annual_coverage(coverage_mod.monthly_coverage(layers, zones, veg=veg, weights=weights))
    coverage_mod.check_coverage(cov, bs.coverage_warn, bs.coverage_stop, cfg.inputs.predictors)
    if fire is not None:
        f0, f1 = coverage_mod.check_fire_years(fire.time.values, cfg.fire.first_year, y0, y1, cfg.inputs.fire)
        ft = pd.DatetimeIndex(fire.time.values)
        fe = fire["fire_emissions"].isel(time=np.nonzero((ft.year >= f0) & (ft.year <= f1))[0])
        fcov = coverage_mod.annual_coverage(coverage_mod.monthly_coverage({"fire_emissions": fe}, zones, veg=veg,
                                                                          weights=weights))
        coverage_mod.check_coverage(fcov, bs.coverage_warn, bs.coverage_stop, cfg.inputs.fire, what="fire emissions",
                                    remedy="0 where nothing burned")


def check_fire_on_land(fire: xr.Dataset, zones: xr.Dataset, file) -> None:
    """No NaN fire value on a land cell (zones' land_fraction > 0): a missing value there would
    count as "no fire" in the budgets. NaN outside the land is allowed."""
    land = xr.DataArray(np.asarray(zones["land_fraction"].fillna(0).values) > 0, dims=("y", "x"))
    for name in ("fire_emissions", "burned_fraction"):
        bad = fire[name].isnull() & land
        n = int(bad.sum().values)
        if n:
            t, iy, ix = (int(i) for i in np.argwhere(np.asarray(bad.values))[0])
            when = pd.Timestamp(fire.time.values[t]).strftime("%Y-%m")
            raise InputError(file, f"{n} value(s) are NaN on land cells (land_fraction > 0 in the zones)", column=name,
                             where=f"cell (time={when}, y={float(fire.y.values[iy]):.6g}, x={float(fire.x.values[ix]):.6g}; "
                                   f"index time={t}, y={iy}, x={ix})",
                             expected="a value on every land cell in every month of the fire file (0 where nothing burned)")


def sites_without_land(table: pd.DataFrame, pred: xr.Dataset, zones: xr.Dataset, file) -> list[str]:
    """Sites whose grid cell has no land (zones' ``land_fraction`` 0 or NaN), sorted. Their rows
    are dropped from the training table (documented rule, docs/formats.md §1): the cell is outside
    the upscaling domain, so its predictors describe no mapped land."""
    loc = table.drop_duplicates("site_id")
    iy, ix = cell_index(pred, loc.lat.to_numpy(), loc.lon.to_numpy(), file)
    ok = iy >= 0
    lf = np.zeros(len(loc))
    lf[ok] = np.nan_to_num(np.asarray(zones["land_fraction"].values)[iy[ok], ix[ok]].astype(np.float64))
    return sorted(loc.site_id[~(lf > 0) & ok].tolist())


def _off_land_message(off: list, table: pd.DataFrame) -> str:
    rows = int(table.site_id.isin(off).sum())
    shown = ", ".join(off[:5]) + (f" and {len(off) - 5} more" if len(off) > 5 else "")
    return (f"warning: {len(off)} site(s) fall in grid cells without land (land_fraction 0): {shown}; "
            f"their {rows} site-month(s) are dropped from the training table")


def _check_flux_sites(table: pd.DataFrame, times: pd.DatetimeIndex, file) -> None:
    """Each flux needs at least 3 sites with values in months the predictor stack covers
    (leave-one-site-out CV; the forest stage checks again after the predictors are extracted)."""
    have = (table.year * 100 + table.month).isin(times.year * 100 + times.month)
    for flux in FLUXES:
        n = table.loc[have & table[flux].notna(), "site_id"].nunique()
        if n < 3:
            raise InputError(file, f"only {n} site(s) have {flux} values in months of the predictor stack "
                             f"({times[0]:%Y-%m} to {times[-1]:%Y-%m})", column=flux,
                             expected="at least 3 sites per flux (gpp, reco and nee are all modelled)")


def _fine_factor(ds: xr.Dataset, like: xr.Dataset) -> int:
    """k when ``ds``'s grid nests k x k cells into each cell of ``like``'s (same origin corner),
    else 1."""
    try:
        d = abs(float(ds.x[1] - ds.x[0]))
        D = abs(float(like.x[1] - like.x[0]))
    except (IndexError, KeyError):
        return 1
    k = int(round(D / d))
    if k <= 1 or abs(k * d - D) > 1e-6 * D or ds.sizes["x"] != k * like.sizes["x"] or ds.sizes["y"] != k * like.sizes["y"]:
        return 1
    x0 = float(ds.x.values[:k].mean())
    y0 = float(ds.y.values[:k].mean())
    if abs(x0 - float(like.x[0])) > 1e-6 * D or abs(y0 - float(like.y[0])) > 1e-6 * D:
        return 1
    return k


def stage_sites(ctx: Context) -> None:
    """(a) The training table: site-months with predictors extracted at the sites."""
    cfg = ctx.cfg
    table = ctx.sites().copy()
    pred = ctx.predictors()
    zones = ctx.zones()
    check_sites_in_grid(table, pred, cfg.inputs.sites)
    off = sites_without_land(table, pred, zones, cfg.inputs.sites)
    if off:  # documented rule: dropped, with a warning and a count
        ctx.log(_off_land_message(off, table))
        table = table[~table.site_id.isin(off)].reset_index(drop=True)
    iy, ix = cell_index(pred, table.lat.to_numpy(), table.lon.to_numpy(), cfg.inputs.sites)
    table["iy"], table["ix"] = iy, ix
    stack_vars = [n for n in PREDICTOR_NAMES if n != "month"]
    if all(v in table.columns for v in stack_vars):
        ctx.log("site table carries every predictor: used as is")
    else:
        times = pd.DatetimeIndex(pred.time.values)
        key = pd.Series(np.arange(len(times)), index=times.year * 100 + times.month)
        ti = (table.year * 100 + table.month).map(key)
        in_period = ti.notna().to_numpy()
        t_idx = xr.DataArray(np.where(in_period, ti.fillna(0), 0).astype(int), dims="row")
        y_idx, x_idx = xr.DataArray(iy, dims="row"), xr.DataArray(ix, dims="row")
        for v in stack_vars:
            da = pred[v]
            if "time" in da.dims:
                vals = da.isel(time=t_idx, y=y_idx, x=x_idx).values.astype(np.float64)
                vals[~in_period] = np.nan
            else:
                vals = da.isel(y=y_idx, x=x_idx).values.astype(np.float64)
            table[v] = vals
        n_out = int((~in_period).sum())
        if n_out:
            ctx.log(f"{n_out} site-months fall outside the predictor period; their predictors are NaN "
                    "and listwise deletion drops them")
    if "veg_type" in table:
        table["veg_type"] = table["veg_type"].replace(VEG_RECODE)
    for c in ("method", "disturbance", "years_since_fire"):  # optional contract columns
        if c not in table:
            table[c] = np.nan
    yi, xi = xr.DataArray(iy, dims="row"), xr.DataArray(ix, dims="row")
    for zvar in ("biome", "region"):  # zone names, for skill breakdowns
        codes = zones[zvar].isel(y=yi, x=xi).values
        names = categories(zones[zvar], ctx.cfg.inputs.zones)
        table[zvar] = pd.Series(codes).map({float(k): v for k, v in names.items()}).to_numpy()
    table["permafrost"] = zones["permafrost"].isel(y=yi, x=xi).values.astype(np.float64)
    tmp = ctx.path("sites.parquet.tmp")
    table.to_parquet(tmp, index=False)
    _atomic_replace(tmp, ctx.path("sites.parquet"))
    ctx.log(f"training table: {len(table)} site-months at {table.site_id.nunique()} sites")


def training_rows(table: pd.DataFrame, flux: str) -> pd.DataFrame:
    """Listwise deletion for one flux: rows where the flux and all 17 predictors are present."""
    cols = list(PREDICTOR_NAMES) + [flux]
    return table[table[cols].notna().all(axis=1)]


def stage_forest(ctx: Context, progress_factory=None) -> None:
    """(b) Per flux: leave-one-site-out CV over the mtry grid, the chosen mtry, the final forest
    refit on all rows, and skill tables and plots."""
    table = pd.read_parquet(ctx.path("sites.parquet"))
    fs = ctx.cfg.forest
    models_dir, cv_dir = ctx.path("models.tmp"), ctx.path("cv.tmp")
    for d in (models_dir, cv_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    info, all_pred, all_metrics, overall = {}, [], [], {}
    # Timings go to the stage marker, not to models/forest.json: outputs are bit-identical across runs.
    seconds = ctx.cache.setdefault("marker_extra", {}).setdefault("seconds_by_flux", {})
    X_cols = list(PREDICTOR_NAMES)
    for flux in FLUXES:
        rows = training_rows(table, flux).reset_index(drop=True)
        all_sites = set(table.loc[table[flux].notna(), "site_id"])
        dropped = sorted(all_sites - set(rows.site_id))
        if rows.site_id.nunique() < 3:
            raise InputError(ctx.cfg.inputs.sites, f"only {rows.site_id.nunique()} site(s) with complete rows for {flux}",
                             column=flux, expected="at least 3 sites with the flux and all 17 predictors for leave-one-site-out CV")
        for c in X_cols:
            if rows[c].nunique() < 2:
                ctx.log(f"{flux}: predictor {c} is constant over the training rows; it cannot split")
        grid = [fs.mtry] if fs.mtry is not None else (fs.mtry_grid or cv_mod.mtry_grid(len(X_cols)))
        best = fs.mtry if fs.mtry is not None else None
        t0 = time.perf_counter()
        if fs.cv:
            prog = progress_factory(f"{flux}: leave-one-site-out folds") if progress_factory else None
            try:
                res = cv_mod.loso_cv(rows[X_cols], rows[flux].to_numpy(), rows.site_id.to_numpy(), grid,
                                     n_trees=fs.n_estimators, nodesize=fs.nodesize, seed=ctx.cfg.run.seed,
                                     progress=prog, client=ctx.client())
            finally:
                if prog is not None:
                    prog(None, None)
            best = res.best_mtry if best is None else best
            pred = res.predictions.merge(rows[["site_id", "year", "month", "biome", "region", "veg_type",
                                               "method", "disturbance"]].reset_index().rename(columns={"index": "row"}),
                                         on=["row", "site_id"])
            pred.insert(0, "flux", flux)
            all_pred.append(pred)
            m = res.metrics.copy()
            m.insert(0, "flux", flux)
            all_metrics.append(m)
            overall[flux] = m[m.mtry == best].iloc[0].to_dict()
        elif best is None:
            best = max(len(X_cols) // 3, 1)
        cv_s = time.perf_counter() - t0
        model = FluxForest(n_estimators=fs.n_estimators, mtry=best, nodesize=fs.nodesize, central=fs.central,
                           random_state=seeds.integer(ctx.cfg.run.seed, "forest"))
        t0 = time.perf_counter()
        model.fit(rows[X_cols], rows[flux].to_numpy())
        fit_s = time.perf_counter() - t0
        seconds[flux] = {"cv": round(cv_s, 2), "fit": round(fit_s, 2)}
        model.save(models_dir / f"{flux}.npz")
        fitted = model.predict(rows[X_cols])
        obs = rows[flux].to_numpy()
        info[flux] = {
            "rows": int(len(rows)), "sites": int(rows.site_id.nunique()), "mtry": int(best),
            "mtry_grid": [int(g) for g in grid], "tuned": fs.mtry is None and fs.cv,
            "n_estimators": fs.n_estimators, "nodesize": fs.nodesize, "central": fs.central,
            "sites_dropped_by_listwise_deletion": dropped,
            "in_sample_r2": float(np.corrcoef(fitted, obs)[0, 1] ** 2),
            "in_sample_rmse": float(np.sqrt(np.mean((fitted - obs) ** 2))),
            "cv": {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                   for k, v in overall.get(flux, {}).items()},
        }
        ctx.log(f"{flux}: {len(rows)} rows, {info[flux]['sites']} sites, mtry {best}"
                + (f" (LOSO RMSE {overall[flux]['caret_RMSE']:.1f}, R² {overall[flux]['caret_Rsquared']:.2f}, "
                   f"{cv_s:.0f} s)" if flux in overall else ""))
    (models_dir / "forest.json").write_text(json.dumps(info, indent=2))
    if all_pred:
        pred = pd.concat(all_pred, ignore_index=True)
        pred.to_parquet(cv_dir / "predictions.parquet", index=False)
        pd.concat(all_metrics, ignore_index=True).to_csv(cv_dir / "metrics_by_mtry.csv", index=False)
        chosen = pred.merge(pd.DataFrame([{"flux": f, "mtry": v["mtry"]} for f, v in info.items()]), on=["flux", "mtry"])
        chosen = chosen.assign(abs_error=(chosen.pred - chosen.obs).abs())
        for by in (None, "month", "biome", "veg_type", "disturbance", "method"):
            parts = []
            for f, g in chosen.groupby("flux", sort=False):
                g = g.assign(disturbance=g.disturbance.fillna("none").replace("", "none")) if by == "disturbance" else g
                t = cv_mod.skill_table(g, by)
                t.insert(0, "flux", f)
                parts.append(t)
            pd.concat(parts, ignore_index=True).to_csv(cv_dir / f"skill{'' if by is None else '_by_' + by}.csv", index=False)
        plots.obs_vs_pred(chosen, overall, cv_dir / "obs_vs_pred.png")
    _atomic_replace(cv_dir, ctx.path("cv"))
    _atomic_replace(models_dir, ctx.path("models"))


def stage_interpret(ctx: Context) -> None:
    """(b2) Permutation importance and partial dependence of every predictor, per flux."""
    table = pd.read_parquet(ctx.path("sites.parquet"))
    fs = ctx.cfg.forest
    out = ctx.path("interpret.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    imps, pdps = [], []
    for flux, model in load_models(ctx.out).items():
        rows = training_rows(table, flux).reset_index(drop=True)
        X = rows[list(PREDICTOR_NAMES)]
        if fs.importance_repeats > 0:
            imp = permutation_importance(model, X, rows[flux].to_numpy(), fs.importance_repeats, ctx.cfg.run.seed)
            imps.append(imp.assign(flux=flux))
        sub = None
        if fs.pdp_rows and fs.pdp_rows < len(rows):
            sub = np.unique(np.linspace(0, len(rows) - 1, fs.pdp_rows).round().astype(int))
        for c in PREDICTOR_NAMES:
            pdps.append(partial_dependence(model, X, c, fs.pdp_points, rows=sub).assign(flux=flux))
        ctx.log(f"{flux}: importance ({fs.importance_repeats} repeats) and partial dependence done")
    if imps:
        imp = pd.concat(imps, ignore_index=True)
        imp.to_csv(out / "importance.csv", index=False)
        plots.importance_bars(imp, out / "importance.png")
    pdp = pd.concat(pdps, ignore_index=True)
    pdp.to_csv(out / "partial_dependence.csv", index=False)
    for flux in FLUXES:
        plots.partial_dependence_panels(pdp, flux, out / f"partial_dependence_{flux}.png")
    _atomic_replace(out, ctx.path("interpret"))




def stage_bootstrap(ctx: Context) -> None:
    """(b3) The uncertainty ensemble: n_bootstrap forests per flux, each on a bootstrap resample
    of the training rows, month and vegetation type dropped. ``uncertainty.method``: resample the
    rows (the paper's: same n, with replacement), whole sites, or whole spatial blocks of sites
    (:mod:`abzflux.uncertainty`)."""
    table = pd.read_parquet(ctx.path("sites.parquet"))
    fs = ctx.cfg.forest
    info = json.loads(ctx.path("models/forest.json").read_text())
    out = ctx.path("bootstrap.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cols = [c for c in PREDICTOR_NAMES if c not in BOOTSTRAP_DROP]
    unc = ctx.cfg.uncertainty
    blocks = None
    if unc.method == "blocks":
        pred = ctx.predictors()
        sites = table.drop_duplicates("site_id")
        lab = site_blocks(pred.x.values[sites.ix.to_numpy()], pred.y.values[sites.iy.to_numpy()], unc.block_km)
        blocks = dict(zip(sites.site_id, lab))
    record = {"method": unc.method, "block_km": unc.block_km if blocks else None}
    for flux in FLUXES:
        rows = training_rows(table, flux).reset_index(drop=True)
        record[flux] = []
        for b in range(fs.n_bootstrap):
            rng = seeds.rng(ctx.cfg.run.seed, "bootstrap_rows", b)
            idx = resample_rows(rows.site_id.to_numpy(), unc.method, rng, blocks)
            sample = rows.iloc[idx].reset_index(drop=True)
            if fs.bootstrap_mtry == "retune":
                res = cv_mod.loso_cv(sample[cols], sample[flux].to_numpy(), sample.site_id.to_numpy(),
                                     fs.mtry_grid or cv_mod.mtry_grid(len(cols)), n_trees=fs.n_estimators,
                                     nodesize=fs.nodesize, seed=seeds.integer(ctx.cfg.run.seed, "bootstrap_cv", b), categorical=())
                m = res.best_mtry
            else:
                m = min(info[flux]["mtry"], len(cols))
            model = FluxForest(n_estimators=fs.n_estimators, mtry=m, nodesize=fs.nodesize, categorical=(),
                               central=fs.central, random_state=seeds.integer(ctx.cfg.run.seed, "bootstrap_forest", b))
            model.fit(sample[cols], sample[flux].to_numpy())
            model.save(out / f"{flux}_{b:02d}.npz")
            record[flux].append({"member": b, "mtry": m, "rows": len(sample),
                                 "distinct_rows": int(len(np.unique(idx))),
                                 "distinct_sites": int(sample.site_id.nunique())})
        ctx.log(f"{flux}: {fs.n_bootstrap} bootstrap forests ({len(cols)} predictors, {unc.method} resampled)")
    (out / "bootstrap.json").write_text(json.dumps(record, indent=2))
    _atomic_replace(out, ctx.path("bootstrap"))


def load_models(run_dir: Path) -> dict[str, FluxForest]:
    return {f: FluxForest.load(Path(run_dir) / "models" / f"{f}.npz") for f in FLUXES}


def stage_upscale(ctx: Context, progress=None) -> None:
    """(c) Monthly GPP, Reco, NEE (+ bootstrap SD) over every land cell, streamed tile-year by
    tile-year into Zarr (see :mod:`abzflux.upscale`); resumes a killed run."""
    pred = ctx.predictors()
    ctx.zones()  # validated (grid, codes) before any chunk runs
    y0, y1 = ctx.years()
    times = pd.DatetimeIndex(pred.time.values)
    sel = np.nonzero((times.year >= y0) & (times.year <= y1))[0]
    models = {f: ctx.path("models") / f"{f}.npz" for f in FLUXES}
    members = {}
    rec = ctx.path("bootstrap/bootstrap.json")
    if rec.exists():
        members = {f: [ctx.path("bootstrap") / f"{f}_{m['member']:02d}.npz" for m in v]
                   for f, v in json.loads(rec.read_text()).items() if f in FLUXES and v}
    info = upscale_mod.upscale(ctx.cfg.inputs.predictors, ctx.cfg.inputs.zones, models, members, ctx.out, sel,
                               tile=ctx.cfg.run.tile, client=ctx.client(), progress=progress,
                               fingerprint=ctx.cache.get("fingerprint", ""), log=ctx.log)
    ctx.log(f"upscaled {info['chunks']} tile-years ({info['resumed']} resumed), tile {info['tile']} cells")


def stage_budgets(ctx: Context) -> None:
    """(d) Budgets (Tg C) and densities (g C m-2) of GPP, Reco, NEE, NEE as Reco − GPP, fire and
    NEE + fire for every zone (domain, biomes, regions, biome × region, continents, permafrost,
    vegetation type × region): monthly, seasonal (annual, JJA, non-summer within-year and
    cross-year) for every year and as period means, each with the SD across the bootstrap
    forests of the aggregate itself; Table 1; source areas; the decadal monthly comparison
    (Fig. 3); the seasonal amplitude; latitude correlations. Tables in ``budgets/``."""
    zones, veg = ctx.zones(), ctx.veg()
    up = xr.open_zarr(ctx.path("upscaled.zarr"), consolidated=False)
    out = ctx.path("budgets.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    bs = ctx.cfg.budgets
    mon = budgets_mod.monthly_budgets(up[list(FLUXES) + ["nee_derived"]], zones, veg=veg)
    areas = budgets_mod.zone_areas_m2(zones, veg=veg)
    fire = None
    if ctx.fire() is not None:
        fm = budgets_mod.monthly_budgets(ctx.fire()[["fire_emissions"]], zones, veg=veg).assign(flux="fire")
        fm = fm[fm.time.isin(mon.time.unique())]
        fire = fm[["zone", "time", "year", "month", "tg_c"]]
        nee = mon[mon.flux == "nee"].merge(fire.rename(columns={"tg_c": "fire"}), on=["zone", "time", "year", "month"])
        mon = pd.concat([mon, fm, nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.fire).drop(columns="fire")],
                        ignore_index=True)
    members = None
    mpath = ctx.path("budgets_members_monthly.parquet")
    if mpath.exists():
        members = pd.read_parquet(mpath)
        if fire is not None:  # fire carries no bootstrap uncertainty: every member gets the same emissions
            nee = members[members.flux == "nee"].merge(fire.rename(columns={"tg_c": "fire"}),
                                                       on=["zone", "time", "year", "month"])
            members = pd.concat([members, nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.fire).drop(columns="fire")],
                                ignore_index=True)
    dens = lambda df: df.tg_c * budgets_mod.TG / df.zone.map(areas)  # noqa: E731
    kinds = {z: budgets_mod.zone_kind(z) for z in areas.index}

    # monthly
    mo = mon.assign(density_g_m2=dens(mon))
    if members is not None:
        sd = members.groupby(["zone", "flux", "time"]).tg_c.std(ddof=1).rename("tg_c_sd").reset_index()
        mo = mo.merge(sd, on=["zone", "flux", "time"], how="left")
    mo.insert(1, "kind", mo.zone.map(kinds))
    mo.drop(columns="time").to_csv(out / "monthly.csv", index=False)
    # seasons, every year
    seas = budgets_mod.exact_nee_fire(budgets_mod.seasonal_from_monthly(mon), ["zone", "season", "year"])
    seas_m = budgets_mod.seasonal_from_monthly(members, by=("member",)) if members is not None else None
    st = seas.assign(density_g_m2=dens(seas))
    if seas_m is not None:
        sd = seas_m.groupby(["zone", "flux", "season", "year"]).tg_c.std(ddof=1).rename("tg_c_sd").reset_index()
        st = st.merge(sd, on=["zone", "flux", "season", "year"], how="left")
    st.insert(1, "kind", st.zone.map(kinds))
    st.to_csv(out / "seasonal.csv", index=False)
    # period means
    period = budgets_mod.period_stats(seas, seas_m, areas)
    period.insert(1, "kind", period.zone.map(kinds))
    period.to_csv(out / "period.csv", index=False)
    # Table 1
    sites = pd.read_parquet(ctx.path("sites.parquet"))
    t1 = budgets_mod.table1(sites, period)
    t1.to_csv(out / "table1.csv", index=False)
    y0, y1 = ctx.years()
    note = coverage_mod.years_note(period[period.season == "annual"], y0, y1)
    (out / "table1.md").write_text(f"# Table 1: average Arctic–boreal CO2 fluxes, {y0}–{y1}\n\n"
                                   "In situ: site-years with 12 months, averaged per site, mean ± SD across sites. "
                                   "Upscaled: area-weighted density, mean ± SD across years; budget ± SD across the "
                                   "bootstrap forests. nonsummer = January–May + September–December of the same year "
                                   "(annual = jja + nonsummer).\n\n" + (note + "\n\n" if note else "")
                                   + budgets_mod.table1_markdown(t1))
    # coverage: what the budgets summed (cells where GPP, Reco and NEE are all finite), per zone and year
    cov_m = coverage_mod.monthly_coverage({f: up[f] for f in FLUXES}, zones, veg=veg)
    cov_m.drop(columns="time").to_csv(out / "coverage_monthly.csv", index=False)
    cov = coverage_mod.annual_coverage(cov_m)
    cov.to_csv(out / "coverage.csv", index=False)
    n_low, n_any = int((cov.share_lost > bs.coverage_warn).sum()), int((cov.share_lost > 0).sum())
    ctx.log(f"coverage: {n_low} zone-year(s) lose more than {bs.coverage_warn:g} of their land (budgets/coverage.csv)"
            if n_low else f"coverage: {n_any} zone-year(s) lose up to {cov.share_lost.max():.3g} of their land"
            if n_any else "coverage: every zone's land predicted in every month")
    # source areas and latitude
    crs = grid_crs(ctx.predictors(), ctx.cfg.inputs.predictors)
    flux_maps = up[["nee", "nee_derived"]]
    shares, lat_pix = budgets_mod.map_statistics(flux_maps, zones, veg=veg, crs=crs, threshold=bs.source_threshold)
    shares.insert(2, "kind", shares.zone.map(kinds))
    shares.to_csv(out / "source_areas.csv", index=False)
    budgets_mod.insitu_sources(sites, bs.source_threshold).to_csv(out / "source_sites.csv", index=False)
    pd.concat([budgets_mod.site_latitude_correlation(sites), lat_pix], ignore_index=True).to_csv(
        out / "latitude_correlation.csv", index=False)
    # decades (Fig. 3)
    L = bs.decade_length
    decades = [(a, a + L - 1) for a in range(y0, y1 + 1, L) if a + L - 1 <= y1]
    if len(decades) >= 2:
        budgets_mod.decadal_monthly(mon, members, areas, [decades[0], decades[-1]],
                                    fluxes=("nee", "gpp", "reco", "nee_derived")).to_csv(out / "decadal_monthly.csv", index=False)
    # seasonal amplitude
    amps, changes = [], []
    for z in ("domain", "boreal", "tundra", "permafrost"):
        amp, info = budgets_mod.seasonal_amplitude(mon, zone=z, flux="nee")
        amps.append(amp.assign(zone=z))
        changes.append(info)
    pd.concat(amps, ignore_index=True).to_csv(out / "seasonal_amplitude.csv", index=False)
    pd.DataFrame(changes).to_csv(out / "seasonal_amplitude_change.csv", index=False)

    # budgets_annual.csv: the annual rows with coverage, as before (trends and summary read it)
    ann = budgets_mod.exact_nee_fire(budgets_mod.annual_from_monthly(mon.assign(coverage=mon.coverage.fillna(1.0))),
                                     ["zone", "year"])
    ann["density_g_m2"] = dens(ann)
    if seas_m is not None:
        a_sd = st[st.season == "annual"][["zone", "flux", "year", "tg_c_sd"]]
        ann = ann.merge(a_sd, on=["zone", "flux", "year"], how="left")
        p_sd = period[period.season == "annual"][["zone", "flux", "tg_c_sd"]].rename(
            columns={"tg_c_sd": "period_mean_tg_c_sd"})
        ext = zone_extrapolation_sd(ctx)
        if ext is not None:
            ann, p_sd = add_extrapolation_sd(ann, p_sd, ext)
        p_sd.to_csv(ctx.path("budgets_period_sd.csv.tmp"), index=False)
        _atomic_replace(ctx.path("budgets_period_sd.csv.tmp"), ctx.path("budgets_period_sd.csv"))
    else:  # no bootstrap forests: no SD; an older run's table must not be read as this run's
        ctx.path("budgets_period_sd.csv").unlink(missing_ok=True)
    ann = ann.sort_values(["flux", "zone", "year"]).reset_index(drop=True)
    ann.to_csv(out / "annual.csv", index=False)
    tmp = ctx.path("budgets_annual.csv.tmp")
    ann.to_csv(tmp, index=False)
    _atomic_replace(out, ctx.path("budgets"))
    _atomic_replace(tmp, ctx.path("budgets_annual.csv"))


def add_extrapolation_sd(ann: pd.DataFrame, p_sd: pd.DataFrame, ext: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annual and period-mean budgets get the extrapolation SD term (``tg_c_sd_extrap``) and the
    total ``tg_c_sd_total = sqrt(bootstrap SD² + extrapolation SD²)`` (the two independent).
    The zone-month terms are added over the months of a year and averaged over the years: the
    error is taken as fully correlated in time as in space (conservative). NEE + fire carries
    NEE's term (fire has none); Reco − GPP carries none (its GPP and Reco errors are not
    modelled jointly), so its total is its bootstrap SD."""
    a = ext.groupby(["zone", "flux", "year"]).tg_c_sd_extrap.sum().reset_index()
    a = pd.concat([a, a[a.flux == "nee"].assign(flux="nee_fire")], ignore_index=True)
    ann = ann.merge(a, on=["zone", "flux", "year"], how="left")
    ann["tg_c_sd_total"] = np.sqrt(ann.tg_c_sd ** 2 + ann.tg_c_sd_extrap.fillna(0.0) ** 2)
    p = a.groupby(["zone", "flux"]).tg_c_sd_extrap.mean().rename("period_mean_tg_c_sd_extrap").reset_index()
    p_sd = p_sd.merge(p, on=["zone", "flux"], how="left")
    p_sd["period_mean_tg_c_sd_total"] = np.sqrt(p_sd.period_mean_tg_c_sd ** 2
                                                + p_sd.period_mean_tg_c_sd_extrap.fillna(0.0) ** 2)
    return ann, p_sd


def stage_fire(ctx: Context) -> None:
    """(d2) Fire: emissions by zone and year, years in which fire emissions exceeded the net
    uptake, the map of cells burned during the fire period, residual diagnostics at burned vs
    unburned sites, and the years-since-fire bias correction (per-month mixed models of the NEE
    model's LOSO residuals, applied to the target year). Tables and maps in ``fire/``."""
    from . import fire as fire_mod

    out = ctx.path("fire.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    fs = ctx.cfg.fire
    y0, y1 = ctx.years()
    fds = ctx.fire()
    ft = pd.DatetimeIndex(fds.time.values)
    f0 = fs.first_year if fs.first_year is not None else int(ft.year.min())
    target = fs.target_year if fs.target_year is not None else y1
    ann = pd.read_csv(ctx.path("budgets_annual.csv"))
    fr = ann[(ann.flux == "fire") & (ann.year >= f0)]
    fr.pivot(index="year", columns="zone", values="tg_c").to_csv(out / "emissions_by_zone.csv")
    w = ann[ann.year >= f0].pivot_table(index=["zone", "year"], columns="flux", values="tg_c").reset_index()
    if {"nee", "fire"} <= set(w.columns):
        w["fire_exceeds_uptake"] = w.fire > -w.nee
        w[["zone", "year", "nee", "fire", "nee_fire", "fire_exceeds_uptake"]].to_csv(out / "fire_vs_uptake.csv", index=False)
    # cells burned during the fire period (Fig. 2d)
    last, frac = fire_mod.last_burn_year(fds["burned_fraction"], f0, min(target, int(ft.year.max())))
    total = fds["burned_fraction"].sel(time=slice(f"{f0}-01-01", f"{target}-12-31")).fillna(0).sum("time")
    maps = xr.Dataset({"last_burn_year": last.astype(np.float32), "last_burn_fraction": frac.astype(np.float32),
                       "burned_fraction_total": total.astype(np.float32)})
    maps["burned_fraction_total"].attrs.update(units="1", long_name=f"sum of monthly burned fractions {f0}-{target}")
    maps = write_crs(maps.assign_coords(y=fds.y, x=fds.x), grid_crs(ctx.predictors(), ctx.cfg.inputs.predictors))
    # Loaded first (three 2-D maps): dask would write the variables in thread order, and HDF5
    # would place them at other offsets in each run (same values, different bytes).
    maps.load().to_netcdf(out / "burned_cells.nc", engine="h5netcdf")
    # residuals of the NEE model at burned vs unburned sites, and the mixed models
    info = json.loads(ctx.path("models/forest.json").read_text())
    report = {"fire_period": [f0, target], "target_year": target}
    pred_path = ctx.path("cv/predictions.parquet")
    if pred_path.exists():
        pr = pd.read_parquet(pred_path)
        pr = pr[(pr.flux == "nee") & (pr.mtry == info["nee"]["mtry"])]
        sites = pd.read_parquet(ctx.path("sites.parquet"))[["site_id", "year", "month", "years_since_fire"]]
        r = pr.merge(sites, on=["site_id", "year", "month"], how="left").assign(residual=lambda d: d.obs - d.pred)
        r["burned"] = (r.disturbance == "fire") & r.years_since_fire.notna()
        diag = r.assign(ysf_bin=np.where(r.burned, np.floor(r.years_since_fire.fillna(-1)).clip(upper=30), np.nan))
        pd.concat([diag.groupby("burned").residual.agg(["mean", "std", "size"]).reset_index().assign(by="burned"),
                   diag[diag.burned].groupby("ysf_bin").residual.agg(["mean", "std", "size"]).reset_index()
                   .assign(by="years_since_fire")], ignore_index=True).to_csv(out / "residual_diagnostics.csv", index=False)
        models = fire_mod.fit_bias_models(r[r.burned], alpha=fs.alpha)
        models.to_csv(out / "bias_models.csv", index=False)
        report["significant_months"] = [int(m) for m in models.loc[models.significant, "month"]] if len(models) else []
        months = fs.months if fs.months is not None else report["significant_months"]
        months = [m for m in months if m in set(models.month) and np.isfinite(models.set_index("month").loc[m].get("slope", np.nan))]
        report["corrected_months"] = months
        up = xr.open_zarr(ctx.path("upscaled.zarr"), consolidated=False)
        if target in set(pd.DatetimeIndex(up.time.values).year):
            nee = up["nee"].sel(time=str(target)).load()
            corr = fire_mod.correct_nee(nee, models, last, frac, target, months=months)
            # Only the correction's budget is computed here; "before" is the budgets stage's.
            change = budgets_mod.monthly_budgets(xr.Dataset({"nee": corr - nee}), ctx.zones()) \
                .groupby("zone").tg_c.sum().rename("change")
            b = ann[(ann.flux == "nee") & (ann.year == target)].set_index("zone").tg_c.rename("nee_before")
            t = pd.concat([b.reindex(change.index), change], axis=1)
            t["nee_after"] = t.nee_before + t.change
            t = t[["nee_before", "nee_after", "change"]].rename_axis("zone").reset_index()
            t.to_csv(out / "bias_correction.csv", index=False)
            dom = t.set_index("zone").loc["domain"]
            report.update(domain_nee_before=float(dom.nee_before), domain_nee_after=float(dom.nee_after))
    (out / "fire.json").write_text(json.dumps(report, indent=2))
    _atomic_replace(out, ctx.path("fire"))


DRIVERS = {"ndvi": ("jja", "mean"), "lst": ("annual", "mean"), "snow_cover": ("annual", "mean"),
           "soil_moisture": ("jja", "mean"), "soil_temp": ("annual", "mean"), "srad": ("annual", "mean"),
           "vpd": ("jja", "mean")}


TREND_BAND_BYTES = 256 * 2**20  # float64 monthly series held per band and flux


def _trend_band(up: xr.Dataset, drv: xr.Dataset, rows: slice) -> xr.Dataset:
    """Every per-pixel trend map of one band of grid rows."""
    maps = {}
    for flux in FLUXES:
        for period, series in trends_mod.period_series(up[flux].isel(y=rows).load()).items():
            t = trends_mod.trend_grid(series, "year")
            for stat in ("slope", "p", "tau"):
                maps[f"{flux}_{period}_{stat}"] = t[stat]
    for var, (period, how) in DRIVERS.items():
        if var in drv:
            series = trends_mod.period_series(drv[var].isel(y=rows).load(), how=how)[period]
            t = trends_mod.trend_grid(series, "year")
            for stat in ("slope", "p", "tau"):
                maps[f"{var}_{period}_{stat}"] = t[stat]
    ds = xr.Dataset(maps)
    ds["nee_trend_attribution"] = trends_mod.overlay_classes(ds.nee_annual_slope, ds.gpp_annual_slope,
                                                             ds.reco_annual_slope).astype("int8")
    return ds


def trend_band_rows(ny: int, nx: int, n_months: int, tile: int, budget: int = TREND_BAND_BYTES) -> int:
    """Rows per band: the upscaling tile (whole Zarr chunks are read) unless one flux's float64
    monthly series for that many rows would exceed ``budget`` bytes."""
    fit = max(1, budget // max(1, nx * n_months * 8))
    return int(max(1, min(tile, fit, ny)))


def stage_trends(ctx: Context, progress=None, band_rows: int | None = None) -> None:
    """(e) Theil–Sen + Mann–Kendall (Zhang) trends: per pixel (annual, JJA, non-summer, each month;
    drivers), area shares, greening overlap, the GPP/Reco attribution of NEE trends, zone budget
    series, and sites with more than seven years of year-round data.

    The maps are computed band by band of grid rows and written into the Zarr store region by
    region, so memory is bounded by one band's monthly series (``trend_band_rows``), not the
    domain (a 1-km domain's 240 months do not fit in memory)."""
    up = xr.open_zarr(ctx.path("upscaled.zarr"), consolidated=False)
    zones = ctx.zones()
    pred = ctx.predictors()
    y0, y1 = ctx.years()
    out = ctx.path("trends.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    drv = pred.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    ny, nx = up.sizes["y"], up.sizes["x"]
    nrow = band_rows or trend_band_rows(ny, nx, up.sizes["time"], ctx.cfg.run.tile)
    bands = [slice(a, min(a + nrow, ny)) for a in range(0, ny, nrow)]
    store = out / "trend_maps.zarr"
    crs = grid_crs(pred, ctx.cfg.inputs.predictors)
    for i, band in enumerate(bands):
        ds = _trend_band(up, drv, band)
        if i == 0:  # the store's layout (variables, dtypes) comes from the first band
            import dask.array as dsa

            tmpl = xr.Dataset({k: (("y", "x"), dsa.full((ny, nx), -1 if v.dtype.kind == "i" else np.nan,
                                                        dtype=v.dtype, chunks=(nrow, nx)), v.attrs)
                               for k, v in ds.data_vars.items()}, coords={"y": up.y, "x": up.x})
            for k in tmpl.data_vars:
                if k.endswith("_slope"):
                    tmpl[k].attrs["units"] = "per year (g C m-2 yr-1 per yr for fluxes)"
            tmpl["nee_trend_attribution"].attrs.update(
                flag_values=list(range(len(trends_mod.OVERLAY) + 1)),
                flag_meanings="none " + " ".join(trends_mod.OVERLAY))
            tmpl = write_crs(tmpl, crs)
            tmpl.attrs.update(Conventions="CF-1.8", title="abzflux pixel-wise trends (Theil-Sen slope, "
                              "Mann-Kendall p with Zhang prewhitening)", period=f"{y0}-{y1}")
            tmpl.to_zarr(store, mode="w", compute=False, consolidated=False)
        ds.drop_vars([c for c in ds.coords if c not in ("y", "x")]).drop_vars(["y", "x"]).to_zarr(
            store, region={"y": band, "x": slice(0, nx)}, consolidated=False)
        if progress is not None:
            progress(i + 1, len(bands))
    ds = xr.open_zarr(store, consolidated=False)

    # Area shares (area-weighted over cells with a trend).
    w = zones["land_fraction"].fillna(0) * zones["cell_area"]
    sig = trends_mod.ALPHA
    valid = ds.nee_annual_slope.notnull() & (w > 0)
    perm = zones["permafrost"].fillna(0) > 0
    shares = {
        "nee_increasing_uptake": trends_mod.area_share((ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w, valid),
        "nee_increasing_emissions": trends_mod.area_share((ds.nee_annual_p < sig) & (ds.nee_annual_slope > 0), w, valid),
        "permafrost_nee_increasing_uptake": trends_mod.area_share(
            (ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w, valid & perm),
    }
    if "ndvi_jja_slope" in ds:
        green = (ds.ndvi_jja_p < sig) & (ds.ndvi_jja_slope > 0)
        shares["greening"] = trends_mod.area_share(green, w, valid)
        shares["greening_with_annual_uptake_trend"] = trends_mod.area_share(
            (ds.nee_annual_p < sig) & (ds.nee_annual_slope < 0), w, valid & green)
        shares["greening_with_jja_uptake_trend"] = trends_mod.area_share(
            (ds.nee_jja_p < sig) & (ds.nee_jja_slope < 0), w, valid & green)
    for code, name in enumerate(trends_mod.OVERLAY, start=1):
        shares[f"attribution_{name}"] = trends_mod.area_share(ds.nee_trend_attribution == code, w, valid)
    pd.DataFrame([{"quantity": k, "area_share": v} for k, v in shares.items()]).to_csv(out / "area_shares.csv", index=False)

    # Zone budget series (Tg C yr-1 -> Tg C yr-2).
    ann = pd.read_csv(ctx.path("budgets_annual.csv"))
    rows = []
    for (zone, flux), g in ann.groupby(["zone", "flux"], sort=True):
        g = g.sort_values("year")
        r = trends_mod.trend_series(g.tg_c.to_numpy(), g.year.to_numpy())
        rows.append({"zone": zone, "flux": flux, **{k: r[k] for k in ("first_year", "last_year", "n_years", "slope",
                                                                       "p", "tau", "lbound", "ubound")}})
    pd.DataFrame(rows).to_csv(out / "budget_trends.csv", index=False)
    trends_mod.site_trends(pd.read_parquet(ctx.path("sites.parquet"))).to_csv(out / "site_trends.csv", index=False)
    _atomic_replace(out, ctx.path("trends"))


def stage_summary(ctx: Context) -> None:
    """(e) Budgets next to the truth (when the inputs carry one), as markdown and JSON."""
    ann = pd.read_csv(ctx.path("budgets_annual.csv"))
    period = ann.groupby(["zone", "flux"]).agg(tg_c=("tg_c", "mean"), density=("density_g_m2", "mean"),
                                             first_year=("year", "min"), last_year=("year", "max")).reset_index()
    sd_path = ctx.path("budgets_period_sd.csv")
    period_sd = pd.read_csv(sd_path) if sd_path.exists() else None
    if period_sd is not None:
        period = period.merge(period_sd, on=["zone", "flux"], how="left")
    summary = {"budgets": period.to_dict(orient="records")}
    truth_cmp = None
    if ctx.cfg.inputs.truth is not None:
        truth_cmp, map_r = compare_truth(ctx, ann)
        if period_sd is not None:
            sd = period_sd.assign(flux=period_sd.flux.replace({"nee_derived": "nee (reco-gpp)"}))
            # the ± is the total (bootstrap + extrapolation term) when the run has the term
            col = "period_mean_tg_c_sd_total" if "period_mean_tg_c_sd_total" in sd else "period_mean_tg_c_sd"
            truth_cmp = truth_cmp.merge(sd[["zone", "flux", col]], on=["zone", "flux"], how="left").rename(
                columns={col: "sd"})
        summary["truth"] = truth_cmp.to_dict(orient="records")
        summary["nee_map_pearson_r"] = map_r
    info = json.loads(ctx.path("models/forest.json").read_text())
    summary["uncertainty"] = uncertainty_label(ctx.cfg)
    md = render_summary_md(period, truth_cmp, summary.get("nee_map_pearson_r"), info, summary["uncertainty"])
    cov_lines, cov_summary = coverage_summary(ctx, period)
    if cov_lines:
        md += "\n" + "\n".join(cov_lines) + "\n"
        summary["coverage"] = cov_summary
    cmp_lines, cmp_summary = _compare_summary(ctx.path("compare"))
    if cmp_lines:
        md += "\n" + "\n".join(cmp_lines) + "\n"
        summary["compare"] = cmp_summary
    _atomic_write_text(ctx.path("summary.md"), md)
    _atomic_write_text(ctx.path("summary.json"), json.dumps(summary, indent=2, default=float))


def coverage_summary(ctx: Context, period: pd.DataFrame, max_rows: int = 20) -> tuple[list, dict]:
    """The summary's coverage section: the zone-years of ``budgets/coverage.csv`` that lose more
    than ``budgets.coverage_warn`` of their land (or "full coverage"), and the fluxes whose
    period means cover other years than the run's (fire and NEE + fire: the fire period)."""
    path = ctx.path("budgets/coverage.csv")
    if not path.exists():
        return [], {}
    cov = pd.read_csv(path, dtype={"zone": str, "variables": str}, keep_default_na=False)
    warn = ctx.cfg.budgets.coverage_warn
    y0, y1 = ctx.years()
    bad = coverage_mod.above(cov, warn)
    top = float(cov.share_lost.max()) if len(cov) else 0.0
    lines = ["## Coverage", ""]
    if not len(bad):
        lines.append(f"Full coverage: the upscaling predicted every zone's land in every month of {y0}–{y1}"
                     + (f" (largest loss {top:.3%}, below budgets.coverage_warn = {warn:g})" if top > 0 else "")
                     + " (budgets/coverage.csv).")
    else:
        lines += [(f"**{len(bad)} zone-year(s) lose more than {warn:g} of their land** (budgets.coverage_warn): "
                   "there the budgets sum only the predicted area (cells where a predictor is missing have no "
                   "flux; budgets/coverage.csv)."), "",
                  "| zone | year | land (km²) | predicted (km²) | lost | worst month | missing |",
                  "|---|---|---|---|---|---|---|"]
        for r in bad.head(max_rows).itertuples():
            lines.append(f"| {r.zone} | {r.year} | {r.land_km2:,.0f} | {r.predicted_km2:,.0f} | {r.share_lost:.2%} | "
                         f"{r.worst_month} | {r.variables or '-'} |")
        if len(bad) > max_rows:
            lines.append(f"\n... and {len(bad) - max_rows} more.")
    note = coverage_mod.years_note(period, y0, y1)
    if note:
        lines += ["", note]
    out = {"warn_threshold": warn, "full_coverage": not len(bad), "max_share_lost": top,
           "above_warn": bad.to_dict(orient="records"), "years_note": note}
    return lines, out


def _compare_summary(d: Path) -> tuple[list, dict]:
    """The compare stage's headline numbers: extrapolation and, with products, their metrics."""
    if not (d / "aoa_sd.csv").exists():
        return [], {}
    out: dict = {}
    lines = ["## Extrapolation and other products", ""]
    sd = pd.read_csv(d / "aoa_sd.csv").set_index("flux")
    ma = pd.read_csv(d / "mess_area.csv")
    dom = ma[ma.zone == "domain"]
    out["mess_share_extrapolated"] = dict(zip(dom.period, dom.share_extrapolated))
    lines.append("Share of the domain with MESS < 0 (extrapolation): " + ", ".join(
        f"{p} {100 * v:.0f}%" for p, v in zip(dom.period, dom.share_extrapolated)) + ".")
    if "nee" in sd.index:
        r = sd.loc["nee"]
        out["nee_sd_inside_outside_aoa"] = [float(r.inside_mean_sd), float(r.outside_mean_sd)]
        lines.append(f"Mean annual NEE bootstrap SD inside / outside the area of applicability: "
                     f"{r.inside_mean_sd:.1f} / {r.outside_mean_sd:.1f} g C m-2 yr-1 (ratio {r.ratio:.2f}).")
    if (d / "metrics.csv").exists():
        m = pd.read_csv(d / "metrics.csv")
        b = pd.read_csv(d / "budgets.csv")
        b = b[b.zone == "domain"].set_index("product")
        out["products"] = m.to_dict(orient="records")
        lines += ["", "| product | years | fire subtracted | map r | trend r | domain NEE abzflux | product | ratio "
                  "| source area abzflux | product |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in m.itertuples():
            bb = b.loc[r.product]
            lines.append(f"| {r.product} | {r.first_year}–{r.last_year} | {'yes' if r.fire_subtracted else 'no'} | "
                         f"{r.map_r:.2f} | {r.trend_r:.2f} | {bb.abzflux_tg_c:.0f} | {bb.product_tg_c:.0f} | "
                         f"{bb.ratio:.2f} | {100 * r.source_share_abzflux:.0f}% | {100 * r.source_share_product:.0f}% |")
        lines += ["", "Budgets in Tg C yr-1 over the years and cells both have; details in compare/."]
    return lines, out


def compare_truth(ctx: Context, ann: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Period-mean budgets vs the truth, per zone and flux, and the NEE map correlation."""
    truth = open_grid(ctx.cfg.inputs.truth, chunks={"time": 12})  # canonical order, as read_truth checked it
    y0, y1 = ctx.years()
    truth = truth.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    tann = budgets_mod.annual_budgets(truth[["gpp", "reco", "nee"]], ctx.zones(), fire=ctx.fire(), veg=ctx.veg())
    est = ann.copy()
    est.loc[est.flux == "nee_derived", "flux"] = "nee (reco-gpp)"
    t2 = tann[tann.flux == "nee"].assign(flux="nee (reco-gpp)")
    tann = pd.concat([tann, t2])
    m = est.merge(tann, on=["zone", "flux", "year"], suffixes=("", "_truth"))
    g = m.groupby(["zone", "flux"]).agg(estimate=("tg_c", "mean"), truth=("tg_c_truth", "mean")).reset_index()
    # Budget trends (Tg C yr-2): the estimate's come from the trends stage; the truth's are
    # computed with the same trend code.
    bt = pd.read_csv(ctx.path("trends/budget_trends.csv")).replace({"flux": {"nee_derived": "nee (reco-gpp)"}})
    est_tr = bt.set_index(["zone", "flux"]).slope
    truth_tr = {(z, f): trends_mod.trend_series(d.tg_c.to_numpy(), d.year.to_numpy())["slope"]
                for (z, f), d in tann.sort_values("year").groupby(["zone", "flux"])}
    g["trend"] = [est_tr.get((z, f), np.nan) for z, f in zip(g.zone, g.flux)]
    g["trend_truth"] = [truth_tr.get((z, f), np.nan) for z, f in zip(g.zone, g.flux)]
    g["error"] = g.estimate - g.truth
    g["rel_error"] = g.error / g.truth.abs()
    up = xr.open_zarr(ctx.path("upscaled.zarr"), consolidated=False)
    a = _mean_annual(up["nee"])
    b = _mean_annual(truth["nee"])
    ok = np.isfinite(a) & np.isfinite(b)
    r = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    truth.close()
    return g, r


def _mean_annual(da: xr.DataArray) -> np.ndarray:
    ann = da.groupby("time.year").sum(min_count=12)
    return ann.mean("year").values.ravel()


ZONE_ORDER = ["domain", "boreal", "tundra", "alaska", "canada", "europe", "siberia", "north_america", "eurasia",
              "permafrost"]
FLUX_ORDER = ["gpp", "reco", "nee", "nee (reco-gpp)", "nee_derived", "fire", "nee_fire"]


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """The summary's zones (domain, biomes, regions, continents, permafrost), in order; the
    other zones are in budgets/."""
    df = df[df.zone.isin(ZONE_ORDER)]
    z = {n: i for i, n in enumerate(ZONE_ORDER)}
    f = {n: i for i, n in enumerate(FLUX_ORDER)}
    return df.assign(_z=df.zone.map(z).fillna(99), _f=df.flux.map(f).fillna(99)) \
        .sort_values(["_f", "_z"]).drop(columns=["_z", "_f"])


def uncertainty_label(cfg: Config) -> str:
    """The uncertainty method of a run as the calibration names it: ``rows``, ``sites``,
    ``blocks`` (the bootstrap's resampling unit), with ``+extrap`` for the extrapolation term."""
    return cfg.uncertainty.method + ("+extrap" if cfg.uncertainty.extrapolation else "")


METHOD_TEXT = {"rows": "the SD across bootstrap forests trained on resampled site-months (the paper's method)",
               "sites": "the SD across bootstrap forests trained on resampled whole sites (cluster bootstrap)",
               "blocks": "the SD across bootstrap forests trained on resampled spatial blocks of sites"}


def render_summary_md(period: pd.DataFrame, truth: pd.DataFrame | None, map_r, info: dict,
                      method: str = "rows") -> str:
    lines = ["# abzflux run summary", ""]
    y0, y1 = int(period.first_year.min()), int(period.last_year.max())
    lines += ["## Models", "", "| flux | rows | sites | mtry | in-sample R² | in-sample RMSE |", "|---|---|---|---|---|---|"]
    for f, v in info.items():
        lines.append(f"| {f} | {v['rows']} | {v['sites']} | {v['mtry']} | {v['in_sample_r2']:.3f} | {v['in_sample_rmse']:.1f} |")
    lines += ["", f"## Budgets, mean {y0}–{y1} (Tg C yr-1)", ""]
    if truth is not None:
        has_sd = "sd" in truth.columns
        lines += ["| flux | zone | estimate | ± SD | truth | error | error % | error / SD "
                  "| trend (Tg C yr-2) | true trend |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in _order(truth).itertuples():
            sd = getattr(r, "sd", np.nan) if has_sd else np.nan
            lines.append(f"| {r.flux} | {r.zone} | {r.estimate:.1f} | {sd:.1f} | {r.truth:.1f} | {r.error:+.1f} | "
                         f"{100 * r.rel_error:+.1f} | {r.error / sd if sd > 0 else np.nan:+.1f} | "
                         f"{r.trend:+.2f} | {r.trend_truth:+.2f} |")
        base, _, ext = method.partition("+")
        lines += ["", f"± ({method}) is {METHOD_TEXT.get(base, base)} of each forest's period-mean budget"
                  + (", combined with the extrapolation term that grows with the dissimilarity index"
                     if ext else "") + "; error / SD shows how far the truth lies outside it "
                  "(docs/uncertainty.md).", "",
                  f"Pearson r of the mean annual NEE map against the truth: {map_r:.3f}", "",
                  "NEE is a small residual of two large fluxes; where the site network is sparse (Siberia, "
                  "the high Arctic) the model extrapolates, and the NEE budget error can be large. "
                  "It is reported here, not tuned away."]
    else:
        lines += ["| flux | zone | budget | density (g C m-2 yr-1) |", "|---|---|---|---|"]
        for r in _order(period).itertuples():
            lines.append(f"| {r.flux} | {r.zone} | {r.tg_c:.1f} | {r.density:.1f} |")
    return "\n".join(lines) + "\n"


FOREST_KEYS = ("forest.n_estimators", "forest.mtry", "forest.mtry_grid", "forest.nodesize", "forest.central")


def build_stages(progress_factory=None) -> list[Stage]:
    def upscale(ctx):
        prog = progress_factory("upscaling tile-years") if progress_factory else None
        try:
            stage_upscale(ctx, prog)
        finally:
            if prog is not None:
                prog(None, None)

    def forest(ctx):
        stage_forest(ctx, progress_factory)

    def trends(ctx):
        prog = progress_factory("trends: row bands") if progress_factory else None
        try:
            stage_trends(ctx, prog)
        finally:
            if prog is not None:
                prog(None, None)

    return [
        Stage("sites", ("sites.parquet",), stage_sites, (), ("run.years",), ("sites", "predictors", "zones")),
        Stage("forest", ("models", "cv"), forest, ("sites",), FOREST_KEYS + ("forest.cv", "run.seed")),
        Stage("interpret", ("interpret",), stage_interpret, ("forest",),
              ("forest.importance_repeats", "forest.pdp_points", "forest.pdp_rows", "run.seed")),
        Stage("bootstrap", ("bootstrap",), stage_bootstrap, ("forest",),
              FOREST_KEYS + ("forest.n_bootstrap", "forest.bootstrap_mtry", "run.seed", "uncertainty.method",
                             "uncertainty.block_km")),
        Stage("extrapolation", ("uncertainty",), stage_extrapolation, ("forest", "interpret"),
              ("compare.aoa_max_training", "run.years", "run.tile"), ("predictors", "zones"),
              enabled=lambda cfg: cfg.uncertainty.extrapolation),
        Stage("upscale", ("upscaled.zarr",), upscale, ("forest", "bootstrap"), ("run.years", "run.tile"),
              ("predictors", "zones"), extras=("budgets_members_monthly.parquet",)),
        Stage("budgets", ("budgets_annual.csv", "budgets"), stage_budgets, ("upscale", "sites", "extrapolation"),
              ("budgets.source_threshold", "budgets.decade_length", "budgets.coverage_warn", "budgets.coverage_stop",
               "fire.first_year", "run.years", "uncertainty.extrapolation"), ("predictors", "zones", "fire"),
              extras=("budgets_period_sd.csv",)),
        Stage("trends", ("trends",), trends, ("budgets",), ("run.years",), ("predictors", "zones")),
        Stage("fire", ("fire",), stage_fire, ("budgets", "forest", "sites"),
              ("fire.first_year", "fire.target_year", "fire.alpha", "fire.months", "run.years"), ("fire", "predictors", "zones"),
              optional="fire"),
        Stage("compare", ("compare",), stage_compare, ("trends", "upscale", "interpret", "sites"),
              ("compare.subtract_fire", "compare.regrid_subsamples", "compare.mess_period_length",
               "compare.n_clusters", "compare.cluster_sample", "compare.aoa_max_training",
               "budgets.source_threshold", "fire.first_year", "run.years", "run.seed"),
              ("predictors", "zones", "fire", "references")),
        Stage("summary", ("summary.md", "summary.json"), stage_summary, ("trends", "compare"), (), ("truth",)),
    ]


def _cfg_value(cfg: Config, key: str):
    d = cfg.to_dict()
    for part in key.split("."):
        d = d[part]
    return d


def _lineage(stages: list[Stage]) -> dict[str, tuple[tuple, tuple]]:
    """Per stage: the config keys and inputs of the stage and every stage upstream of it (what
    its outputs depend on, directly or through upstream outputs)."""
    out: dict[str, tuple[set, set]] = {}
    for st in stages:  # upstream stages come first
        keys, inputs = set(st.config_keys), set(st.inputs)
        for d in st.depends:
            keys |= out[d][0]
            inputs |= out[d][1]
        out[st.name] = (keys, inputs)
    return {k: (tuple(sorted(a)), tuple(sorted(b))) for k, (a, b) in out.items()}


def output_keys() -> set[str]:
    """Every config key some stage's outputs depend on."""
    return {k for st in build_stages() for k in st.config_keys}


def digest_path(path: Path) -> str:
    """SHA-256 of one output, a file or a directory tree (:func:`file_hash`)."""
    return file_hash(path)


# Files and directories abzflux writes into a run directory besides the stage outputs: the
# provenance, the report, the default exports and work in progress.
RUN_FILES = ("run.json", "report.html", "upscaled.nc")
RUN_DIRS = ("stages", "report", "geotiff", "upscale.partial")


def output_digest(run_dir) -> dict[str, str]:
    """SHA-256 of every file of a run's stage outputs, by path relative to ``run_dir`` (the coarse
    model set's under ``coarse/``). Left out: ``run.json`` and ``stages/`` (they hold timestamps
    and timings), the report (its PDFs carry a creation date), work in progress (``*.tmp``,
    ``*.old``, ``upscale.partial``) and the exports. Two runs of the same config, inputs and seed
    give equal digests (docs/reliability.md)."""
    run_dir = Path(run_dir)
    names = {o for st in build_stages() for o in st.outputs + st.extras}
    out = {}
    for name in sorted(names):
        p = run_dir / name
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            out[str(f.relative_to(run_dir))] = file_hash(f)
    if (run_dir / "coarse").is_dir():
        out.update({f"coarse/{k}": v for k, v in output_digest(run_dir / "coarse").items()})
    return out


def run_paths(exports: bool = True) -> list[str]:
    """Every top-level path abzflux may write into a model set's directory, ``stages`` and
    ``run.json`` first: stage outputs, their temporary (``.tmp``) and set-aside (``.old``)
    names, provenance, the report, work in progress and (``exports``) the default exports."""
    names = ["stages", "run.json"]
    for st in build_stages():
        for o in st.outputs + st.extras:
            names += [o, o + ".tmp", o + ".old"]
    names += [n for n in RUN_FILES + RUN_DIRS if n not in names]
    names += ["run.json.tmp", "report.tmp", "report.old", "upscaled.nc.tmp"]
    if not exports:
        names = [n for n in names if n not in ("upscaled.nc", "upscaled.nc.tmp", "geotiff")]
    return list(dict.fromkeys(names))


def clean_run_dir(out, log: Callable[[str], None] = print) -> list[Path]:
    """Delete what abzflux wrote into a run directory (stage outputs, markers, run.json, the
    report, default exports, work in progress; the coarse set's too) and nothing else: only the
    paths its ownership manifest records (:mod:`abzflux.rundir`; a directory written before
    manifests existed: the outputs its stage markers name). Markers go first, so a kill during
    the clean-up never leaves an output that looks finished."""
    out = Path(out)
    removed: list[Path] = []
    names = run_paths()
    own = rundir.Ownership(out, [st.name for st in build_stages()])
    own.adopt_legacy(names)
    if own.paths:
        removed += own.delete(names)
    if (out / "coarse").is_dir():
        removed += clean_run_dir(out / "coarse", log=lambda m: None)
        try:
            (out / "coarse").rmdir()  # only if nothing else is in it
            removed.append(out / "coarse")
        except OSError:
            pass
    if removed:
        log(f"--restart: deleted {len(removed)} previous output(s) of {out}")
    return removed


def _conflicts(ctx: Context, stages: list[Stage]) -> list[str]:
    """What differs between the config and inputs that the finished stages in ``ctx.out`` were
    computed from and this run's: one line per config key or input, naming the stages."""
    cfg, out = ctx.cfg, ctx.out
    lineage = _lineage(stages)
    diffs: dict[str, list] = {}
    for st in stages:
        marker = out / "stages" / f"{st.name}.json"
        if not marker.exists():
            continue
        m = json.loads(marker.read_text())
        if "config" not in m:  # a marker of an older abzflux: only its fingerprint, so the stage reruns
            continue
        keys, inputs = lineage[st.name]
        for k in keys:
            if k not in m["config"]:  # a key the code did not have then: a code change, the stage reruns
                continue
            old, new = m["config"][k], json.loads(json.dumps(_cfg_value(cfg, k), default=str))
            if old != new:
                diffs.setdefault(f"{k}: {old!r} -> {new!r}", []).append(st.name)
        for k in inputs:
            if k not in m.get("inputs", {}):
                continue
            old, new = m["inputs"][k], ctx.hashes.get(k)
            if k == "references" and old is not None and new is not None:  # the products' contents, in order
                old, new = list(old.values()), list(new.values())
            if old != new:
                p_old = m.get("input_paths", {}).get(k)
                p_new = ctx.input_paths().get(k)
                if old is None or new is None:
                    what = f"input {k}: " + (f"not given -> {p_new}" if old is None else f"{p_old} -> not given")
                elif k == "references":
                    what = f"input references: {p_old} -> {p_new} (contents differ)"
                else:
                    what = (f"input {k}: {p_old} (sha256 {old[:12]}...) -> {p_new} (sha256 {new[:12]}...)"
                            + (": the file's contents changed" if p_old == p_new else ""))
                diffs.setdefault(what, []).append(st.name)
    return [f"{what} (stages {', '.join(names)})" for what, names in diffs.items()]


def _refuse(out: Path, lines: list[str]) -> None:
    raise RunDirConflict(
        out, "holds outputs computed from another config or other inputs; running into it would mix them "
        "with this run's:\n  " + "\n  ".join(lines) + "\n",
        expected="the config and inputs that wrote them (to resume or update that run), another --out, or "
                 "--restart (`abzflux run CONFIG --restart`) to delete this run directory's outputs and start over")


def run_study(cfg: Config, out: Path, log: Callable[[str], None] = print, force: bool = False,
              progress_factory=None, restart: bool = False, finish: Callable[[], None] | None = None) -> dict:
    """Run every stage into ``out``; skip stages that are complete and unchanged. With a
    ``[coarse]`` section, the coarse model set then runs the same stages into ``out/coarse``.

    Every input of both model sets is read and checked (:func:`validate_study`); then ``out``
    is locked (:class:`rundir.RunLock`, held until the end, ``finish`` included) and checked,
    before anything is written, for paths abzflux did not write where this run would write or
    delete (:class:`rundir.NotOwned`) and for outputs of another config or other inputs
    (:class:`RunDirConflict`). ``restart``: first delete the previous outputs
    (:func:`clean_run_dir`). ``force``: recompute every stage. ``finish``: called after the
    model sets, with the lock still held (the CLI's summary and report). A location that cannot
    be written (no space, no permission) raises :class:`rundir.FileSystemError`."""
    out = Path(out)
    ctxs = validate_study(cfg, out, log)
    names = run_paths()
    stage_names = [st.name for st in build_stages()]
    try:
        for ctx in ctxs:
            for k, p in ctx.input_paths().items():
                ctx.hashes[k] = {str(q): file_hash(q) for q in p} if k == "references" else file_hash(p)
        for ctx in ctxs:  # no input of either model set at an output location of either
            for other in ctxs:
                rundir.check_inputs_outside_outputs(ctx.input_paths(), other.out,
                                                    names + [rundir.MANIFEST, rundir.LOCK])
        with rundir.locked(out):
            # Ownership: nothing abzflux did not write may be where this run writes or deletes.
            set_dirs = [ctx.out for ctx in ctxs]
            if restart and len(ctxs) == 1 and (out / "coarse").is_dir():
                set_dirs.append(out / "coarse")  # --restart deletes a coarse set's outputs too
            owners, legacy = {}, []
            for d in set_dirs:
                owners[d] = rundir.Ownership(d, stage_names)
                legacy += owners[d].adopt_legacy(names)
            if legacy:
                raise rundir.NotOwned(legacy[0].split(": ", 1)[0], legacy[0].split(": ", 1)[1],
                                      expected="abzflux's own outputs (move the directory out of the run directory, "
                                               "or use another --out)")
            rundir.in_the_way(owners, run_paths(exports=False))  # --restart leaves unrecorded exports alone
            if not restart:
                lines = []
                for ctx in ctxs:
                    lines += [(f"coarse/ {s}" if ctx.out != out else s) for s in _conflicts(ctx, build_stages())]
                if len(ctxs) == 1 and any((out / "coarse" / "stages").glob("*.json")):
                    lines.append("[coarse]: coarse/ holds a coarse model set's outputs; this config has no [coarse] section")
                if lines:
                    _refuse(out, lines)
            else:
                clean_run_dir(out, log)
            record = None
            for i, ctx in enumerate(ctxs):
                if i:
                    log("model set 'coarse' -> " + str(ctx.out))
                ctx.cache["ownership"] = rundir.Ownership(ctx.out, stage_names)  # after any clean-up
                rec = _run_set(ctx, log, force, progress_factory)
                if record is None:
                    record = rec
                else:
                    record["coarse"] = rec
            if finish is not None:
                finish()
    except OSError as e:
        if rundir.is_fs_error(e):
            raise rundir.fs_error(e, out, where=_where(ctxs)) from None
        raise
    finally:
        for ctx in ctxs:
            ctx.close()
    return record


def _where(ctxs: list[Context]) -> str | None:
    for ctx in reversed(ctxs):
        if "stage" in ctx.cache:
            return f"stage {ctx.cache['stage']}" + (" of the coarse model set" if ctx is not ctxs[0] else "")
    return None


def validate_study(cfg: Config, out: Path | None = None, log: Callable[[str], None] = print) -> list[Context]:
    """Check every input of every model set (fine, then coarse) before anything is written;
    returns their contexts, inputs read and cached."""
    out = Path(out) if out is not None else Path(".")
    sets = [(cfg, out)]
    if cfg.coarse_config() is not None:
        sets.append((cfg.coarse_config(), out / "coarse"))
    ctxs = []
    for c, o in sets:
        ctx = Context(cfg=c, out=o, log=log)
        check_inputs(ctx)
        ctxs.append(ctx)
    return ctxs


def _run_set(ctx: Context, log: Callable[[str], None], force: bool, progress_factory) -> dict:
    cfg, out = ctx.cfg, ctx.out
    own = ctx.cache["ownership"]
    names = run_paths(exports=False)
    rundir.make_dir(out)
    own.prune()
    # Entered before they are written: what a killed run leaves is abzflux's.
    own.pending(["stages", "run.json", "run.json.tmp"] + [n for n in names if not (out / n).exists()])
    (out / "stages").mkdir(exist_ok=True)
    record = {
        "abzflux": __version__, "status": "running", "config": cfg.to_dict(), "config_file": str(cfg.source),
        "seed": cfg.run.seed, "input_hashes": ctx.hashes, "packages": package_versions(),
        "environment": environment(cfg), "code_hash": code_hash(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": None, "stages": {},
    }
    # Written before the first stage: a killed run's directory says which config it was running.
    _atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
    fingerprints: dict[str, str] = {}
    try:
        _run_stages(ctx, record, fingerprints, force, progress_factory)
    except BaseException as e:  # SIGTERM arrives as SystemExit (cli._terminated)
        record.update(status="failed", error=f"{type(e).__name__}: {e}", stage=ctx.cache.get("stage"))
        try:
            _atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
        except OSError as e2:  # e.g. the disk is still full: the original error is the one to report
            log(f"could not mark {out / 'run.json'} failed: {e2}")
        try:
            own.remove_tmp(names)  # no partial file beside a target; finished outputs are kept
            own.record(names)
        except OSError:
            pass
        raise
    finally:
        ctx.close()
    record["status"] = "complete"
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # One digest of every stage output: two runs with equal digests produced identical outputs.
    record["output_digest"] = hashlib.sha256(json.dumps(
        {k: v.get("digest") for k, v in record["stages"].items()}, sort_keys=True).encode()).hexdigest()
    _atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
    own.record(names)
    return record


def _run_stages(ctx: Context, record: dict, fingerprints: dict, force: bool, progress_factory) -> None:
    cfg, out, log = ctx.cfg, ctx.out, ctx.log
    stages = build_stages(progress_factory)
    lineage = _lineage(stages)
    paths = {k: (str(v) if k != "references" else [str(p) for p in v]) for k, v in ctx.input_paths().items()}
    for st in stages:
        if st.optional and getattr(cfg.inputs, st.optional) is None:
            continue
        if st.enabled is not None and not st.enabled(cfg):
            continue
        fp_src = {"stage": st.name, "version": __version__, "code": code_hash(),
                  "config": {k: _cfg_value(cfg, k) for k in st.config_keys},
                  "inputs": {k: ctx.hashes.get(k) for k in st.inputs},
                  "upstream": {d: fingerprints.get(d) for d in st.depends}}  # None: a stage that did not run
        fp = hashlib.sha256(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()
        fingerprints[st.name] = fp
        marker = out / "stages" / f"{st.name}.json"
        old = json.loads(marker.read_text()) if marker.exists() else {}
        # The upstream outputs this stage read, by digest: if an upstream stage was recomputed and
        # its outputs differ (they should not: outputs are deterministic), this stage reruns too.
        up_digest = {d: record["stages"][d].get("digest") for d in st.depends if d in record["stages"]}
        done = old.get("fingerprint") == fp and all((out / o).exists() for o in st.outputs) \
            and old.get("upstream_digest", up_digest) == up_digest
        if done and not force:
            log(f"[{st.name}] up to date, skipped")
            record["stages"][st.name] = {"skipped": True, "fingerprint": fp, "digest": old.get("digest")}
            continue
        # The marker goes first: from here until the new one is written, the stage counts as not done.
        marker.unlink(missing_ok=True)
        st_names = [n for o in st.outputs + st.extras for n in (o, o + ".tmp", o + ".old")]
        st_names += ["upscale.partial"] if st.name == "upscale" else []
        ctx.cache["ownership"].pending(st_names)
        ctx.cache["stage"] = st.name
        t0 = time.perf_counter()
        log(f"[{st.name}] running")
        ctx.cache["fingerprint"] = fp
        ctx.cache["marker_extra"] = {}
        st.func(ctx)
        dt = time.perf_counter() - t0
        digest = {o: digest_path(out / o) for o in st.outputs + st.extras if (out / o).exists()}
        keys, inputs = lineage[st.name]
        _atomic_write_text(marker, json.dumps({
            "fingerprint": fp, "stage": st.name, "version": __version__, "code": code_hash(),
            "config": {k: _cfg_value(cfg, k) for k in keys},
            "inputs": {k: ctx.hashes.get(k) for k in inputs}, "input_paths": {k: paths.get(k) for k in inputs},
            "upstream": fp_src["upstream"], "upstream_digest": up_digest, "outputs": list(st.outputs), "digest": digest,
            "seconds": round(dt, 2), **ctx.cache.pop("marker_extra")}, indent=2, default=str))
        ctx.cache["ownership"].record(st_names)
        record["stages"][st.name] = {"skipped": False, "seconds": round(dt, 2), "fingerprint": fp, "digest": digest}
