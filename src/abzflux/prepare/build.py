"""``abzflux prepare RECIPE --out DIR``: the contract files, streamed, resumable and atomic.

Writes ``DIR/predictors.zarr``, ``DIR/zones.zarr``, ``DIR/fire.zarr`` (when the recipe has fire
layers), ``DIR/references/<name>.nc``, ``DIR/prepare.json`` (provenance) and
``DIR/config.toml`` (a run config pointing at them). docs/prepare_core.md describes the rules.

- **Checked first.** Every layer is opened (lazily), its CRS, overlap with the target grid,
  time coverage and units are checked before anything is written: a bad input stops the command
  with one :class:`~abzflux.errors.InputError` and leaves no ``DIR`` behind.
- **Streamed.** A layer is a dask array of blocks of (12 months or, when gap-filled, every
  month) x ``tile`` x ``tile`` cells; each block reads the source window it needs, warps it
  (:mod:`.regrid`), aggregates to months (:mod:`.temporal`) and converts units, and is written
  straight to its Zarr chunks. Memory is bounded by the worker threads x one block, whatever
  the grid size.
- **Resumable.** Layers are written into ``DIR/.prepare-work/<group>.zarr``; a layer that is
  complete is recorded in ``DIR/.prepare-work/state.json`` (written atomically). A killed
  prepare re-run with the same recipe skips the recorded layers and rewrites the one it was
  writing. A different recipe (its sha256) is refused unless ``--restart``, which deletes only
  what prepare wrote (the work directory and the outputs listed in ``prepare.json``).
- **Atomic.** A group's store is checked with the contract reader (``formats.read_*``) and only
  then renamed to ``DIR/<group>.zarr``; single files are written under a temporary name and
  renamed. On an error the layer being written is removed (its array directory); if nothing was
  complete, the work directory (and ``DIR``, when prepare created it) is removed too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import pyproj
import xarray as xr
from dask.callbacks import Callback

from .. import __version__, _atomic, formats, units
from .. import predictors as P
from ..errors import InputError
from ..vocab import FLUX_UNITS
from . import temporal
from .grid import Tile, target_grid, tiles
from .layer import LayerSpec
from .products import days_in_month
from .recipe import Recipe, load_recipe
from .regrid import Regridder, choose_resampling, source_cell_area
from .sources import open_layer

log = logging.getLogger(__name__)

WORK_DIR = ".prepare-work"
STATE = "state.json"
PROVENANCE = "prepare.json"
CONFIG = "config.toml"
REFERENCES = "references"
#: Input files up to this size get a sha256 in prepare.json; larger ones size + mtime.
HASH_LIMIT = 256 * 2**20
#: Units of the zone, fire and reference variables (docs/formats.md §3-5).
CONTRACT_UNITS = {
    ("zones", "land_fraction"): "1",
    ("zones", "permafrost"): "1",
    ("zones", "cell_area"): "m2",
    ("fire", "fire_emissions"): FLUX_UNITS,
    ("fire", "burned_fraction"): "1",
}
#: Default classes of categorical layers (code -> flag meaning); options.classes replaces them.
DEFAULT_CLASSES: dict[str, dict[int, str]] = {
    "veg_type": dict(P.VEG_CLASSES),
    "biome": {6: "boreal", 11: "tundra"},  # RESOLVE Ecoregions2017 BIOME_NUM (workflow.md §5)
}
CATEGORICAL_ZONES = ("biome", "region")
#: Option keys that build reads (any product) and that the generic reader reads; a named
#: product's own keys are ``prepare.products.PRODUCT_OPTIONS[product]``.
BUILD_OPTIONS = (
    "year_fallback",
    "gapfill",
    "max_gap",
    "classes",
    "water_values",
    "keep_grid",
    "name",
    "fire_included",
    "per",
)
#: ``[fire.<variable>] options.per``: the area a fire product's values are per. GFED4.1s gives
#: emissions in g C per m2 of *grid cell* and the burned fraction of the grid cell (water
#: included); the contract's are per m2 of land (budgets multiply by cell area x land fraction),
#: so "cell" values are divided by the land fraction (a burned fraction then capped at 1).
FIRE_PER = ("land", "cell")
FIRE_PER_DEFAULT = {"gfed4": "cell", "gfed500": "cell"}
GENERIC_OPTIONS = ("time_pattern", "band", "select", "y", "x")


def contract_units(group: str, name: str) -> str | None:
    if group == "predictors":
        p = P.BY_NAME.get(name)
        return p.units if p is not None else None
    if group == "references":
        return FLUX_UNITS
    return CONTRACT_UNITS.get((group, name))


def _files(spec: LayerSpec) -> str:
    return "; ".join(str(f) for f in spec.files[:3]) + (" …" if len(spec.files) > 3 else "")


# --------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """One layer, checked and ready to stream."""

    group: str
    spec: LayerSpec
    kind: str  # "grid" (regridded), "series" (broadcast), "vector", "keep_grid" (reference on lat/lon)
    src: xr.DataArray | None = None
    regridder: Regridder | None = None
    W: np.ndarray | None = None  # target months x source steps; None: static
    months: np.ndarray | None = None
    dynamic_out: bool = False  # written as (time, y, x)
    categorical: bool = False
    classes: dict[int, str] = field(default_factory=dict)
    resampling: str | None = None
    to_units: str | None = None
    conversion: tuple[float, float] = (1.0, 0.0)
    per_month: bool = False  # a rate per day converted to a monthly sum (x days in the month)
    gapfill: tuple[str, ...] = ()
    max_gap: int = temporal.DEFAULT_MAX_GAP
    summary: dict = field(default_factory=dict)


def _classes(group: str, spec: LayerSpec) -> dict[int, str]:
    raw = spec.options.get("classes")
    if raw is None:
        if spec.name in DEFAULT_CLASSES:
            return DEFAULT_CLASSES[spec.name]
        raise InputError(
            spec.recipe or "<recipe>",
            "no classes for a categorical raster",
            column=f"{group}.{spec.name}.options.classes",
            expected='options.classes = {1 = "alaska", 2 = "canada", ...} (code = name)',
        )
    try:
        return {int(k): str(v).replace(" ", "_") for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise InputError(
            spec.recipe or "<recipe>",
            f"invalid classes {raw!r}",
            column=f"{group}.{spec.name}.options.classes",
            expected="integer codes mapped to names",
        ) from None


def _unit_plan(plan: Plan, src_units: str | None) -> None:
    spec, to = plan.spec, plan.to_units
    if to is None or plan.categorical:
        return
    if src_units is None or not str(src_units).strip():
        raise InputError(
            _files(spec),
            "no units attribute",
            column=spec.variable or spec.name,
            expected=f"units (in the files or the recipe's `units`) convertible to {to!r}",
        )
    conv = units.linear_conversion(str(src_units), to)
    if conv is None and "month-1" in to and "month" not in str(src_units):
        per_day = units.linear_conversion(str(src_units), to.replace("month-1", "d-1"))
        if per_day is not None:
            plan.conversion, plan.per_month = per_day, True
            return
    if conv is None:
        raise InputError(
            _files(spec),
            f"units {src_units!r} cannot be converted to {to!r}",
            column=spec.variable or spec.name,
            expected=f"units convertible to {to!r} (or the recipe's `units` when the file's are wrong)",
        )
    plan.conversion = conv


def _check_options(group: str, spec: LayerSpec) -> None:
    if spec.product == "generic":
        allowed = set(BUILD_OPTIONS) | set(GENERIC_OPTIONS)
    else:
        from .products import PRODUCT_OPTIONS

        if spec.product not in PRODUCT_OPTIONS:
            return  # open_layer names the unknown product
        allowed = set(BUILD_OPTIONS) | set(PRODUCT_OPTIONS[spec.product])
    for k in spec.options:
        if k not in allowed:
            raise InputError(
                spec.recipe or "<recipe>",
                f"unknown option {k!r}",
                column=f"{group}.{spec.name}.options.{k}",
                expected=f"one of {sorted(allowed)}",
            )


def plan_layer(group: str, spec: LayerSpec, target: xr.Dataset, months: np.ndarray, tile: int) -> Plan:
    """Open ``spec`` and check it against the target grid, the months and the contract units."""
    from .vector import is_vector

    if group == "zones" and is_vector(spec):  # polygons: prepare.vector rasterises them
        plan = Plan(group=group, spec=spec, kind="vector", to_units=contract_units(group, spec.name))
        plan.categorical = spec.name in CATEGORICAL_ZONES
        plan.summary = {"kind": "vector", "files": [str(f) for f in spec.files], "options": dict(spec.options)}
        return plan
    _check_options(group, spec)
    categorical = (group == "predictors" and spec.name in P.CATEGORICAL) or (
        group == "zones" and spec.name in CATEGORICAL_ZONES
    )
    plan = Plan(group=group, spec=spec, kind="grid", categorical=categorical, to_units=contract_units(group, spec.name))
    if categorical:
        plan.classes = _classes(group, spec)
    src = open_layer(spec)
    plan.src = src
    freq = src.attrs.get("frequency", "static")
    files = src.attrs.get("source_files", _files(spec))
    if spec.name == "land_fraction" and "water_values" in spec.options:  # a land-cover class raster
        water = [float(v) for v in spec.options.get("water_values", [])]
        src = xr.where(src.isin(water), 0.0, 1.0).where(src.notnull()).astype(np.float32).assign_attrs(src.attrs)
        src.attrs["units"] = "1"
        plan.src = src
    _unit_plan(plan, src.attrs.get("units"))
    want_dynamic = group in ("fire", "references") or (
        group == "predictors" and P.BY_NAME.get(spec.name) is not None and P.BY_NAME[spec.name].time_varying
    )
    if not want_dynamic and "time" in src.dims:
        raise InputError(
            files,
            f"a {freq} layer for a static variable",
            column=spec.name,
            expected="a static (y, x) layer (one time step)",
        )
    plan.dynamic_out = want_dynamic
    if group == "references":
        times = np.asarray(src["time"].values) if "time" in src.dims else None
        if times is None:
            raise InputError(files, "no time axis", column=spec.name, expected="monthly NEE")
        have = np.asarray(times).astype("datetime64[M]").astype(np.int64)
        months = months[np.isin(months.astype("datetime64[M]").astype(np.int64), have)]
        if months.size == 0:
            raise InputError(
                files, "no month in the recipe's years", column=spec.name, expected="monthly NEE in [time] years"
            )
        geographic = "x" in src.dims and pyproj.CRS.from_wkt(src.attrs["crs_wkt"]).is_geographic
        if geographic and spec.options.get("keep_grid", True):
            plan.kind = "keep_grid"
            if freq != "monthly":
                raise InputError(
                    files, f"wrong time step: {freq}", column=spec.name, expected="monthly NEE (or keep_grid = false)"
                )
    plan.months = months
    if want_dynamic:
        plan.W = temporal.weights(np.asarray(src["time"].values) if "time" in src.dims else None, freq, months, spec)
        if plan.W is None:
            log.info("%s: a static layer repeated over the %d months", spec.name, months.size)
        if plan.categorical and plan.W is not None and ((plan.W > 0).sum(axis=1) > 1).any():
            raise InputError(
                files, f"a categorical {freq} layer", column=spec.name, expected="monthly, annual or static classes"
            )
    if group == "predictors":
        plan.gapfill = temporal.gapfill_steps(spec)
        plan.max_gap = int(spec.options.get("max_gap", temporal.DEFAULT_MAX_GAP))
    if src.dims == ("time",):
        plan.kind = "series"
    elif plan.kind == "grid":
        dst_crs = formats.grid_crs(target, "<target grid>")
        src_crs = pyproj.CRS.from_wkt(src.attrs["crs_wkt"])
        y, x = target["y"].values, target["x"].values
        pts = [
            (float(x[int(i * (x.size - 1))]), float(y[int(j * (y.size - 1))]))
            for i in (0.2, 0.5, 0.8)
            for j in (0.2, 0.5, 0.8)
        ]
        src_area = source_cell_area(src["y"].values, src["x"].values, src_crs, dst_crs, pts)
        dst_area = abs(float((x[1] - x[0]) * (y[1] - y[0])))
        plan.resampling = choose_resampling(spec.resample, plan.categorical, src_area, dst_area)
        reg = Regridder(src, src_crs, y, x, dst_crs, plan.resampling, what=spec.name, files=files)
        if not reg.overlaps(list(tiles(y.size, x.size, tile))):
            raise InputError(
                files,
                "no overlap with the target grid",
                column=spec.variable or spec.name,
                expected=f"data covering part of the target grid ({dst_crs.name}, x {x[0]:.0f}..{x[-1]:.0f}, y {y[-1]:.0f}..{y[0]:.0f})",
            )
        plan.regridder = reg
    plan.summary = {
        "kind": plan.kind,
        "product": spec.product,
        "files": [str(f) for f in spec.files],
        "variable": spec.variable,
        "frequency": freq,
        "resampling": plan.resampling,
        "units_from": src.attrs.get("units"),
        "units": "1" if plan.categorical else plan.to_units,
        "per_month": plan.per_month,
        "gapfill": list(plan.gapfill),
    }
    return plan


# ------------------------------------------------------------------------------ computing
def _finish_values(plan: Plan, out: np.ndarray, t0: int = 0, t1: int = 0) -> np.ndarray:
    """Codes outside the classes -> NaN (categorical), or the unit conversion (in float32)."""
    out = np.asarray(out, dtype=np.float32)
    if plan.categorical:
        allowed = list(plan.classes) + ([1] if plan.spec.name == "veg_type" else [])
        return np.where(np.isin(out, allowed), out, np.float32(np.nan))
    scale, offset = plan.conversion
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    if plan.per_month:
        assert plan.months is not None
        out *= days_in_month(plan.months[t0:t1]).astype(np.float32)[:, None, None]
    return out


def _block_function(plan: Plan, mask: Callable[[Tile], np.ndarray] | None = None):
    def static(block, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        t = Tile(y0, y1, x0, x1)
        assert plan.regridder is not None
        out = _finish_values(plan, plan.regridder.tile(t, None))
        if mask is not None:
            out = np.where(mask(t), out, 0.0).astype(np.float32)
        return out

    def dynamic(block, block_info=None):
        (t0, t1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        t = Tile(y0, y1, x0, x1)
        shape = (t1 - t0, y1 - y0, x1 - x0)
        if plan.kind == "series":
            assert plan.src is not None and plan.W is not None
            vals = temporal.aggregate(np.asarray(plan.src.values, dtype=np.float64), plan.W[t0:t1])
            out = np.empty(shape, dtype=np.float32)
            out[:] = vals[:, None, None]
        elif plan.W is None:  # a static source for a monthly variable: repeated
            assert plan.regridder is not None
            out = np.empty(shape, dtype=np.float32)
            out[:] = plan.regridder.tile(t, None)[None]
        else:
            assert plan.regridder is not None
            out = np.empty(shape, dtype=np.float32)
            for m0, m1 in _month_groups(plan.W[t0:t1]):  # daily / 8-day: a month at a time
                Wb = plan.W[t0 + m0 : t0 + m1]
                steps = np.flatnonzero(Wb.sum(axis=0) > 0)
                vals = plan.regridder.tile(t, steps)
                out[m0:m1] = temporal.aggregate(vals, Wb[:, steps])
        if plan.gapfill:
            assert plan.months is not None
            for r in range(0, shape[1], GAPFILL_ROWS):  # bounded temporaries: a band of rows at a time
                band = out[:, r : r + GAPFILL_ROWS]
                out[:, r : r + GAPFILL_ROWS] = temporal.gapfill(band, plan.months[t0:t1], plan.gapfill, plan.max_gap)
        return _finish_values(plan, out, t0, t1)

    return dynamic if plan.dynamic_out else static


def _month_groups(W: np.ndarray, max_steps: int = 32) -> list[tuple[int, int]]:
    """Consecutive target months (rows of ``W``) grouped so that each group needs at most
    ``max_steps`` source steps (or one month): 12 monthly or annual steps at once, daily and
    8-day ones month by month, so a block never holds a year of daily grids."""
    groups: list[tuple[int, int]] = []
    start, needed = 0, 0
    for m in range(W.shape[0]):
        n = int((W[m] > 0).sum())
        if m > start and needed + n > max_steps:
            groups.append((start, m))
            start, needed = m, 0
        needed += n
    groups.append((start, W.shape[0]))
    return groups


def layer_array(
    plan: Plan, target: xr.Dataset, tile: int, mask: Callable[[Tile], np.ndarray] | None = None
) -> xr.DataArray:
    """The layer on the target grid as a lazy dask-backed DataArray (one block per output chunk)."""
    ny, nx = target.sizes["y"], target.sizes["x"]
    coords: dict = {"y": target["y"], "x": target["x"]}
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dims: tuple[str, ...]
    if plan.dynamic_out:
        assert plan.months is not None
        nm = plan.months.size
        tchunk = nm if plan.gapfill else 12
        shape, chunks, dims = (nm, ny, nx), (tchunk, tile, tile), ("time", "y", "x")
        coords["time"] = plan.months
    else:
        shape, chunks, dims = (ny, nx), (tile, tile), ("y", "x")
    dummy = dsa.zeros(shape, chunks=chunks, dtype=np.int8)
    arr = dsa.map_blocks(_block_function(plan, mask), dummy, dtype=np.float32, meta=np.array((), dtype=np.float32))
    attrs: dict = {"units": "1" if plan.categorical else (plan.to_units or "")}
    if plan.categorical:
        codes = sorted(plan.classes)
        attrs["flag_values"] = np.array(codes, dtype=np.int16)
        attrs["flag_meanings"] = " ".join(plan.classes[c] for c in codes)
    if plan.conversion != (1.0, 0.0) or plan.per_month:
        attrs["units_converted_from"] = str(plan.src.attrs.get("units")) if plan.src is not None else ""
    if plan.spec.name in P.BY_NAME:
        attrs["long_name"] = P.BY_NAME[plan.spec.name].long_name
    attrs["source_files"] = "; ".join(str(f) for f in plan.spec.files)
    return xr.DataArray(arr, dims=dims, coords=coords, name=plan.spec.name, attrs=attrs)


# -------------------------------------------------------------------------------- writing
#: Rows of a block gap-filled at a time (the float64 temporaries are months x rows x tile).
GAPFILL_ROWS = 64
TIME_ENCODING = {"units": "days since 1900-01-01", "calendar": "proleptic_gregorian", "dtype": "int32"}


def _write_zarr_var(store: Path, da: xr.DataArray, target: xr.Dataset, tile: int, workers: int | None) -> None:
    ds = formats.write_crs(da.to_dataset(), formats.grid_crs(target, "<target grid>"))
    tchunk = 12 if "time" in da.dims else None
    chunks = ((tchunk,) if tchunk else ()) + (tile, tile)
    enc: dict = {da.name: {"chunks": chunks, "dtype": "float32", "_FillValue": np.float32(np.nan)}}
    if "time" in ds.coords:
        enc["time"] = dict(TIME_ENCODING)
    mode = "a" if (store / "zarr.json").exists() or (store / ".zgroup").exists() else "w"
    if mode == "a":  # coordinates already written (the same grid and months) are not rewritten
        there = [c for c in ("y", "x", "time", formats.GRID_MAPPING) if c in ds.coords and (store / str(c)).exists()]
        ds = ds.drop_vars(there)
        if "time" in there:
            enc.pop("time", None)
    with dask.config.set(scheduler="threads", num_workers=workers):
        ds.to_zarr(store, mode=mode, encoding=enc, consolidated=True)  # type: ignore[call-overload]


def _drop_zarr_var(store: Path, name: str) -> None:
    p = store / name
    if p.is_dir():
        shutil.rmtree(p)
        try:
            import zarr

            zarr.consolidate_metadata(str(store))
        except Exception:  # the store is rebuilt on the next write anyway
            log.debug("could not reconsolidate %s", store)


def _file_digest(path: Path) -> dict:
    p = Path(path)
    if p.is_dir():
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return {"path": str(p), "size": size, "mtime": p.stat().st_mtime, "digest": "size+mtime"}
    size = p.stat().st_size
    if size <= HASH_LIMIT:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        return {"path": str(p), "size": size, "sha256": h.hexdigest(), "digest": "sha256"}
    return {"path": str(p), "size": size, "mtime": p.stat().st_mtime, "digest": "size+mtime"}


def _versions() -> dict:
    out = {"abzflux": __version__}
    for pkg in ("numpy", "xarray", "dask", "zarr", "rasterio", "pyproj", "pint", "h5netcdf", "rioxarray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return out


# ----------------------------------------------------------------------------- directory
@dataclass
class State:
    recipe_sha256: str
    done: dict = field(default_factory=dict)  # "group/name" -> layer summary
    final: list = field(default_factory=list)  # outputs (relative paths) moved into DIR

    def save(self, work: Path) -> None:
        _atomic.write_text(work / STATE, json.dumps(self.__dict__, indent=1, default=str))

    @classmethod
    def load(cls, work: Path) -> State | None:
        p = work / STATE
        if not p.exists():
            return None
        try:
            return cls(**json.loads(p.read_text()))
        except (ValueError, TypeError):
            return None


def output_names(recipe: Recipe) -> list[str]:
    names = [f"{g}.zarr" for g in ("predictors", "zones", "fire") if recipe.group(g)]
    names += [f"{REFERENCES}/{n}.nc" for n in recipe.references]
    return [*names, PROVENANCE, CONFIG]


def _restart(out: Path) -> None:
    """Delete what an earlier prepare wrote in ``out`` (and nothing else)."""
    written: list[str] = []
    prov = out / PROVENANCE
    if prov.exists():
        try:
            written += list(json.loads(prov.read_text()).get("outputs", []))
        except ValueError:
            pass
    st = State.load(out / WORK_DIR)
    if st is not None:
        written += list(st.final)
    for rel in dict.fromkeys(written):
        p = out / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    refs = out / REFERENCES
    if refs.is_dir() and not any(refs.iterdir()):
        refs.rmdir()
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def _check_out(out: Path, recipe: Recipe, restart: bool) -> str:
    """``"fresh"``, ``"resume"`` or ``"complete"``; raises for a directory prepare cannot use."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out exists and is not a directory", expected="a directory to create or resume")
    if not out.exists():
        return "fresh"
    prov = out / PROVENANCE
    st = State.load(out / WORK_DIR)
    old_hash = None
    if st is not None:
        old_hash = st.recipe_sha256
    elif prov.exists():
        try:
            old_hash = json.loads(prov.read_text()).get("recipe_sha256")
        except ValueError:
            old_hash = None
    if old_hash is not None and old_hash != recipe.sha256:
        if not restart:
            raise InputError(
                out,
                f"was prepared from another recipe (sha256 {old_hash[:12]}…, now {recipe.sha256[:12]}…)",
                expected="the same recipe to resume, or --restart to delete what prepare wrote there and start again",
            )
        _restart(out)
        old_hash = None
    elif restart and old_hash is not None:
        _restart(out)
        old_hash = None
    if old_hash is None:
        clash = [n for n in output_names(recipe) if (out / n).exists()]
        if clash:
            raise InputError(
                out / clash[0],
                "exists and was not written by abzflux prepare (no prepare.json or work state names it)",
                expected="a new or empty --out directory; prepare never deletes what it did not write",
            )
        return "fresh"
    if st is None and prov.exists() and all((out / n).exists() for n in output_names(recipe)):
        return "complete"
    return "resume"


