"""Upscaling: monthly GPP, Reco and NEE over every land cell, streamed chunk by chunk.

The grid is cut into square tiles (``tile`` × ``tile`` cells) and the period into calendar
years; one *chunk* is one tile-year, and it is also one chunk of the output Zarr store
(12, tile, tile). A chunk is computed from the predictor tile of that year alone, so peak
memory depends on the tile size and the number of bootstrap forests, never on the domain size
or the number of months. Tiles without land are skipped (their store chunks stay unwritten and
read as NaN).

Each finished chunk writes its region of the store and then a small completion record
(``parts/<year>_<iy>_<ix>.npz``, written atomically) holding the bootstrap forests' zone sums
for that chunk. A killed run restarts, finds the records and computes only the missing chunks.
Per-pixel values do not depend on the order in which chunks run or on the machine that ran
them; the zone sums are added in a fixed chunk order, so a local run, a threaded run and a
dask.distributed run give identical outputs.

Workers (local, threads or a dask.distributed cluster) open the predictor and zones files and
the model files by path, so on a cluster the run directory and inputs must be on a file system
every worker sees (see docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import __version__, _atomic
from . import budgets as budgets_mod
from ._rf import as_exact_float32
from .errors import InputError
from .forest import FluxForest
from .formats import (
    TIME_BOUNDS,
    consolidate,
    flux_attrs,
    grid_crs,
    model_view,
    open_grid,
    plan_predictors,
    with_month_bounds,
    write_crs,
)
from .layout import RunLayout
from .predictors import PAPER, VEG_FALLBACK, VEG_RECODE
from .vocab import DEFAULT_PERMAFROST, FLUXES

log = logging.getLogger(__name__)

OUT_VARS = (*FLUXES, "nee_derived")
LONG_NAMES = {
    "gpp": "gross primary productivity",
    "reco": "ecosystem respiration",
    "nee": "net ecosystem exchange (modelled directly; negative = uptake)",
    "nee_derived": "net ecosystem exchange derived as reco - gpp",
}


@dataclass(frozen=True)
class Chunk:
    """One tile-year: output time steps ``t0:t0+nt`` and cells ``[iy0:iy1, ix0:ix1]``."""

    year: int
    t0: int
    nt: int
    iy0: int
    iy1: int
    ix0: int
    ix1: int

    @property
    def key(self) -> str:
        return f"{self.year}_{self.iy0}_{self.ix0}"


@dataclass
class UpscaleJob:
    """Everything a worker needs for any chunk; small and picklable (paths, not arrays)."""

    predictors: str
    zones: str
    models: dict  # flux -> model file
    members: dict  # flux -> list of bootstrap model files
    store: str
    parts: str
    time_index: list  # predictor time index of each output time step
    veg_map: dict = field(default_factory=dict)  # flux -> {code: code used or NaN}
    zones_order: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)  # name -> formats.LayerPlan: every stack layer read
    names: tuple = PAPER.names  # the model's predictors, in order
    bootstrap_names: tuple = PAPER.bootstrap_names  # the bootstrap forests' (factors dropped)
    permafrost: tuple = ()  # the [budgets] permafrost (rule, threshold) of the member zone budgets
    # Worker caches are keyed by this too: a long-lived worker never reuses a dataset or a store
    # handle opened for another run (other inputs, or a store recreated at the same path).
    key: str = ""
    cells: np.ndarray | None = None  # (y, x) bool: predict only these land cells (None: all)


# --------------------------------------------------------------------------- worker side
@lru_cache(maxsize=8)
def _open(path: str, key: str = "") -> xr.Dataset:
    """Open an input lazily *without* dask: a tile read goes straight to the file (the driver
    has validated it already); a dask graph per tile would cost more than the read."""
    return open_grid(path, chunks=None)  # canonical dimension order and datetime64 time, as validated


@lru_cache(maxsize=4)
def _store(path: str, key: str = ""):
    import zarr

    return zarr.open_group(path, mode="r+")


@lru_cache(maxsize=256)
def _model(path: str, mtime: float) -> FluxForest:  # mtime: a rewritten model file is reloaded
    return FluxForest.load(path)


def _load(path: str) -> FluxForest:
    return _model(path, os.path.getmtime(path))


def _tile_predictors(pred: xr.Dataset, plans: dict, tidx: np.ndarray, ys: slice, xs: slice):
    """Predictor columns of one tile-year as arrays (nt, ty, tx) or (ty, tx), by model name
    (``plans``: how each is made from the stack as opened), plus the month of each step."""
    months = pd.DatetimeIndex(pred.time.values[tidx]).month.to_numpy()
    cols = {name: plan.tile(pred, tidx, ys, xs) for name, plan in plans.items()}
    return cols, months


@lru_cache(maxsize=2)
def _tile_zone_weights(
    zones_path: str,
    key: str,
    iy0: int,
    iy1: int,
    ix0: int,
    ix1: int,
    veg: bytes,
    order: tuple,
    permafrost: tuple,
) -> np.ndarray:
    """(zone, cell) weights (m2 of land) of one tile, the permafrost zone's under the
    ``[budgets]`` rule ``permafrost`` (rule, threshold); cached because a tile's years come in a
    row (``plan_chunks``) and the zones and the static vegetation map do not change."""
    z = _open(zones_path, key).isel(y=slice(iy0, iy1), x=slice(ix0, ix1)).load()
    z = budgets_mod.permafrost_zones(z, *permafrost)
    ty, tx = iy1 - iy0, ix1 - ix0
    veg2d = pd.Series(np.frombuffer(veg, np.float64)).replace(VEG_RECODE).to_numpy(np.float64)
    wz = budgets_mod.zone_weights(z, veg2d.reshape(ty, tx))
    if tuple(wz.zone.values) != order:
        raise RuntimeError(f"zone order differs in tile y {iy0}:{iy1}, x {ix0}:{ix1}")
    return wz.values.reshape(wz.sizes["zone"], -1)


def predict_chunk(job: UpscaleJob, c: Chunk) -> dict:
    """Predict one tile-year: the final forests' fluxes, NEE as Reco − GPP, the SD across the
    bootstrap forests and each bootstrap forest's zone sums (Tg C per month)."""
    pred, zones = _open(job.predictors, job.key), _open(job.zones, job.key)
    ys, xs = slice(c.iy0, c.iy1), slice(c.ix0, c.ix1)
    tidx = np.asarray(job.time_index[c.t0 : c.t0 + c.nt])
    z = zones.isel(y=ys, x=xs).load()
    land = z["land_fraction"].fillna(0).values > 0
    if job.cells is not None:
        land = land & job.cells[ys, xs]
    cols, months = _tile_predictors(pred, job.plans, tidx, ys, xs)
    nt, (ty, tx) = len(tidx), land.shape
    full = {}
    for v, a in cols.items():
        full[v] = a if a.ndim == 3 else np.broadcast_to(a, (nt, ty, tx))
    full["month"] = np.broadcast_to(months[:, None, None].astype(np.float64), (nt, ty, tx))
    ok = np.broadcast_to(land, (nt, ty, tx)).copy()
    for v in job.names:
        if v not in ("month", "veg_type"):
            ok &= np.isfinite(full[v])
    X = pd.DataFrame({v: full[v][ok] for v in job.names if v != "veg_type"})
    where = np.nonzero(ok)
    veg = pd.Series(full["veg_type"][ok]).replace(VEG_RECODE).to_numpy(dtype=np.float64)
    res = {}
    for flux, path in job.models.items():
        model = _load(path)
        a = np.full((nt, ty, tx), np.nan, np.float32)
        if "veg_type" not in job.names:  # no vegetation factor: no class to remap
            if len(X):
                a[where] = model.predict(X[model.feature_names_])
            res[flux] = a
            continue
        vt = veg.copy()
        for code, to in job.veg_map.get(flux, {}).items():
            vt[veg == float(code)] = np.nan if to is None else to
        has = np.isfinite(vt)
        if has.any():
            a[tuple(i[has] for i in where)] = model.predict(X[has].assign(veg_type=vt[has])[model.feature_names_])
        res[flux] = a
    res["nee_derived"] = res["reco"] - res["gpp"]
    out = {"res": res}
    if job.members:
        wmat = _tile_zone_weights(
            job.zones,
            job.key,
            c.iy0,
            c.iy1,
            c.ix0,
            c.ix1,
            np.asarray(cols["veg_type"]).tobytes(),
            tuple(job.zones_order),
            tuple(job.permafrost),
        )
        Xb = X[list(job.bootstrap_names)]
        ens = {}
        mats = {}  # members share their numeric columns: build each column order's matrix once
        for flux, paths in job.members.items():
            a = np.full((len(paths), nt, ty, tx), np.nan, np.float32)
            for i, p in enumerate(paths):
                m = _load(p)
                if m.levels_:
                    a[i][ok] = m.predict(Xb[m.feature_names_])
                    continue
                key = tuple(m.feature_names_)
                if key not in mats:
                    mats[key] = as_exact_float32(m._matrix(Xb[list(key)]))  # stacks are float32: exact
                a[i][ok] = m._predict_matrix(mats[key])
            ens[flux] = a
        ens["nee_derived"] = ens["reco"] - ens["gpp"]
        sums = []
        for v in OUT_VARS:
            a = ens[v]
            res[f"{v}_sd"] = a.std(axis=0, ddof=1) if len(a) > 1 else np.full(a.shape[1:], np.nan, np.float32)
            flat = np.nan_to_num(a.reshape(len(a), nt, -1).astype(np.float64))
            sums.append(np.einsum("btc,zc->btz", flat, wmat) / budgets_mod.TG)  # (member, time, zone)
        out["member_tg"] = np.stack(sums)  # (var, member, time, zone)
    return out


def run_chunk(job: UpscaleJob, c: Chunk) -> str:
    """Compute one chunk, write its region of the store, then its completion record."""
    out = predict_chunk(job, c)
    g = _store(job.store, job.key)  # float32 with NaN fill: the arrays are written as they are
    for v, a in out["res"].items():
        g[v][c.t0 : c.t0 + c.nt, c.iy0 : c.iy1, c.ix0 : c.ix1] = a
    rec = Path(job.parts) / f"{c.key}.npz"
    tmp = rec.with_name(rec.name + ".tmp.npz")
    np.savez(tmp, member_tg=out.get("member_tg", np.zeros((0,))))
    os.replace(tmp, rec)
    return c.key


# --------------------------------------------------------------------------- driver side
def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def plan_chunks(land: np.ndarray, times: pd.DatetimeIndex, tile: int) -> list[Chunk]:
    """Tile-years with at least one land cell, in a fixed order (row, column, year): the years
    of one tile follow each other, so a worker reuses the tile's zone weights."""
    ny, nx = land.shape
    chunks = []
    years = times.year.to_numpy()
    for iy in range(0, ny, tile):
        for ix in range(0, nx, tile):
            if not land[iy : iy + tile, ix : ix + tile].any():
                continue
            for year in sorted(set(years.tolist())):
                t = np.nonzero(years == year)[0]
                chunks.append(Chunk(int(year), int(t[0]), len(t), iy, min(iy + tile, ny), ix, min(ix + tile, nx)))
    return chunks