# ------------------------------------------------------------------------------------ main
class _BlockProgress(Callback):
    """Reports a local dask computation's finished tasks to a progress callback
    (``progress(done, total)``, :mod:`abzflux.progress`)."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress

    def _posttask(self, key, result, dsk, state, worker_id):
        done = len(state["finished"])
        self.progress(done, done + sum(len(state[k]) for k in ("ready", "waiting", "running")))


def prepare(recipe_path, out, *, restart: bool = False, progress_factory=None) -> dict:
    """Run a recipe into ``out``; returns the provenance record (also ``out/prepare.json``).
    ``progress_factory`` (label -> ``progress(done, total)``, :mod:`abzflux.progress`): progress
    of the layers and of each layer's blocks."""
    recipe = load_recipe(recipe_path)
    out = Path(out)
    target = target_grid(recipe.grid, recipe.path)
    months = temporal.target_months(recipe.years)
    status = _check_out(out, recipe, restart)
    if status == "complete":
        log.info("%s is complete for this recipe: nothing to do", out)
        return json.loads((out / PROVENANCE).read_text())
    work = out / WORK_DIR
    state = State.load(work) if status == "resume" else None
    state = state or State(recipe.sha256)
    for g in ("zones", "fire"):
        need = {"zones": formats.ZONE_VARIABLES, "fire": formats.FIRE_VARIABLES}[g]
        have = recipe.group(g)
        if have and not set(need) <= set(have):
            raise InputError(
                recipe.path,
                f"[{g}] lacks {sorted(set(need) - set(have))}",
                column=g,
                expected=f"all of {list(need)} (docs/formats.md)",
            )
    # every pending layer is opened and checked before anything is written
    plans: dict[str, Plan] = {}
    for group, spec in recipe.layers():
        key = f"{group}/{spec.name}"
        if key in state.done:
            continue
        log.info("checking %s", key)
        plans[key] = plan_layer(group, spec, target, months, recipe.tile)
    created = not out.exists()
    current: tuple[Path, str] | None = None
    n_layers = len(list(recipe.layers()))
    layers_prog = progress_factory("prepare: layers") if progress_factory else None

    def layer_done() -> None:
        if layers_prog is not None:
            layers_prog(sum(f"{g}/{spec.name}" in state.done for g, spec in recipe.layers()), n_layers)

    try:
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        state.save(work)
        for group in ("predictors", "zones", "fire"):
            specs = recipe.group(group)
            if not specs or f"{group}.zarr" in state.final:
                continue
            store = work / f"{group}.zarr"
            if (
                not store.exists()
                and (out / f"{group}.zarr").exists()
                and all(f"{group}/{n}" in state.done for n in specs)
            ):
                state.final.append(f"{group}.zarr")  # killed between the rename and the state update
                state.save(work)
                continue
            order = list(specs)
            if group == "zones":  # land_fraction last: 0 where biome or region is undefined
                order = [n for n in order if n != "land_fraction"] + ["land_fraction"]
            for name in order:
                key = f"{group}/{name}"
                if key in state.done:
                    continue
                plan = plans[key]
                log.info("writing %s (%s)", key, plan.resampling or plan.kind)
                current = (store, name)
                t_layer = time.perf_counter()
                if plan.kind == "vector":
                    from .vector import rasterise_zone

                    da = (
                        rasterise_zone(plan.spec, target).astype(np.float32).chunk({"y": recipe.tile, "x": recipe.tile})
                    )
                    da.name = name
                    keep = ("flag_values", "flag_meanings", "long_name", "units")
                    da.attrs = {k: v for k, v in da.attrs.items() if k in keep}
                    if not plan.categorical:  # in the contract's units (prepare.vector's contract)
                        da.attrs["units"] = plan.to_units or "1"
                    if name == "land_fraction":
                        da = _mask_land(da, store)
                else:
                    mask = _domain_mask(store) if (group == "zones" and name == "land_fraction") else None
                    da = layer_array(plan, target, recipe.tile, mask)
                    if group == "fire":
                        da = _per_land(da, plan.spec, out / "zones.zarr")
                # a layer not in state.done is incomplete: a SIGKILL (no except clause runs) can leave
                # its variable half-written in the store, and writing it again would be refused
                _drop_zarr_var(store, name)
                blocks = progress_factory(f"prepare {key}: blocks") if progress_factory else None
                try:
                    with _BlockProgress(blocks) if blocks is not None else nullcontext():
                        _write_zarr_var(store, da, target, recipe.tile, recipe.workers)
                finally:
                    if blocks is not None:
                        blocks(None, None)
                if group == "predictors":  # the contract's checks, before the layer counts as done
                    formats.read_predictors(store, required=[name])
                current = None
                state.done[key] = {**plan.summary, "seconds": round(time.perf_counter() - t_layer, 2)}
                state.save(work)
                layer_done()
            _check_group(group, store, list(specs))
            _atomic.replace(store, out / f"{group}.zarr")
            state.final.append(f"{group}.zarr")
            state.save(work)
        for name in recipe.references:
            key, rel = f"references/{name}", f"{REFERENCES}/{name}.nc"
            if rel in state.final:
                continue
            plan = plans[key]
            (out / REFERENCES).mkdir(exist_ok=True)
            tmp = work / f"{name}.nc"
            log.info("writing %s", rel)
            _write_reference(plan, target, recipe, tmp)
            formats.read_reference(tmp)
            os.replace(tmp, out / rel)
            state.done[key] = plan.summary
            state.final.append(rel)
            state.save(work)
            layer_done()
        record = _provenance(recipe, state, out)
        record["gaps_on_land"] = gaps_on_land(out)
        _atomic.write_text(out / CONFIG, _config_text(recipe, out))
        _atomic.write_text(out / PROVENANCE, json.dumps(record, indent=1, default=str))
        shutil.rmtree(work)
        if layers_prog is not None:
            layers_prog(None, None)
        return record
    except BaseException:
        if layers_prog is not None:
            layers_prog(None, None)
        if current is not None:
            _drop_zarr_var(*current)
        if not state.done and not state.final:
            shutil.rmtree(work, ignore_errors=True)
            if created and out.exists() and not any(out.iterdir()):
                out.rmdir()
        raise