def veg_remap(veg: np.ndarray, known: list, flux: str) -> dict:
    """Vegetation classes on land without training levels: each takes its first trained
    fallback (predictors.VEG_FALLBACK); classes with none are not predicted (None → NaN)."""
    out = {}
    known = set(float(k) for k in known)
    for code in sorted(set(veg.tolist()) - known):
        fb = next((float(c) for c in VEG_FALLBACK.get(int(code), ()) if c in known), None)
        out[float(code)] = fb
        log.info(
            f"{flux}: vegetation class {int(code)} not in training; "
            + ("cells left NaN" if fb is None else f"predicted as class {int(fb)}")
        )
    return out


def check_models_match(models: dict, members: dict, pred: xr.Dataset, file) -> None:
    """Every predictor a model was trained on must be in the stack (month comes from time)."""
    for flux, paths in [(f, [p]) for f, p in models.items()] + list(members.items()):
        for p in paths:
            m = _load(p)
            missing = [c for c in m.feature_names_ if c != "month" and c not in pred]
            if missing:
                raise InputError(
                    file,
                    f"the {flux} model {Path(p).name} was trained on predictor(s) {missing} "
                    "that the predictor stack does not have",
                    column=", ".join(missing),
                    expected=f"a stack with every model predictor: {m.feature_names_}",
                )


def _template(pred: xr.Dataset, times: pd.DatetimeIndex, variables: list, tile: int, file) -> xr.Dataset:
    import dask.array as dsa

    ny, nx = pred.sizes["y"], pred.sizes["x"]
    shape = (len(times), ny, nx)
    chunks = (12, min(tile, ny), min(tile, nx))
    ds = xr.Dataset(
        {v: (("time", "y", "x"), dsa.full(shape, np.nan, dtype=np.float32, chunks=chunks)) for v in variables},
        coords={"time": times, "y": pred.y.values, "x": pred.x.values},
    )
    ds = with_month_bounds(ds)
    for v in variables:
        base = v[:-3] if v.endswith("_sd") else v
        sd = v.endswith("_sd")
        ds[v].attrs.update(
            flux_attrs(f"SD across the bootstrap forests of {LONG_NAMES[base]}" if sd else LONG_NAMES[base])
        )
        if not sd and f"{v}_sd" in variables:
            ds[v].attrs["ancillary_variables"] = f"{v}_sd"
        ds[v].encoding.update(chunks=chunks)
    ds.y.attrs.update(units="m", standard_name="projection_y_coordinate", axis="Y")
    ds.x.attrs.update(units="m", standard_name="projection_x_coordinate", axis="X")
    ds = write_crs(ds, grid_crs(pred, file))
    ds.attrs.update(
        Conventions="CF-1.8",
        title="abzflux upscaled monthly CO2 fluxes",
        source=f"abzflux {__version__}",
        history=f"abzflux {__version__} upscale: random-forest predictions of monthly site fluxes on the grid",
    )
    return ds


def build_job(
    pred: xr.Dataset,
    zds: xr.Dataset,
    predictors,
    zones,
    models: dict,
    members: dict,
    store,
    parts,
    times_sel: np.ndarray,
    plans: dict,
    predictor_set=PAPER,
    permafrost: tuple[str, float] = DEFAULT_PERMAFROST,
    key: str = "",
) -> tuple[UpscaleJob, np.ndarray]:
    """The :class:`UpscaleJob` of a model set (``pred``: the model view of the stack, ``zds``
    the zones as opened) and the land mask: vegetation classes remapped per flux from the
    models' training levels, the zones' order. Also used by :mod:`abzflux.network` with the
    final forests' levels."""
    land_da = zds["land_fraction"].fillna(0) > 0
    land = np.asarray(land_da.values)
    veg_da = pred["veg_type"]
    if "time" in veg_da.dims:
        raise InputError(predictors, "veg_type varies with time", column="veg_type", expected="a static layer (y, x)")
    veg_codes = np.unique(np.asarray(veg_da.values)[land])
    veg_codes = pd.Series(veg_codes[np.isfinite(veg_codes)]).replace(VEG_RECODE).unique()
    veg_map = {}
    if "veg_type" in predictor_set.names:
        veg_map = {f: veg_remap(veg_codes, _load(p).known_levels("veg_type"), f) for f, p in models.items()}
    corner = zds.isel(y=slice(0, 2), x=slice(0, 2))
    zorder = list(budgets_mod.zone_weights(corner, np.full((corner.sizes["y"], corner.sizes["x"]), np.nan)).zone.values)
    job = UpscaleJob(
        predictors=str(predictors),
        zones=str(zones),
        models={f: str(p) for f, p in models.items()},
        members={f: [str(p) for p in ps] for f, ps in members.items()},
        store=str(store),
        parts=str(parts),
        time_index=[int(i) for i in times_sel],
        veg_map=veg_map,
        zones_order=zorder,
        plans=dict(plans),
        names=tuple(predictor_set.names),
        bootstrap_names=tuple(predictor_set.bootstrap_names),
        permafrost=tuple(permafrost),
        key=key,
    )
    return job, land


def clear_caches() -> None:
    """Release this process's cached datasets, store handles, forests and zone weights."""
    for cache in (_open, _store, _model, _tile_zone_weights):
        cache.cache_clear()