def _per_land(da: xr.DataArray, spec: LayerSpec, zones: Path) -> xr.DataArray:
    """Fire values per m2 of grid cell divided by the land fraction (``options.per``, FIRE_PER)."""
    per = spec.options.get("per", FIRE_PER_DEFAULT.get(spec.product, "land"))
    if per not in FIRE_PER:
        raise InputError(
            spec.recipe or "<recipe>",
            f"options.per = {per!r}",
            column=f"fire.{spec.name}",
            expected=" or ".join(FIRE_PER),
        )
    if per == "land":
        return da
    if not zones.exists():
        raise InputError(
            spec.recipe or "<recipe>",
            f"options.per = 'cell' (the default of product {spec.product!r}) divides by the land fraction, "
            "but the recipe has no zones",
            column=f"fire.{spec.name}",
            expected="[zones.*] layers, or options.per = 'land' when the values are already per m2 of land",
        )
    lf = xr.open_zarr(zones, consolidated=False)["land_fraction"].data.rechunk(da.data.chunks[-2:])
    land = lf > 0
    arr = dsa.where(land, da.data / dsa.where(land, lf, 1.0), da.data)
    if spec.name == "burned_fraction":
        arr = dsa.minimum(arr, 1.0)
    return da.copy(data=arr.astype(np.float32)).assign_attrs(
        comment="per m2 of land: the product's per-grid-cell values / land_fraction"
    )


def _domain_mask(store: Path) -> Callable[[Tile], np.ndarray] | None:
    """Cells with a biome and a region (from the zones written so far): land elsewhere is 0."""
    names = [n for n in CATEGORICAL_ZONES if (store / n).exists()]
    if not names:
        return None
    ds = xr.open_zarr(store, consolidated=False)

    def mask(t: Tile) -> np.ndarray:
        ok = np.ones(t.shape, dtype=bool)
        for n in names:
            v = ds[n].isel(y=slice(t.y0, t.y1), x=slice(t.x0, t.x1)).values
            ok &= np.isfinite(v)
        return ok

    return mask


def _mask_land(da: xr.DataArray, store: Path) -> xr.DataArray:
    """A rasterised land_fraction with 0 where the zones written so far have no biome or region."""
    names = [n for n in CATEGORICAL_ZONES if (store / n).exists()]
    if not names:
        return da
    ds = xr.open_zarr(store, consolidated=False)
    ok = ds[names[0]].notnull().data
    for n in names[1:]:
        ok = ok & ds[n].notnull().data
    return da.copy(data=dsa.where(ok, da.data, np.float32(0.0)))


def _check_group(group: str, store: Path, names: list[str]) -> None:
    if group == "predictors":
        formats.read_predictors(store, required=names)
    elif group == "zones":
        formats.read_zones(store)
    elif group == "fire":
        formats.read_fire(store)