def upscale(
    predictors,
    zones,
    models: dict,
    members: dict,
    out: Path,
    times_sel: np.ndarray,
    *,
    tile: int = 128,
    client=None,
    progress=None,
    fingerprint: str = "",
    plans: dict | None = None,
    predictor_set=PAPER,
    permafrost: tuple[str, float] = DEFAULT_PERMAFROST,
) -> dict:
    """Upscale into ``out/upscaled.zarr`` (+ ``out/budgets_members_monthly.parquet`` when there
    are bootstrap forests). ``times_sel``: predictor time indices (whole calendar years).

    ``client``: a dask.distributed Client, or None to compute chunks in this process (each
    prediction already uses every core). Work in progress lives in ``out/upscale.partial``;
    a rerun with the same ``fingerprint`` resumes it. ``predictor_set``: the models' predictors;
    ``plans``: how each layer is made from the stack (default: :func:`formats.plan_predictors`);
    ``permafrost``: the ``[budgets]`` (rule, threshold) of the bootstrap members' zone budgets.
    Returns counts of chunks done/resumed.
    """
    out = Path(out)
    lay = RunLayout(out)
    raw, zds = open_grid(predictors, chunks={}), open_grid(zones, chunks={})
    if plans is None:
        plans = plan_predictors(raw, predictor_set, predictors)
    pred = model_view(raw, plans, str(predictors))
    times = pd.DatetimeIndex(pred.time.values[times_sel])
    check_models_match(models, members, pred, predictors)
    work = lay.upscale_partial
    store, parts = work / "store.zarr", work / "parts"
    variables = list(OUT_VARS) + ([f"{v}_sd" for v in OUT_VARS] if members else [])
    state = work / "job.json"
    # job.json is written last (atomically): without it, the work directory is not resumable.
    if not (_read_state(state).get("fingerprint") == fingerprint and store.exists()):
        shutil.rmtree(work, ignore_errors=True)
        parts.mkdir(parents=True)
        _template(pred, times, variables, tile, predictors).to_zarr(store, compute=False, mode="w", consolidated=False)
        _atomic.write_text(state, json.dumps({"fingerprint": fingerprint, "tile": tile, "created": time.time_ns()}))
    job, land = build_job(
        pred,
        zds,
        predictors,
        zones,
        models,
        members,
        store,
        parts,
        times_sel,
        plans,
        predictor_set,
        permafrost,
        key=f"{fingerprint}:{json.loads(state.read_text())['created']}",
    )
    chunks = plan_chunks(land, times, tile)
    done = {p.stem for p in parts.glob("*.npz") if not p.name.endswith(".tmp.npz")}
    todo = [c for c in chunks if c.key not in done]
    if done:
        log.info(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done")
    n_done = len(chunks) - len(todo)
    if progress:
        progress(n_done, len(chunks))
    if client is None:
        for c in todo:
            run_chunk(job, c)
            n_done += 1
            if progress:
                progress(n_done, len(chunks))
    else:
        from dask.distributed import as_completed

        jf = client.scatter(job, broadcast=True)
        futures = client.map(run_chunk, [jf] * len(todo), todo, pure=False)
        for f in as_completed(futures):
            f.result()
            n_done += 1
            if progress:
                progress(n_done, len(chunks))
    # Bootstrap zone sums, added in the fixed chunk order (identical for any scheduler).
    mb_path = lay.members_monthly
    if members:
        n_mem = len(next(iter(members.values())))
        zorder = job.zones_order
        total = np.zeros((len(OUT_VARS), n_mem, len(times), len(zorder)))
        for c in chunks:
            with np.load(parts / f"{c.key}.npz") as z:
                total[:, :, c.t0 : c.t0 + c.nt, :] += z["member_tg"]
        v_i, m_i, t_i, z_i = np.meshgrid(
            np.arange(len(OUT_VARS)), np.arange(n_mem), np.arange(len(times)), np.arange(len(zorder)), indexing="ij"
        )
        mb = pd.DataFrame(
            {
                "member": m_i.ravel(),
                "flux": np.asarray(OUT_VARS)[v_i.ravel()],
                "time": times[t_i.ravel()],
                "zone": np.asarray(zorder)[z_i.ravel()],
                "tg_c": total.ravel(),
            }
        )
        mb["year"], mb["month"] = mb.time.dt.year, mb.time.dt.month
        tmp = lay.tmp(mb_path.name)
        mb.to_parquet(tmp, index=False)
        os.replace(tmp, mb_path)
    else:
        mb_path.unlink(missing_ok=True)
    consolidate(store)  # complete: one metadata read opens it (docs/formats.md)
    _atomic.replace(store, lay.upscaled)
    shutil.rmtree(work)
    clear_caches()
    return {"chunks": len(chunks), "resumed": len(chunks) - len(todo), "tile": tile}


# --------------------------------------------------------------------------- export
def _export_vars(ds: xr.Dataset, variables) -> list:
    names = [v for v in ds.data_vars if {"time", "y", "x"} <= set(ds[v].dims)] if not variables else list(variables)
    bad = [v for v in names if v not in ds.data_vars]
    if bad:
        raise InputError(
            ds.encoding.get("source", "upscaled.zarr"),
            f"no variable(s) {bad} in the store",
            expected=f"some of {sorted(ds.data_vars)}",
        )
    return names


def export_netcdf(store, path, variables=None) -> Path:
    """Write the upscaled store (or some variables) to one CF NetCDF-4 file, streamed chunk by
    chunk, compressed; written under a temporary name and renamed when complete."""
    ds = xr.open_zarr(store, consolidated=False)
    names = _export_vars(ds, variables)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    out = ds[names]
    if TIME_BOUNDS in ds.variables:  # a variable subset drops the bounds (their own "bnds" dimension)
        out = out.assign_coords({TIME_BOUNDS: ds[TIME_BOUNDS]})
    sds = {f"{v}_sd" for v in names}  # an exported flux names its SD only when that is exported too
    for v in names:
        if out[v].attrs.get("ancillary_variables") and not set(out[v].attrs["ancillary_variables"].split()) <= sds:
            out[v].attrs.pop("ancillary_variables")
    enc: dict = {v: {"zlib": True, "complevel": 4, "dtype": "float32"} for v in names}
    # CF-1.8: no fill value on coordinates (xarray gives float ones NaN) and no 64-bit integer time.
    enc.update({c: {"_FillValue": None} for c in ("x", "y") if c in out.coords})
    enc["time"] = _time_encoding(out.time.values)
    if TIME_BOUNDS in out.variables:
        enc[TIME_BOUNDS] = dict(enc["time"])  # the bounds in the time's own units and type
    try:
        out.to_netcdf(tmp, engine="h5netcdf", encoding=enc)
        if TIME_BOUNDS in out.variables:  # xarray writes the time's units on its bounds too; CF 7.1: should not
            import h5netcdf

            with h5netcdf.File(tmp, "a") as f:
                for k in ("units", "calendar"):
                    if k in f.variables[TIME_BOUNDS].attrs:
                        del f.variables[TIME_BOUNDS].attrs[k]
        os.replace(tmp, path)
    except BaseException:  # disk full, a directory at ``path``, ...: no partial file is left
        tmp.unlink(missing_ok=True)
        raise
    return path


def _time_encoding(values) -> dict:
    """Hours since 1970 as 32-bit integers when every time stamp is a whole hour, else days as
    doubles (CF-1.8 has no 64-bit integers); the time bounds take the same encoding."""
    t = pd.DatetimeIndex(values)
    whole = bool(((t - t.floor("h")) == pd.Timedelta(0)).all())
    if whole:
        return {"units": "hours since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int32"}
    return {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "float64"}


def export_geotiff(store, out_dir, variables=None) -> list[Path]:
    """One GeoTIFF per variable and year (``<var>_<year>.tif``): 12 bands, one per month,
    float32 with NaN as nodata, DEFLATE-compressed, the store's CRS; band descriptions hold the
    month (``YYYY-MM``)."""
    import rioxarray  # noqa: F401  (registers .rio)

    ds = xr.open_zarr(store, consolidated=False)
    names = _export_vars(ds, variables)
    crs = grid_crs(ds, store)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    years = pd.DatetimeIndex(ds.time.values).year
    for v in names:
        for year in sorted(set(years)):
            da = ds[v].isel(time=np.nonzero(years == year)[0]).load()
            da = da.drop_vars([c for c in da.coords if c not in ("time", "y", "x")])
            da = da.rename({"time": "band"}).assign_coords(band=np.arange(1, da.sizes["time"] + 1))
            months = tuple(str(t)[:7] for t in ds.time.values[years == year])
            da.attrs = {
                # GeoTIFF has no cell methods or time bounds: the paper's units say it all
                "units": ds[v].attrs.get("carbon_units", ds[v].attrs.get("units", "")),
                "long_name": months,
                "description": ds[v].attrs.get("long_name", ""),
            }
            da.encoding = {}
            da = da.rio.write_crs(crs.to_wkt()).rio.write_nodata(np.nan)
            path = out_dir / f"{v}_{year}.tif"
            tmp = out_dir / f".{v}_{year}.tif.tmp"
            try:
                da.rio.to_raster(tmp, driver="GTiff", compress="DEFLATE", dtype="float32")
                os.replace(tmp, path)
            except BaseException:  # no partial file is left
                tmp.unlink(missing_ok=True)
                raise
            written.append(path)
    return written