def _write_reference(plan: Plan, target: xr.Dataset, recipe: Recipe, tmp: Path) -> None:
    spec = plan.spec
    assert plan.src is not None and plan.months is not None
    product = str(spec.options.get("name") or plan.src.attrs.get("product") or spec.name)
    fire_included = bool(spec.options.get("fire_included", plan.src.attrs.get("fire_included", False)))
    if plan.kind == "keep_grid":
        src = plan.src.sel(time=plan.months)
        scale, offset = plan.conversion
        nee = src * scale + offset if (scale, offset) != (1.0, 0.0) else src
        if plan.per_month:
            nee = nee * xr.DataArray(days_in_month(plan.months), dims="time", coords={"time": src["time"]})
        nee = nee.astype(np.float32).rename({"y": "lat", "x": "lon"})
        nee.attrs = {"units": FLUX_UNITS, "long_name": "net ecosystem exchange (positive = source)"}
        ds = nee.to_dataset(name="nee")
    else:
        da = layer_array(plan, target, recipe.tile)
        ds = formats.write_crs(da.to_dataset(name="nee"), formats.grid_crs(target, "<target grid>"))
    ds.attrs = {
        "product": product,
        "fire_included": int(fire_included),
        "source_files": "; ".join(map(str, spec.files)),
    }
    enc = {"time": dict(TIME_ENCODING), "nee": {"dtype": "float32", "_FillValue": np.float32(np.nan)}}
    with dask.config.set(scheduler="threads", num_workers=recipe.workers):
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc)  # type: ignore[call-overload]


def _config_text(recipe: Recipe, out: Path) -> str:
    lines = ["# Written by `abzflux prepare` from " + str(recipe.path.resolve()), "[inputs]"]
    sites = recipe.inputs.get("sites")
    if sites is not None:
        lines.append(f"sites = {json.dumps(str(Path(sites).resolve()))}")
    else:
        lines.append('# sites = "sites.csv"   # add the site table (the recipe has no [inputs] sites)')
    if recipe.predictors:
        lines.append('predictors = "predictors.zarr"')
    if recipe.zones:
        lines.append('zones = "zones.zarr"')
    if recipe.fire:
        lines.append('fire = "fire.zarr"')
    if recipe.references:
        refs = ", ".join(json.dumps(f"{REFERENCES}/{n}.nc") for n in recipe.references)
        lines.append(f"references = [{refs}]")
    if "truth" in recipe.inputs:
        lines.append(f"truth = {json.dumps(str(Path(recipe.inputs['truth']).resolve()))}")
    run = {"years": f"{recipe.years[0]}-{recipe.years[1]}", **recipe.config.get("run", {})}
    for section, keys in {"run": run, **{k: v for k, v in recipe.config.items() if k != "run"}}.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    """A TOML literal for the recipe's ``[config]`` values (strings, numbers, booleans, lists)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def gaps_on_land(out: Path) -> dict:
    """Per predictor, the land cell-months (land_fraction > 0) the written stack leaves NaN (gaps
    no source and no gap filling covered; a run would refuse or lose them). Logged as a warning
    naming the variable, the count and the first month; one chunked pass over the stack."""
    pred, zones = out / "predictors.zarr", out / "zones.zarr"
    if not (pred.exists() and zones.exists()):
        return {}
    ds = xr.open_zarr(pred, consolidated=False)
    land = xr.open_zarr(zones, consolidated=False)["land_fraction"] > 0
    n_land = int(land.sum())
    found: dict = {}
    for v in ds.data_vars:
        if "y" not in ds[v].dims:
            continue
        bad = ds[v].isnull() & land
        per_step = bad.sum(("y", "x")) if "time" in bad.dims else bad.sum()
        counts = np.atleast_1d(np.asarray(per_step.compute(scheduler="threads")))
        total = int(counts.sum())
        if total == 0:
            continue
        first = str(ds["time"].values[int(np.flatnonzero(counts)[0])])[:7] if "time" in bad.dims else "static"
        share = total / (n_land * max(len(counts), 1))
        found[str(v)] = {"land_cell_months": total, "share": round(share, 6), "first": first}
        log.warning(
            "%s: %d land %s (%.2f%%) have no value after gap filling, first in %s; `abzflux validate` "
            "will report them (more source years, another gap-filling rule, or land_fraction 0 there)",
            v, total, "cell-month(s)" if "time" in bad.dims else "cell(s)", 100 * share, first,
        )  # fmt: skip
    return found


def _provenance(recipe: Recipe, state: State, out: Path) -> dict:
    inputs = []
    seen: set[str] = set()
    for _, spec in recipe.layers():
        for f in spec.files:
            if str(f) not in seen:
                seen.add(str(f))
                inputs.append(_file_digest(Path(f)))
    return {
        "recipe": str(recipe.path.resolve()),
        "recipe_sha256": recipe.sha256,
        "recipe_text": recipe.path.read_text(),
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "grid": {
            "crs": recipe.grid.crs,
            "resolution": recipe.grid.resolution,
            "extent": recipe.grid.extent,
            "template": str(recipe.grid.template) if recipe.grid.template else None,
        },
        "years": list(recipe.years),
        "tile": recipe.tile,
        "inputs": inputs,
        "input_digest_rule": f"sha256 for files up to {HASH_LIMIT // 2**20} MiB, size+mtime for larger files and directories",
        "layers": state.done,
        "outputs": [*state.final, CONFIG, PROVENANCE],
    }
