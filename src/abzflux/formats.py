"""Readers and validators for the input contract (docs/formats.md).

Every reader checks a user file against the contract and raises :class:`~abzflux.errors.InputError`
for the first problem it finds, naming the file, the column or variable, the row/site/time step/cell
and what was expected. Gridded files are opened lazily (dask chunks); the validation still looks at
the data values, in as few passes over the data as possible.

Public API
----------
``open_dataset``, ``grid_crs``, ``write_crs``, ``read_site_table``, ``read_predictors``,
``read_zones``, ``read_fire``, ``read_reference``, ``check_same_grid``, ``check_sites_in_grid``,
``cell_index``, ``categories`` and the constant ``FLUXES``.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from . import predictors as _pred
from . import units as units_mod
from .errors import InputError
from .vocab import CF_FLUX_CELL_METHODS, CF_FLUX_UNITS, FLUX_UNITS, FLUXES  # noqa: F401  (FLUXES: re-exported)

__all__ = [
    "LayerPlan",
    "plan_predictors",
    "model_view",
    "FLUXES",
    "SITE_REQUIRED",
    "open_dataset",
    "grid_crs",
    "write_crs",
    "read_site_table",
    "read_predictors",
    "read_zones",
    "read_fire",
    "read_reference",
    "read_truth",
    "parse_units",
    "check_same_grid",
    "check_sites_in_grid",
    "cell_index",
    "categories",
    "canonical_order",
    "open_grid",
    "axis_unit_m",
    "is_equal_area",
    "spacing_area_m2",
    "check_site_ids",
]


SITE_REQUIRED = ("site_id", "lat", "lon", "year", "month")
GRID_MAPPING = "spatial_ref"

#: 1 µmol CO2 m-2 s-1 sustained for a mean month, in g C m-2 month-1 (12.011e-6 * 86400 * 30.44).
UMOL_TO_GC_MONTH = 31.5
#: A flux column whose largest summer |value| is below this looks like µmol m-2 s-1.
UMOL_SUSPECT_MAX = 15.0
#: Minimum number of non-NaN values before the µmol heuristic is applied.
UMOL_MIN_VALUES = 12
#: Largest plausible |monthly flux| in g C m-2 month-1.
MAX_ABS_FLUX = 1500.0
#: Tolerance for "non-negative" GPP and Reco.
NEG_TOL = -1e-9
#: Tolerance (degrees) for one site having one location.
LOCATION_TOL = 1e-6
SUMMER_MONTHS = (6, 7, 8)

ZONE_VARIABLES = ("land_fraction", "biome", "region", "permafrost")
#: Vegetation codes a stack or site table may hold: the paper's classes and the recoded ones.
VEG_VOCABULARY = tuple(sorted(set(_pred.VEG_CLASSES) | set(_pred.VEG_RECODE)))
FIRE_VARIABLES = ("fire_emissions", "burned_fraction")

_MAX_LISTED = 5
log = logging.getLogger(__name__)
_IN_MEMORY = "<in-memory dataset>"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _source(obj) -> str:
    """File name an xarray object came from (set by :func:`open_dataset`)."""
    enc = getattr(obj, "encoding", None) or {}
    return str(enc.get("source") or _IN_MEMORY)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(v) -> str:
    """Format a number for messages."""
    if isinstance(v, (float, np.floating)):
        if math.isnan(v) or math.isinf(v):
            return str(float(v))
        return f"{float(v):.6g}"
    return str(v)


def _listing(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = items[:_MAX_LISTED]
    text = "; ".join(shown)
    if total > len(shown):
        text += f"; ... and {total - len(shown)} more"
    return text


def _is_numeric_dtype(dtype) -> bool:
    return bool(np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_))


def _compute(lazy: dict, file: str) -> dict:
    """Compute a dict of (possibly dask-backed) xarray objects in one pass."""
    if not lazy:
        return {}
    try:
        import dask

        (out,) = dask.compute(lazy)
    except InputError:
        raise
    except Exception as exc:  # truncated chunk, decompression error, ...
        raise InputError(
            file,
            f"the data values cannot be read ({_short(exc)})",
            expected="a complete, uncorrupted NetCDF file or Zarr store",
        ) from exc
    return {k: (v.values if hasattr(v, "values") else v) for k, v in out.items()}


def _load(da: xr.DataArray, file: str) -> np.ndarray:
    return _compute({"v": da}, file)["v"]


# --------------------------------------------------------------------------------------------
# opening files and CRS
# --------------------------------------------------------------------------------------------


def open_dataset(path) -> xr.Dataset:
    """Open a NetCDF file (``.nc``) or a Zarr store (directory / ``.zarr``) lazily.

    NetCDF is read with the h5netcdf engine, falling back to netCDF4 (NetCDF-3 files, ...).
    Raises :class:`InputError` for a missing path or a file that cannot be read (truncated,
    corrupt, not NetCDF/Zarr). The file name is kept in ``ds.encoding["source"]``.
    """
    file = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError(
            file,
            "file not found",
            expected="an existing NetCDF file (.nc) or Zarr store (.zarr directory)",
        )
    if p.is_dir() or p.suffix.lower() == ".zarr":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # consolidated-metadata and unrecognised-object notes
                ds = xr.open_dataset(p, engine="zarr", chunks={}, consolidated=None)
        except Exception as exc:
            raise InputError(
                file,
                f"cannot be read as a Zarr store ({_short(exc)})",
                column=_broken_zarr_metadata(p),
                expected="a Zarr store written with xarray (Dataset.to_zarr)",
            ) from exc
        if p.is_dir():  # an array whose metadata was lost would otherwise just be "missing"
            meta = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
            broken = sorted(
                c.name
                for c in p.iterdir()
                if c.is_dir() and not c.name.startswith(".") and not any((c / m).exists() for m in meta)
            )
            if broken:
                raise InputError(
                    file,
                    "the Zarr store is incomplete: the array directory has no metadata (zarr.json or .zarray)",
                    column=", ".join(broken),
                    expected="a complete Zarr store (copy it again from its source)",
                )
    else:
        problems = []
        ds = None
        for engine in NETCDF_ENGINES:
            try:
                ds = xr.open_dataset(p, engine=engine, chunks={})
                break
            except Exception as exc:
                problems.append(f"{engine}: {_short(exc, 160)}")
        if ds is None:
            raise InputError(
                file,
                "cannot be read as NetCDF: the file is truncated, corrupt or not NetCDF (" + " | ".join(problems) + ")",
                expected="a complete NetCDF-4/HDF5 or NetCDF-3 file, or a Zarr store",
            )
    assert ds is not None  # the loop either opened the file or raised
    ds = canonical_order(ds)
    ds.encoding["source"] = file
    return ds


#: NetCDF engines tried in turn: h5netcdf (NetCDF-4/HDF5), netCDF4 (both), scipy (NetCDF-3).
NETCDF_ENGINES = ("h5netcdf", "netcdf4", "scipy")
#: The grid dimension pairs, in their canonical (row, column) order.
GRID_DIMS = (("y", "x"), ("lat", "lon"))


def canonical_order(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every variable on a grid transposed to the canonical order: its other
    dimensions first (``time`` leading), then ``(y, x)`` (or ``(lat, lon)``).

    The contract allows any order of a variable's dimensions (``(time, x, y)``, ``(x, y)``, ...);
    everything downstream indexes by position, so every reader applies this once, at opening
    (transposing is lazy: no data are read)."""
    out = {}
    for name, var in ds.variables.items():
        for pair in GRID_DIMS:
            if set(pair) <= set(var.dims):
                rest = [d for d in var.dims if d not in pair]
                rest.sort(key=lambda d: d != "time")  # stable: only moves time first
                order = tuple(rest) + pair
                if order != var.dims:
                    out[name] = var.transpose(*order)
                break
    if not out:
        return ds
    encoding = dict(ds.encoding)
    ds = ds.copy()
    for name, var in out.items():
        if name in ds.coords:
            ds = ds.assign_coords({name: var})
        else:
            ds[name] = var
    ds.encoding.update(encoding)
    return ds


def open_grid(path, chunks=None) -> xr.Dataset:
    """Re-open an input that a reader validated already (NetCDF of any flavour or Zarr), as the
    readers see it: dimensions in canonical order (:func:`canonical_order`) and ``time`` as
    datetime64 (a ``noleap`` or other cftime calendar converted). ``chunks=None`` opens it
    without dask (tile reads go straight to the file), as the upscaling workers need."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".zarr":
        ds = xr.open_dataset(p, engine="zarr", chunks=chunks, consolidated=False)
    else:
        ds = None
        for i, engine in enumerate(NETCDF_ENGINES):
            try:
                ds = xr.open_dataset(p, engine=engine, chunks=chunks)
                break
            except Exception:
                if i == len(NETCDF_ENGINES) - 1:
                    raise
    assert ds is not None  # the loop either opened the file or raised
    ds = canonical_order(ds)
    if "time" in ds.coords:
        ds = _check_time(ds, str(path))
    ds.encoding["source"] = str(path)
    return ds


def _broken_zarr_metadata(store: Path) -> str | None:
    """Name of the first array (or "." for the group) whose Zarr metadata is not valid JSON."""
    import json

    if not store.is_dir():
        return None
    for d in [store] + sorted(c for c in store.iterdir() if c.is_dir()):
        for m in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            try:
                if (d / m).exists():
                    json.loads((d / m).read_bytes())
            except (ValueError, OSError):
                return "." if d == store else d.name
    return None


def _open(path) -> tuple[xr.Dataset, str]:
    if isinstance(path, xr.Dataset):
        return path, _source(path)
    return open_dataset(path), str(path)


def _grid_mapping_name(ds: xr.Dataset) -> str | None:
    if GRID_MAPPING in ds.variables:
        return GRID_MAPPING
    for var in ds.data_vars.values():
        gm = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
        if isinstance(gm, str) and gm.strip():
            name = gm.split(":")[0].split()[0].strip()
            if name in ds.variables:
                return name
    return None


_CRS_EXPECTED = (
    "a `spatial_ref` grid-mapping variable with a `crs_wkt` (or `spatial_ref`) attribute, "
    "as rioxarray writes it (abzflux.formats.write_crs does the same)"
)


def grid_crs(ds: xr.Dataset, file) -> pyproj.CRS:
    """CRS of a gridded dataset, from its CF grid-mapping variable ``spatial_ref``.

    The WKT is taken from the ``crs_wkt`` or ``spatial_ref`` attribute (rioxarray/GDAL), else from
    the CF grid-mapping attributes. A grid-mapping variable with another name is found through
    the data variables' ``grid_mapping`` attribute.
    """
    file = str(file)
    name = _grid_mapping_name(ds)
    if name is None:
        raise InputError(
            file,
            "no CRS",
            column=GRID_MAPPING,
            expected=_CRS_EXPECTED,
        )
    attrs = dict(ds[name].attrs)
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    try:
        if isinstance(wkt, str) and wkt.strip():
            return pyproj.CRS.from_user_input(wkt)
        if "grid_mapping_name" in attrs:
            return pyproj.CRS.from_cf(attrs)
    except pyproj.exceptions.CRSError as exc:
        raise InputError(
            file,
            f"the CRS in grid-mapping variable `{name}` cannot be parsed ({_short(exc)})",
            column=name,
            expected="a valid WKT in the `crs_wkt` attribute",
        ) from exc
    raise InputError(
        file,
        f"no CRS: grid-mapping variable `{name}` has no `crs_wkt`, `spatial_ref` or CF grid-mapping attributes",
        column=name,
        expected=_CRS_EXPECTED,
    )


#: The time-bounds coordinate of monthly outputs (CF 7.1 cell boundaries).
TIME_BOUNDS = "time_bnds"
#: What a monthly flux map's ``long_name`` adds: the carbon and the calendar-month sum (the CF
#: ``units`` "g m-2" cannot name the carbon; docs/formats.md "CF metadata of the outputs").
CARBON_SUFFIX = ": carbon mass per unit area (g C m-2) summed over the calendar month"


def flux_attrs(long_name: str) -> dict:
    """The CF attributes of a monthly flux map (values in the paper's g C m-2 month-1): an amount
    per unit area (``units`` g m-2) summed over each time cell, which the time bounds make the
    calendar month (``cell_methods`` time: sum); the paper's units in ``carbon_units``."""
    return {
        "units": CF_FLUX_UNITS,
        "cell_methods": CF_FLUX_CELL_METHODS,
        "carbon_units": FLUX_UNITS,
        "long_name": long_name + CARBON_SUFFIX,
    }


def month_bounds(times) -> xr.Variable:
    """CF time bounds of monthly steps: the calendar month holding each time stamp, [first day,
    first day of the next month), whatever day of the month the stamp itself falls on."""
    start = pd.DatetimeIndex(times).to_period("M").to_timestamp()
    end = start + pd.offsets.MonthBegin(1)
    return xr.Variable(("time", "bnds"), np.stack([start.values, end.values], axis=1))


def with_month_bounds(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with CF time attributes and the calendar-month bounds coordinate :data:`TIME_BOUNDS`."""
    out = ds.assign_coords({TIME_BOUNDS: month_bounds(ds.time.values)})
    out.time.attrs.update(standard_name="time", long_name="time", axis="T", bounds=TIME_BOUNDS)
    return out


def consolidate(store) -> None:
    """Write the consolidated metadata of a complete Zarr store (one read opens it, and
    ``xr.open_zarr`` does not warn). Called once a store is complete, before it is renamed into
    place; a store written to afterwards would need it again."""
    import zarr

    with warnings.catch_warnings():
        # zarr-python's note that consolidated metadata is not (yet) in the Zarr v3 specification:
        # it is what xarray and zarr-python read first.
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(store))


def write_crs(ds: xr.Dataset, crs) -> xr.Dataset:
    """Return a copy of ``ds`` with a CF/rioxarray-style ``spatial_ref`` grid-mapping coordinate.

    ``crs`` is anything :meth:`pyproj.CRS.from_user_input` understands ("EPSG:6931", a WKT, a
    CRS). Every data variable with both ``y`` and ``x`` dimensions gets
    ``grid_mapping="spatial_ref"``; ``x``/``y`` get CF projection-coordinate attributes if they
    have none.
    """
    crs = pyproj.CRS.from_user_input(crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cf = crs.to_cf()
    attrs = {k: v for k, v in cf.items() if v is not None}
    wkt = attrs.get("crs_wkt") or crs.to_wkt()
    attrs["crs_wkt"] = wkt
    attrs["spatial_ref"] = wkt
    attrs["long_name"] = "coordinate reference system"  # CF checkers want a name on every variable
    out = ds.copy()
    if GRID_MAPPING in out.variables:
        out = out.drop_vars(GRID_MAPPING)
    out = out.assign_coords({GRID_MAPPING: xr.Variable((), np.int32(0), attrs)})
    for name in list(out.data_vars):
        da = out[name]
        if "y" in da.dims and "x" in da.dims:
            da = da.assign_attrs(grid_mapping=GRID_MAPPING)
            da.encoding.pop("grid_mapping", None)
            out[name] = da
    if crs.is_projected:
        for dim, std in (("x", "projection_x_coordinate"), ("y", "projection_y_coordinate")):
            if dim in out.coords and not out[dim].attrs:
                out = out.assign_coords({dim: out[dim].assign_attrs(standard_name=std, units="m", axis=dim.upper())})
    return out


# --------------------------------------------------------------------------------------------
# cell areas
# --------------------------------------------------------------------------------------------

#: Projection methods (pyproj's coordinate-operation method names, lower case) whose projected
#: areas are true areas on the ellipsoid: |dx * dy| is then every cell's area.
EQUAL_AREA_METHODS = (
    "equal area",
    "mollweide",
    "sinusoidal",
    "equal earth",
    "goode homolosine",
    "eckert iv",
    "eckert vi",
)
#: A given ``cell_area`` must lie within this factor of |dx * dy| (in m2): a non-equal-area
#: projection's scale error stays well inside it over a continent; a unit error (km2 vs m2, a
#: km grid with m2 areas, hectares) is far outside it.
CELL_AREA_FACTOR = 4.0
#: Surface area of the Earth (m2): no grid's land area can exceed it.
EARTH_AREA_M2 = 5.1007e14


def axis_unit_m(crs: pyproj.CRS) -> float:
    """Metres per unit of the CRS's x/y axes (1 for metres, 1000 for kilometres)."""
    info = crs.axis_info
    f = info[0].unit_conversion_factor if info else None
    return float(f) if f else 1.0


def is_equal_area(crs: pyproj.CRS) -> bool:
    """True when ``crs`` is an equal-area projection (LAEA, Albers, EASE-Grid 2.0, Mollweide, ...),
    judged by its coordinate operation's method name."""
    op = crs.coordinate_operation
    name = (op.method_name if op is not None else "").lower()
    return any(m in name for m in EQUAL_AREA_METHODS)


def spacing_area_m2(ds: xr.Dataset, crs: pyproj.CRS | None = None, file=None) -> float:
    """|dx * dy| of a regular ``y``/``x`` grid in m2: the spacing in the CRS's axis units
    converted with :func:`axis_unit_m` (a grid in km has cells of dx * dy * 1e6 m2)."""
    if crs is None:
        crs = grid_crs(ds, file if file is not None else _source(ds))
    dy = float(ds["y"].values[1] - ds["y"].values[0])
    dx = float(ds["x"].values[1] - ds["x"].values[0])
    return abs(dx * dy) * axis_unit_m(crs) ** 2


def _crs_label(crs: pyproj.CRS) -> str:
    op = crs.coordinate_operation
    auth = crs.to_authority()
    return (
        f"{crs.name}"
        + (f" ({':'.join(auth)})" if auth else "")
        + (f", method {op.method_name}" if op is not None else "")
    )


# --------------------------------------------------------------------------------------------
# grid checks
# --------------------------------------------------------------------------------------------


def _check_axis(ds: xr.Dataset, name: str, file: str) -> float:
    """Check a 1-D, numeric, strictly monotonic, regular coordinate; return its (signed) step."""
    if name not in ds.dims:
        raise InputError(
            file,
            f"dimension `{name}` is missing (dimensions are {tuple(ds.dims)})",
            column=name,
            expected=f"a `{name}` dimension with 1-D cell-centre coordinates",
        )
    if name not in ds.coords:
        raise InputError(
            file,
            f"dimension `{name}` has no coordinate values",
            column=name,
            expected=f"a 1-D `{name}` coordinate (cell centres)",
        )
    coord = ds[name]
    if coord.dims != (name,):
        raise InputError(
            file,
            f"coordinate `{name}` has dimensions {coord.dims}",
            column=name,
            expected=f"a 1-D coordinate on dimension `{name}`",
        )
    vals = np.asarray(coord.values)
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.bool_):
        raise InputError(
            file,
            f"coordinate `{name}` is not numeric (dtype {vals.dtype})",
            column=name,
            expected="numeric cell-centre coordinates",
        )
    if vals.size < 2:
        raise InputError(
            file,
            f"coordinate `{name}` has {vals.size} value(s); the cell size cannot be determined",
            column=name,
            expected="at least 2 cells along each grid dimension",
        )
    v = vals.astype("float64")
    if not np.all(np.isfinite(v)):
        i = int(np.flatnonzero(~np.isfinite(v))[0])
        raise InputError(
            file,
            f"coordinate `{name}` has a non-finite value",
            column=name,
            where=f"{name}[{i}]",
            expected="finite cell-centre coordinates",
        )
    d = np.diff(v)
    sign = 1.0 if d[0] > 0 else -1.0
    bad = ~(d * sign > 0)
    if d[0] == 0 or bad.any():
        i = 0 if d[0] == 0 else int(np.flatnonzero(bad)[0])
        raise InputError(
            file,
            f"coordinate `{name}` is not strictly monotonic: {name}[{i}] = {_fmt(v[i])}, "
            f"{name}[{i + 1}] = {_fmt(v[i + 1])}",
            column=name,
            where=f"{name}[{i}]..{name}[{i + 1}]",
            expected="strictly increasing or strictly decreasing cell centres",
        )
    step = d[0]
    eps = np.finfo(vals.dtype).eps if np.issubdtype(vals.dtype, np.floating) else 0.0
    tol = 1e-6 * abs(step) + 4 * eps * float(np.max(np.abs(v)))
    irregular = np.abs(d - step) > tol
    if irregular.any():
        i = int(np.flatnonzero(irregular)[0])
        raise InputError(
            file,
            f"coordinate `{name}` is not regularly spaced: spacing {_fmt(d[i])} between "
            f"{name}[{i}] and {name}[{i + 1}], but {_fmt(step)} between {name}[0] and {name}[1]",
            column=name,
            where=f"{name}[{i}] = {_fmt(v[i])}",
            expected="a regular grid (constant spacing)",
        )
    return float(step)


def _time_parts(values) -> dict[str, np.ndarray] | None:
    """Year, month, day, ... of a decoded time coordinate (datetime64 or cftime)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        idx = pd.DatetimeIndex(values)
        if idx.isna().any():
            return {"nat": np.asarray(idx.isna())}
        return {
            "year": np.asarray(idx.year),
            "month": np.asarray(idx.month),
            "day": np.asarray(idx.day),
            "sub": np.asarray(
                (idx.hour != 0) | (idx.minute != 0) | (idx.second != 0) | (idx.microsecond != 0) | (idx.nanosecond != 0)
            ),
        }
    if values.dtype == object and values.size and all(hasattr(t, "year") for t in values.ravel()):
        return {
            "year": np.array([t.year for t in values]),
            "month": np.array([t.month for t in values]),
            "day": np.array([t.day for t in values]),
            "sub": np.array([bool(t.hour or t.minute or t.second or getattr(t, "microsecond", 0)) for t in values]),
        }
    return None


def _check_nan_steps(ds, allnan, name: str, file, expected: str) -> None:
    """Raise naming the time steps at which variable ``name`` is NaN everywhere (``allnan``:
    one boolean per time step)."""
    if allnan.any():
        steps = [_time_label(ds, int(i)) for i in np.flatnonzero(allnan)]
        raise InputError(
            file,
            f"all values are NaN in {len(steps)} time step(s)",
            column=name,
            where=_listing(steps),
            expected=expected,
        )


def _time_label(ds: xr.Dataset, i: int) -> str:
    t = ds["time"].values[i]
    if isinstance(t, np.datetime64):
        text = str(pd.Timestamp(t))
        return f"time step {i} ({text[:10] if text.endswith('00:00:00') else text})"
    return f"time step {i} ({t})"


def _check_time(ds: xr.Dataset, file: str) -> xr.Dataset:
    """Monthly, first-of-month, strictly increasing ``time``; cftime is converted to datetime64."""
    if "time" not in ds.dims and "time" not in ds.coords:
        return ds
    if "time" not in ds.coords:  # e.g. a Zarr store that lost its `time` array
        raise InputError(
            file,
            "dimension `time` has no coordinate values (no `time` variable)",
            column="time",
            expected="a 1-D `time` coordinate of monthly dates",
        )
    t = ds["time"]
    if t.dims != ("time",):
        raise InputError(
            file,
            f"coordinate `time` has dimensions {t.dims}",
            column="time",
            expected="a 1-D `time` coordinate",
        )
    if t.size == 0:
        raise InputError(file, "`time` has no steps", column="time", expected="at least one month")
    parts = _time_parts(t.values)
    if parts is None:
        raise InputError(
            file,
            f"`time` is not decoded as dates (dtype {t.dtype}; missing or invalid CF `units`?)",
            column="time",
            expected="dates, e.g. units 'days since 2000-01-01' with a CF calendar",
        )
    if "nat" in parts:
        i = int(np.flatnonzero(parts["nat"])[0])
        raise InputError(
            file,
            "`time` has a missing (NaT) value",
            column="time",
            where=f"time step {i}",
            expected="monthly first-of-month timestamps",
        )
    not_first = (parts["day"] != 1) | parts["sub"]
    if not_first.any():
        i = int(np.flatnonzero(not_first)[0])
        raise InputError(
            file,
            "`time` is not monthly first-of-month timestamps",
            column="time",
            where=_time_label(ds, i),
            expected="monthly time steps on the first day of each month at 00:00 (e.g. 2015-07-01)",
        )
    ordinal = parts["year"].astype(np.int64) * 12 + parts["month"].astype(np.int64) - 1
    d = np.diff(ordinal)
    if (d <= 0).any():
        i = int(np.flatnonzero(d <= 0)[0]) + 1
        what = "a duplicate month" if d[i - 1] == 0 else "not strictly increasing"
        raise InputError(
            file,
            f"`time` is {what}",
            column="time",
            where=f"{_time_label(ds, i)} after {_time_label(ds, i - 1)}",
            expected="strictly increasing monthly time steps without duplicates",
        )
    if not np.issubdtype(t.dtype, np.datetime64):
        new = (
            pd.to_datetime(pd.DataFrame({"year": parts["year"], "month": parts["month"], "day": 1}))
            .to_numpy()
            .astype("datetime64[ns]")
        )
        ds = ds.assign_coords(time=xr.Variable("time", new, t.attrs))
    return ds


def _check_grid(ds: xr.Dataset, file: str) -> tuple[xr.Dataset, pyproj.CRS]:
    """y/x axes, projected CRS, monthly time (if present). Returns the dataset (spatial_ref as a
    coordinate, time normalised) and its CRS."""
    _check_axis(ds, "y", file)
    _check_axis(ds, "x", file)
    crs = grid_crs(ds, file)
    if crs.is_geographic:
        raise InputError(
            file,
            f"the grid CRS is geographic ({crs.name}) but the grid has `y`/`x` dimensions",
            column=GRID_MAPPING,
            expected="a projected equal-area CRS with x/y in metres (e.g. EPSG:6931)",
        )
    name = _grid_mapping_name(ds)
    if name in ds.data_vars:
        ds = ds.set_coords(name)
    ds = _check_time(ds, file)
    return ds, crs


def _check_dims(ds: xr.Dataset, name: str, dims: tuple[str, ...] | list, file: str) -> xr.Dataset:
    """Variable ``name`` must have exactly one of the allowed dimension sets; transpose it to the
    canonical order. ``dims`` is one tuple or a list of alternatives."""
    options = [dims] if isinstance(dims, tuple) else list(dims)
    da = ds[name]
    for opt in options:
        if set(da.dims) == set(opt) and len(da.dims) == len(opt):
            if da.dims != opt:
                ds = ds.assign({name: da.transpose(*opt)})
            break
    else:
        wanted = " or ".join(str(o) for o in options)
        extra = ""
        if da.dims == ("time",):
            extra = " (a time series is not broadcast to the grid; write it as (time, y, x))"
        raise InputError(
            file,
            f"variable has dimensions {da.dims}{extra}",
            column=name,
            expected=f"dimensions {wanted}",
        )
    if not _is_numeric_dtype(da.dtype):
        raise InputError(
            file,
            f"variable is not numeric (dtype {da.dtype})",
            column=name,
            expected="numeric values",
        )
    return ds


def _missing_variables(ds: xr.Dataset, names: Iterable[str], file: str, what: str) -> None:
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        present = ", ".join(sorted(str(v) for v in ds.data_vars)) or "none"
        raise InputError(
            file,
            f"missing required variable(s): {', '.join(missing)} (present: {present})",
            column=", ".join(missing),
            expected=f"the {what} variables {', '.join(names)}",
        )


def _cell_description(ds: xr.Dataset, da: xr.DataArray, index: tuple[int, ...]) -> str:
    parts = []
    for dim, i in zip(da.dims, index):
        if dim in ds.coords:
            val = ds[dim].values[i]
            if isinstance(val, np.datetime64):
                val = str(pd.Timestamp(val))[:10]
            else:
                val = _fmt(val)
            parts.append(f"{dim}={val}")
        else:
            parts.append(f"{dim}[{i}]")
    idx = ", ".join(f"{d}={i}" for d, i in zip(da.dims, index))
    return f"cell ({', '.join(parts)}; index {idx})"


class _Range:
    """A lazy value-range check of one variable."""

    def __init__(self, name, lo=None, hi=None, lo_open=False, text=""):
        self.name, self.lo, self.hi, self.lo_open, self.text = name, lo, hi, lo_open, text

    def bad(self, da: xr.DataArray) -> xr.DataArray:
        ok = np.isfinite(da)
        if self.lo is not None:
            ok = ok & ((da > self.lo) if self.lo_open else (da >= self.lo))
        if self.hi is not None:
            ok = ok & (da <= self.hi)
        return da.notnull() & ~ok


def _check_ranges(ds: xr.Dataset, checks: list[_Range], file: str, lazy: dict | None = None) -> dict:
    """Run the range checks (plus any extra lazy reductions in ``lazy``) in one compute."""
    lazy = dict(lazy or {})
    for c in checks:
        lazy[f"range:{c.name}"] = c.bad(ds[c.name]).sum()
    res = _compute(lazy, file)
    for c in checks:
        n = int(res[f"range:{c.name}"])
        if n:
            da = ds[c.name]
            mask = _load(c.bad(da), file)
            first = tuple(int(i) for i in np.argwhere(mask)[0])
            value = _load(da[first], file)
            raise InputError(
                file,
                f"{n} value(s) out of range (first: {_fmt(value.item())})",
                column=c.name,
                where=_cell_description(ds, da, first),
                expected=c.text,
            )
    return res


def _check_codes(ds: xr.Dataset, name: str, codes: Iterable[int], res: dict, file: str) -> None:
    n = int(res[f"codes:{name}"])
    if n:
        da = ds[name]
        mask = _load(da.notnull() & ~da.isin(list(codes)), file)
        first = tuple(int(i) for i in np.argwhere(mask)[0])
        value = _load(da[first], file)
        raise InputError(
            file,
            f"{n} cell(s) hold codes not listed in flag_values (first: {_fmt(value.item())})",
            column=name,
            where=_cell_description(ds, da, first),
            expected=f"codes among flag_values {sorted(int(c) for c in codes)} or NaN",
        )


def _lazy_codes(ds: xr.Dataset, name: str, codes: Iterable[int]) -> xr.DataArray:
    da = ds[name]
    return (da.notnull() & ~da.isin(list(codes))).sum()


def _finish(ds: xr.Dataset, names: list[str], file: str) -> xr.Dataset:
    out = ds[list(names)]
    out.attrs = dict(ds.attrs)
    out.encoding["source"] = file
    return out


# --------------------------------------------------------------------------------------------
# units attributes
# --------------------------------------------------------------------------------------------

#: Spellings of one unit symbol, mapped to a canonical symbol (or to several: "gC" is g and C).
_UNIT_ALIASES = {
    "gc": ("g", "c"),
    "kgc": ("kg", "c"),
    "mgc": ("mg", "c"),
    "tc": ("t", "c"),
    "mon": ("month",),
    "months": ("month",),
    "mo": ("month",),
    "d": ("day",),
    "days": ("day",),
    "yr": ("year",),
    "a": ("year",),
    "years": ("year",),
    "s": ("s",),
    "sec": ("s",),
    "°c": ("degc",),
    "degc": ("degc",),
    "deg_c": ("degc",),
    "celsius": ("degc",),
    "degrees_celsius": ("degc",),
    "degree_celsius": ("degc",),
    "c°": ("degc",),
    "k": ("k",),
    "kelvin": ("k",),
    "degk": ("k",),
    "percent": ("%",),
    "pct": ("%",),
    "ppmv": ("ppm",),
    "1": (),
    "-": (),
    "dimensionless": (),
    "unitless": (),
    "none": (),
    "fraction": (),
    "": (),
}
_UNIT_TOKEN = re.compile(r"^([a-z%°_µ]+?)(?:\^|\*\*)?(-?\d+)?$")


def parse_units(text: str) -> dict[str, int] | None:
    """``{symbol: exponent}`` of a units string such as "g C m-2 month-1", "gC/m2/month" or
    "m**3 m**-3"; None when a part is not understood. Dimensionless spellings give ``{}``."""
    t = str(text).strip().lower().replace("μ", "µ")
    t = t.replace("degrees c", "degc").replace("deg c", "degc").replace("° c", "°c")
    out: dict[str, int] = {}
    for k, chunk in enumerate(t.split("/")):
        sign = 1 if k == 0 else -1
        for tok in (x for x in re.split(r"[\s.·*]", chunk.replace("**", "^")) if x):
            if tok == "1":
                continue
            m = _UNIT_TOKEN.match(tok)
            if not m:
                return None
            sym, exp = m.group(1), int(m.group(2) or 1)
            for s in _UNIT_ALIASES.get(sym, (sym,)):
                out[s] = out.get(s, 0) + sign * exp
    return {k: v for k, v in out.items() if v != 0}


def _check_units(ds: xr.Dataset, name: str, accepted: tuple[str, ...], file: str) -> None:
    """A ``units`` attribute, where present, must mean one of the accepted units: a flux in
    g C m-2 d-1 or kg C m-2 month-1, or a temperature in K where degC is meant, would
    otherwise give a silently wrong number. A missing attribute is allowed (the contract's
    units are assumed)."""
    u = ds[name].attrs.get("units")
    if u is None:
        return
    want = [parse_units(a) for a in accepted]
    got = parse_units(u) if isinstance(u, str) else None
    if FLUX_UNITS in accepted and _is_cf_monthly_flux(ds[name]):
        return  # abzflux's own outputs (§6): the same numbers, stated the CF way
    if got is None or got not in want:
        raise InputError(
            file,
            f"units attribute is {u!r}",
            column=name,
            expected=f"units {' or '.join(repr(a) for a in accepted)} (convert the values and the attribute, "
            "or remove a wrong attribute)",
        )


ACCEPTED_FLUX_UNITS = (FLUX_UNITS,)


def _is_cf_monthly_flux(da: xr.DataArray) -> bool:
    """A flux written as abzflux writes its maps (§6): ``units`` g m-2 summed over each time cell."""
    u, cm = da.attrs.get("units"), str(da.attrs.get("cell_methods", ""))
    return isinstance(u, str) and parse_units(u) == parse_units(CF_FLUX_UNITS) and CF_FLUX_CELL_METHODS in cm


# --------------------------------------------------------------------------------------------
# categorical variables
# --------------------------------------------------------------------------------------------


def categories(da: xr.DataArray, file=None) -> dict[int, str]:
    """``{code: name}`` from the CF ``flag_values`` / ``flag_meanings`` attributes of ``da``.

    ``file`` (optional) names the file in errors; by default the DataArray's encoding source.
    """
    file = str(file) if file is not None else _source(da)
    name = da.name
    fv = da.attrs.get("flag_values")
    fm = da.attrs.get("flag_meanings")
    expected = (
        "integer codes with CF attributes flag_values (e.g. [1, 2]) and flag_meanings "
        "(space-separated names, one per value, e.g. 'boreal tundra')"
    )
    if fv is None or fm is None:
        lacking = " and ".join(a for a, v in (("flag_values", fv), ("flag_meanings", fm)) if v is None)
        raise InputError(file, f"categorical variable lacks {lacking}", column=name, expected=expected)
    if isinstance(fv, str):
        try:
            values = [float(t) for t in re.split(r"[,\s]+", fv.strip()) if t]
        except ValueError:
            raise InputError(file, f"flag_values {fv!r} are not numbers", column=name, expected=expected) from None
    else:
        values = [float(v) for v in np.atleast_1d(np.asarray(fv)).ravel()]
    if isinstance(fm, str):
        meanings = fm.split()
    else:
        meanings = [str(m) for m in np.atleast_1d(np.asarray(fm)).ravel()]
    if not values or len(values) != len(meanings):
        raise InputError(
            file,
            f"flag_values has {len(values)} value(s) but flag_meanings has {len(meanings)} name(s)",
            column=name,
            expected=expected,
        )
    if any(not math.isfinite(v) or v != round(v) for v in values):
        raise InputError(file, f"flag_values {values} are not integers", column=name, expected=expected)
    codes = [int(round(v)) for v in values]
    if len(set(codes)) != len(codes):
        raise InputError(file, f"flag_values {codes} has duplicates", column=name, expected=expected)
    return dict(zip(codes, meanings))


# --------------------------------------------------------------------------------------------
# gridded readers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    """How one predictor's model layer is made from its stack variable (docs/formats.md §2):
    ``layout`` is the stored shape, "monthly" ``(time, y, x)``, "annual" ``(<year dim>, y, x)``
    (one layer per year, repeated over the months of its year), "grid" ``(y, x)`` (repeated over
    every month when ``time_varying``, else a static predictor) or "series" ``(time,)``
    (broadcast over the grid); values are converted to the contract units as
    ``scale * value + offset``."""

    name: str
    source: str
    layout: str
    time_varying: bool
    scale: float = 1.0
    offset: float = 0.0
    year_dim: str | None = None
    year_index: tuple[int, ...] = ()  # annual: the layer's step of each stack time step
    units: str | None = None  # the contract units (set when the values are converted)

    def convert(self, a):
        """Values (numpy or xarray) in the contract units."""
        if self.scale == 1.0 and self.offset == 0.0:
            return a
        return a * self.scale + self.offset if self.offset else a * self.scale

    def tile(self, raw: xr.Dataset, tidx: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
        """One tile's values (float64), ``(nt, ty, tx)`` for a time-varying predictor, ``(ty, tx)``
        for a static one or a repeated (y, x) layer; ``raw``: the stack as opened (no dask), ``tidx``:
        stack time indices."""
        da = raw[self.source]
        if self.layout == "monthly":
            ts = slice(int(tidx[0]), int(tidx[-1]) + 1) if np.all(np.diff(tidx) == 1) else tidx
            a = da.transpose("time", "y", "x")[ts, ys, xs].values
        elif self.layout == "annual":
            idx = np.asarray(self.year_index)[tidx]
            steps, inv = np.unique(idx, return_inverse=True)
            a = da.transpose(str(self.year_dim), "y", "x")[steps, ys, xs].values[inv]
        elif self.layout == "series":
            v = da.values[tidx].astype(np.float64)
            ny, nx = ys.stop - ys.start, xs.stop - xs.start
            a = np.broadcast_to(v[:, None, None], (len(v), ny, nx))
        else:
            a = da.transpose("y", "x")[ys, xs].values
        return np.asarray(self.convert(np.asarray(a, dtype=np.float64)), dtype=np.float64)

    def view(self, ds: xr.Dataset) -> xr.DataArray:
        """The model layer (lazy): ``(time, y, x)`` for a time-varying predictor, ``(y, x)`` else."""
        raw = ds[self.source]
        da = self.convert(raw)
        if da is not raw:
            da = da.assign_attrs({**raw.attrs, "units": self.units, "units_converted_from": raw.attrs.get("units")})
        if self.layout == "annual":
            idx = xr.DataArray(np.asarray(self.year_index, dtype=np.int64), dims="time")
            da = da.isel({str(self.year_dim): idx}).drop_vars(str(self.year_dim), errors="ignore")
            da = da.assign_coords(time=ds["time"]).transpose("time", "y", "x")
        elif self.layout == "series":
            da = da.expand_dims(y=ds["y"], x=ds["x"]).transpose("time", "y", "x")
        elif self.layout == "grid" and self.time_varying:
            da = da.expand_dims(time=ds["time"]).transpose("time", "y", "x")
        return da


def _annual_years(ds: xr.Dataset, dim: str, name: str, file: str) -> list[int]:
    """The calendar year of each step of an annual layer's dimension ``dim``."""
    expected = (
        f"dimension `{dim}` with a coordinate of integer years or of dates, one per calendar year "
        "(an annual layer, repeated over the months of its year)"
    )
    if dim not in ds.coords:
        raise InputError(file, f"dimension `{dim}` has no coordinate values", column=name, expected=expected)
    v = ds[dim].values
    if np.issubdtype(v.dtype, np.integer):
        years = [int(y) for y in v]
    else:
        parts = _time_parts(v)
        if parts is None or "nat" in parts:
            raise InputError(
                file, f"`{dim}` holds neither years nor dates (dtype {v.dtype})", column=name, expected=expected
            )
        years = [int(y) for y in parts["year"]]
    if len(set(years)) != len(years):
        dup = sorted({y for y in years if years.count(y) > 1})
        raise InputError(file, f"`{dim}` has more than one step in year(s) {dup[:5]}", column=name, expected=expected)
    return years


def _plan_layer(ds: xr.Dataset, p, file: str) -> LayerPlan:
    """Check one predictor's stack variable's dimensions and units; its :class:`LayerPlan`."""
    src = p.stack_name
    label = src if src == p.name else f"{src} (predictor {p.name})"
    da = ds[src]
    dims = da.dims
    if not _is_numeric_dtype(da.dtype):
        raise InputError(file, f"variable is not numeric (dtype {da.dtype})", column=label, expected="numeric values")
    year_dim = None
    if set(dims) == {"y", "x"}:
        layout = "grid"
    elif set(dims) == {"time", "y", "x"}:
        layout = "monthly"
    elif dims == ("time",):
        layout = "series"
    elif len(dims) == 3 and {"y", "x"} <= set(dims):
        layout = "annual"
        year_dim = next(d for d in dims if d not in ("y", "x"))
    else:
        layout = "?"
    allowed = ("grid",) if not p.time_varying else ("monthly", "annual", "grid", "series")
    if layout not in allowed:
        want = (
            "dimensions ('y', 'x') (a static predictor)"
            if not p.time_varying
            else "dimensions ('time', 'y', 'x'), one layer per year (e.g. ('year', 'y', 'x')), ('y', 'x') "
            "(repeated over every month) or ('time',) (the same over the grid)"
        )
        raise InputError(file, f"variable has dimensions {dims}", column=label, expected=want)
    scale, offset = 1.0, 0.0
    u = da.attrs.get("units")
    if not p.categorical and u is not None:
        accepted = (p.units,) + tuple(p.units_also)
        got = parse_units(u) if isinstance(u, str) else None
        if got is None or got not in [parse_units(a) for a in accepted]:
            conv = units_mod.linear_conversion(str(u), p.units) if isinstance(u, str) else None
            if conv is None:
                raise InputError(
                    file,
                    f"units attribute is {u!r}",
                    column=label,
                    expected=f"units {' or '.join(repr(a) for a in accepted)} or units convertible to them (convert "
                    "the values and the attribute, or remove a wrong attribute)",
                )
            scale, offset = conv
            log.info(f"{file}: {label} converted from {u!r} to {p.units!r} (x {scale:g} + {offset:g})")
    year_index: tuple[int, ...] = ()
    if layout == "annual":
        years = _annual_years(ds, str(year_dim), label, file)
        t_years = pd.DatetimeIndex(ds["time"].values).year if "time" in ds.coords else None
        if t_years is None:
            raise InputError(
                file,
                "an annual layer but the stack has no monthly `time`",
                column=label,
                expected="a monthly `time` coordinate",
            )
        missing = sorted(set(t_years) - set(years))
        if missing:
            raise InputError(
                file,
                f"no layer for year(s) {missing[:10]} of the stack's months",
                column=label,
                expected=f"one layer for every year of the stack's `time` ({t_years.min()}-{t_years.max()})",
            )
        pos = {y: i for i, y in enumerate(years)}
        year_index = tuple(pos[int(y)] for y in t_years)
        log.info(f"{file}: {label} has one layer per year ({year_dim}): repeated over the months of its year")
    elif layout == "grid" and p.time_varying:
        log.info(f"{file}: {label} is a (y, x) layer: repeated over every month")
    elif layout == "series":
        log.info(f"{file}: {label} is a (time,) series: broadcast over the grid")
    if p.time_varying and "time" not in ds.coords:
        raise InputError(
            file,
            f"the stack has no `time` coordinate for the {p.kind} predictor",
            column=label,
            expected="a 1-D `time` coordinate of monthly dates (the months the predictor is repeated or broadcast over)",
        )
    return LayerPlan(
        p.name, src, layout, p.time_varying, float(scale), float(offset), year_dim, year_index, p.units if u else None
    )


def plan_predictors(ds: xr.Dataset, pset=None, file=None, required=None) -> dict[str, LayerPlan]:
    """Per predictor of ``pset`` read from the stack (default: the paper's), its
    :class:`LayerPlan`: dimensions and units checked, no data read. ``ds``: the opened stack
    with its grid checked; ``required``: model names to read (default: every layer of the set)."""
    pset = _pred.PAPER if pset is None else pset
    file = _source(ds) if file is None else str(file)
    layers = [p for p in pset.read if required is None or p.name in set(required)]
    _missing_variables(ds, [p.stack_name for p in layers], file, "predictor")
    return {p.name: _plan_layer(ds, p, file) for p in layers}


def model_view(ds: xr.Dataset, plans: dict[str, LayerPlan], file: str) -> xr.Dataset:
    """The stack as the model sees it (lazy): one variable per predictor, by its model name, in
    the contract units, ``(time, y, x)`` when time-varying, else ``(y, x)``."""
    out = xr.Dataset(coords={k: ds.coords[k] for k in ("time", "y", "x") if k in ds.coords})
    for name, plan in plans.items():
        out[name] = plan.view(ds)
    for c in ds.coords:
        if c not in out.coords and set(ds[c].dims) <= set(out.dims):
            out = out.assign_coords({c: ds[c]})
    out.attrs = dict(ds.attrs)
    out.encoding["source"] = file
    return out


def read_predictors(path, required=None, predictor_set=None) -> xr.Dataset:
    """Read and validate the predictor stack (docs/formats.md §2) for a predictor set (default
    :data:`abzflux.predictors.PAPER`).

    ``required``: model names to read (default: every stack layer of the set). Stack variables
    are renamed to the model names (a predictor's ``source``), converted to the contract units
    (:mod:`abzflux.units`) and checked against the physical ranges; annual and (y, x) layers of
    a time-varying predictor are repeated over the months, a (time,) series is broadcast over
    the grid. Returns the layers (time-varying ``(time, y, x)``, static ``(y, x)``), lazily,
    with the ``spatial_ref`` coordinate.
    """
    pset = _pred.PAPER if predictor_set is None else predictor_set
    ds, file = _open(path)
    if required is not None:
        required = [n for n in dict.fromkeys(required) if not (n in pset.by_name and not pset.by_name[n].stored)]
        unknown = [n for n in required if n not in pset.by_name]
        if unknown:
            raise ValueError(f"{unknown} are not predictors of the set {list(pset.names)}")
    if "month" in ds.variables:
        raise InputError(
            file,
            "the stack stores a `month` variable",
            column="month",
            expected="no `month` variable: month is a model predictor derived from `time`",
        )
    layers = [p for p in pset.read if required is None or p.name in set(required)]
    _missing_variables(ds, [p.stack_name for p in layers], file, "predictor")
    ds, _ = _check_grid(ds, file)
    plans = plan_predictors(ds, pset, file, required)
    # the checks run on the stored layers, converted (a repeated layer is checked once)
    conv = ds.assign({plans[p.name].source: plans[p.name].convert(ds[p.stack_name]) for p in layers})
    lazy: dict = {}
    code_checks: dict[str, list[int]] = {}
    for p in layers:
        src = p.stack_name
        da = conv[src]
        if p.categorical or "flag_values" in da.attrs:
            cats = categories(da, file=file)
            codes = list(cats)
            if p.name == "veg_type":
                codes += list(_pred.VEG_RECODE)
            code_checks[src] = codes
            lazy[f"codes:{src}"] = _lazy_codes(conv, src, codes)
            if p.name == "veg_type":  # the paper's classes only: another code has no trained class
                lazy["vocab:veg_type"] = _lazy_codes(conv, src, VEG_VOCABULARY)
        lazy[f"nan:{src}"] = da.isnull().all(dim=("y", "x")) if da.ndim == 3 else da.isnull().all()
        if da.dims == ("time",):
            lazy[f"nan:{src}"] = da.isnull()

    checks = []
    for p in layers:
        src = p.stack_name
        if p.range is not None and not p.categorical:
            lo, hi = p.range
            tol = 1e-4 * (hi - lo)  # float32 rounding at the bounds
            checks.append(
                _Range(
                    src,
                    lo - tol,
                    hi + tol,
                    text=(
                        f"values in {lo:g}..{hi:g}{'' if p.units == '1' else ' ' + p.units} (values outside it mean "
                        "other units or an unapplied scale factor)"
                    ),
                )
            )
        elif src not in code_checks:  # no physical range: still no inf (it trains, then breaks maps)
            checks.append(_Range(src, text="finite values, or NaN where a cell has no data"))
    res = _check_ranges(conv, checks, file, lazy)
    for p in layers:
        src = p.stack_name
        allnan = np.asarray(res[f"nan:{src}"])
        if allnan.all():
            raise InputError(
                file,
                "variable is entirely NaN",
                column=src,
                expected="data values (NaN only where a cell has no data)",
            )
        if allnan.ndim == 1 and conv[src].dims[0] == "time":
            _check_nan_steps(
                conv, allnan, src, file, "data at every time step (gap-fill the predictor or drop the month)"
            )
        elif allnan.ndim == 1 and allnan.any():
            dim = conv[src].dims[0]
            steps = [f"{dim} {_fmt(conv[dim].values[i])}" for i in np.flatnonzero(allnan)]
            raise InputError(
                file,
                f"all values are NaN in {len(steps)} layer(s)",
                column=src,
                where=_listing(steps),
                expected="data in every year's layer",
            )
    for src, codes in code_checks.items():
        _check_codes(conv, src, codes, res, file)
    if int(res.get("vocab:veg_type", 0)):
        src = pset.by_name["veg_type"].stack_name
        da = conv[src]
        mask = _load(da.notnull() & ~da.isin(list(VEG_VOCABULARY)), file)
        first = tuple(int(i) for i in np.argwhere(mask)[0])
        value = _load(da[first], file).item()
        meaning = categories(da, file=file).get(int(value)) if float(value).is_integer() else None
        raise InputError(
            file,
            f"{int(res['vocab:veg_type'])} cell(s) hold vegetation codes outside the paper's classes (first: "
            f"{_fmt(value)}{f', {meaning!r}' if meaning else ''})",
            column=src,
            where=_cell_description(conv, da, first),
            expected=f"codes of the ESA CCI + CAVM classes {sorted(VEG_VOCABULARY)} (docs/formats.md §2), or NaN",
        )
    return model_view(ds, plans, file)


def _check_same_grid_if(ds, like, file):
    if like is not None:
        check_same_grid(ds, like, file, _source(like))


def read_zones(path, like=None) -> xr.Dataset:
    """Read and validate the zones file (docs/formats.md §3).

    Returns ``land_fraction``, ``biome``, ``region``, ``permafrost`` and ``cell_area`` (m2; from
    the file, or |dx*dy| from the grid spacing when absent, with attribute
    ``source = "grid spacing"``). With ``like``, the grid must match ``like``'s.
    """
    ds, file = _open(path)
    _missing_variables(ds, ZONE_VARIABLES, file, "zones")
    ds, crs = _check_grid(ds, file)
    names = list(ZONE_VARIABLES) + (["cell_area"] if "cell_area" in ds.data_vars else [])
    for name in names:
        ds = _check_dims(ds, name, ("y", "x"), file)
    _check_same_grid_if(ds, like, file)
    for name, units in (("land_fraction", "1"), ("permafrost", "1"), ("cell_area", "m2")):
        if name in ds.data_vars:
            _check_units(ds, name, (units,), file)

    biome = categories(ds["biome"], file=file)
    lowered = {m.lower() for m in biome.values()}
    lacking = [w for w in ("boreal", "tundra") if w not in lowered]
    if lacking:
        raise InputError(
            file,
            f"biome flag_meanings {' '.join(biome.values())!r} lack {' and '.join(lacking)}",
            column="biome",
            expected="flag_meanings containing 'boreal' and 'tundra'",
        )
    region = categories(ds["region"], file=file)

    spacing = spacing_area_m2(ds, crs)
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    if "cell_area" not in ds.data_vars and not is_equal_area(crs):
        raise InputError(
            file,
            f"no `cell_area` variable, and the grid CRS {_crs_label(crs)} is not an equal-area "
            "projection, so |dx * dy| is not the cells' area",
            column="cell_area",
            expected="a `cell_area` variable (m2 per cell), or a grid in an equal-area CRS (Lambert "
            "azimuthal equal area, Albers, EASE-Grid 2.0, Mollweide, ...)",
        )
    checks = [
        _Range("land_fraction", 0.0, 1.0, text="values in 0-1 (share of the cell that is land)"),
        _Range("permafrost", 0.0, 1.0, text="values in 0-1 (probability or 0/1 mask)"),
    ]
    land = ds["land_fraction"].fillna(0) > 0
    lazy = {
        "codes:biome": _lazy_codes(ds, "biome", biome),
        "codes:region": _lazy_codes(ds, "region", region),
        "nan:land_fraction": ds["land_fraction"].isnull().all(),
        "nocode:biome": (land & ds["biome"].isnull()).sum(),
        "nocode:region": (land & ds["region"].isnull()).sum(),
    }
    if "cell_area" in ds.data_vars:
        lo, hi = spacing / CELL_AREA_FACTOR, spacing * CELL_AREA_FACTOR
        checks.append(
            _Range(
                "cell_area",
                lo,
                hi,
                text=(
                    f"cell areas in m2 within a factor {CELL_AREA_FACTOR:g} of the grid spacing's |dx * dy| = "
                    f"{_fmt(spacing)} m2 (x/y in {unit}s; are the areas in km2 or ha, or the coordinates in "
                    "other units than the CRS's?)"
                ),
            )
        )
        lazy["nocode:cell_area"] = (land & ds["cell_area"].isnull()).sum()
        area = ds["cell_area"]
    else:
        area = xr.full_like(ds["land_fraction"], spacing, dtype="float64")
    lazy["land_area"] = (ds["land_fraction"].fillna(0).astype("float64") * area.fillna(0)).sum()
    res = _check_ranges(ds, checks, file, lazy)
    if bool(res["nan:land_fraction"]):
        raise InputError(
            file,
            "variable is entirely NaN",
            column="land_fraction",
            expected="land fractions in 0-1 (0 outside the domain)",
        )
    _check_codes(ds, "biome", biome, res, file)
    _check_codes(ds, "region", region, res, file)
    for name in ("biome", "region", "cell_area"):
        n = int(res.get(f"nocode:{name}", 0))
        if n:
            mask = _load(land & ds[name].isnull(), file)
            first = tuple(int(i) for i in np.argwhere(mask)[0])
            raise InputError(
                file,
                f"{n} land cell(s) (land_fraction > 0) have no {name} (NaN)",
                column=name,
                where=_cell_description(ds, ds[name], first),
                expected=f"a {name} {'value' if name == 'cell_area' else 'code'} in every cell with land_fraction > 0 "
                "(or land_fraction 0 where the cell is outside the domain)",
            )
    total = float(res["land_area"])
    if not total <= EARTH_AREA_M2:
        raise InputError(
            file,
            f"the land area of the grid is {_fmt(total / 1e6)} km2, more than the Earth's surface",
            column="cell_area" if "cell_area" in ds.data_vars else "x, y",
            expected=f"a total land area (sum of land_fraction * cell area) below {_fmt(EARTH_AREA_M2 / 1e6)} km2",
        )

    if "cell_area" not in ds.data_vars:
        area.attrs = {"units": "m2", "long_name": "cell area", "source": "grid spacing", "grid_mapping": GRID_MAPPING}
        ds = ds.assign(cell_area=area)
        names.append("cell_area")
    return _finish(ds, names, file)


def read_fire(path, like=None) -> xr.Dataset:
    """Read and validate the fire file (docs/formats.md §4): ``fire_emissions`` >= 0
    (g C m-2 month-1) and ``burned_fraction`` in 0-1, both ``(time, y, x)``."""
    ds, file = _open(path)
    _missing_variables(ds, FIRE_VARIABLES, file, "fire")
    ds, _ = _check_grid(ds, file)
    for name in FIRE_VARIABLES:
        ds = _check_dims(ds, name, ("time", "y", "x"), file)
    _check_units(ds, "fire_emissions", ACCEPTED_FLUX_UNITS, file)
    _check_units(ds, "burned_fraction", ("1",), file)
    _check_same_grid_if(ds, like, file)
    res = _check_ranges(
        ds,
        [
            _Range("fire_emissions", 0.0, None, text="finite values >= 0 in g C m-2 month-1"),
            _Range("burned_fraction", 0.0, 1.0, text="values in 0-1 (burned share of the cell)"),
        ],
        file,
        {f"nan:{n}": ds[n].isnull().all(dim=("y", "x")) for n in FIRE_VARIABLES},
    )
    for name in FIRE_VARIABLES:  # a lost month (or Zarr chunk) would count as "no fire"
        _check_nan_steps(
            ds, np.asarray(res[f"nan:{name}"]), name, file, "data at every time step (0 where nothing burned)"
        )
    return _finish(ds, list(FIRE_VARIABLES), file)


def _check_latlon_axis(ds: xr.Dataset, name: str, file: str) -> None:
    _check_axis(ds, name, file)
    v = ds[name].values.astype("float64")
    lo, hi = (-90.0, 90.0) if name == "lat" else (-180.0, 360.0)
    if v.min() < lo or v.max() > hi:
        raise InputError(
            file,
            f"coordinate `{name}` spans {_fmt(v.min())}..{_fmt(v.max())}",
            column=name,
            expected=f"degrees within {lo:g}..{hi:g}",
        )


def read_reference(path, like=None) -> xr.Dataset:
    """Read and validate a reference product (docs/formats.md §5).

    ``nee`` is ``(time, y, x)`` on a projected grid (same grid as ``like`` when given) or
    ``(time, lat, lon)`` on a regular lat/lon grid (returned as is; ``latitude``/``longitude``
    are renamed to ``lat``/``lon``). The global attribute ``product`` is required.
    """
    ds, file = _open(path)
    product = ds.attrs.get("product")
    if not isinstance(product, str) or not product.strip():
        raise InputError(
            file,
            "global attribute `product` is missing",
            column="product",
            expected="a global attribute `product` naming the product (e.g. 'CarbonTracker')",
        )
    _missing_variables(ds, ("nee",), file, "reference")
    rename = {k: v for k, v in (("latitude", "lat"), ("longitude", "lon")) if k in ds.dims and v not in ds.variables}
    if rename:
        ds = ds.rename(rename)
    dims = set(ds["nee"].dims)
    if {"y", "x"} <= dims:
        ds, _ = _check_grid(ds, file)
        ds = _check_dims(ds, "nee", ("time", "y", "x"), file)
        _check_same_grid_if(ds, like, file)
    elif {"lat", "lon"} <= dims:
        _check_latlon_axis(ds, "lat", file)
        _check_latlon_axis(ds, "lon", file)
        ds = _check_time(ds, file)
        ds = _check_dims(ds, "nee", ("time", "lat", "lon"), file)
        name = _grid_mapping_name(ds)
        if name in ds.data_vars:
            ds = ds.set_coords(name)
    else:
        raise InputError(
            file,
            f"variable has dimensions {ds['nee'].dims}",
            column="nee",
            expected="dimensions ('time', 'y', 'x') or ('time', 'lat', 'lon')",
        )
    _check_units(ds, "nee", ACCEPTED_FLUX_UNITS, file)
    res = _check_ranges(
        ds,
        [_Range("nee", text="finite values (g C m-2 month-1) or NaN")],
        file,
        {"nan": ds["nee"].isnull().all()},
    )
    if bool(res["nan"]):
        raise InputError(file, "variable is entirely NaN", column="nee", expected="NEE values in g C m-2 month-1")
    return _finish(ds, ["nee"], file)


def read_truth(path, like=None) -> xr.Dataset:
    """Read and check a twin's true fluxes: ``gpp``, ``reco``, ``nee`` as ``(time, y, x)`` in
    g C m-2 month-1 on the analysis grid (``like``). Only twins have one; it is compared with
    the estimates at the end of a run, so it is checked before the run starts."""
    ds, file = _open(path)
    _missing_variables(ds, FLUXES, file, "truth")
    ds, _ = _check_grid(ds, file)
    for name in FLUXES:
        ds = _check_dims(ds, name, ("time", "y", "x"), file)
        _check_units(ds, name, ACCEPTED_FLUX_UNITS, file)
    _check_same_grid_if(ds, like, file)
    return _finish(ds, list(FLUXES), file)


# --------------------------------------------------------------------------------------------
# grid comparison and site location
# --------------------------------------------------------------------------------------------


def _crs_equal(a: pyproj.CRS, b: pyproj.CRS) -> bool:
    if a == b or a.equals(b, ignore_axis_order=True):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return a.to_proj4() == b.to_proj4()
        except Exception:
            return False


def check_same_grid(ds: xr.Dataset, like: xr.Dataset, file, like_file) -> None:
    """Raise :class:`InputError` unless ``ds`` and ``like`` have the same ``y``/``x`` cell centres
    (to 1e-6 relative) and the same CRS."""
    file, like_file = str(file), str(like_file)
    for dim in ("y", "x"):
        for obj, f in ((ds, file), (like, like_file)):
            if dim not in obj.coords:
                raise InputError(f, f"coordinate `{dim}` is missing", column=dim, expected=f"a `{dim}` coordinate")
        a = np.asarray(ds[dim].values, dtype="float64")
        b = np.asarray(like[dim].values, dtype="float64")
        if a.shape != b.shape:
            raise InputError(
                file,
                f"grid does not match {like_file}: `{dim}` has {a.size} cells here and {b.size} in {like_file}",
                column=dim,
                expected=f"the same `{dim}` coordinates as {like_file}",
            )
        step = abs(b[1] - b[0]) if b.size > 1 else max(abs(b[0]), 1.0)
        close = np.isclose(a, b, rtol=1e-6, atol=1e-6 * step)
        if not close.all():
            i = int(np.flatnonzero(~close)[0])
            raise InputError(
                file,
                f"grid does not match {like_file}: {dim}[{i}] = {_fmt(a[i])} here but "
                f"{_fmt(b[i])} in {like_file} (offset {_fmt(a[i] - b[i])})",
                column=dim,
                where=f"{dim}[{i}]",
                expected=f"the same `{dim}` coordinates as {like_file}",
            )
    ca, cb = grid_crs(ds, file), grid_crs(like, like_file)
    if not _crs_equal(ca, cb):

        def _name(c):
            auth = c.to_authority()
            return f"{c.name}" + (f" ({':'.join(auth)})" if auth else "")

        raise InputError(
            file,
            f"grid does not match {like_file}: CRS {_name(ca)} here but {_name(cb)} in {like_file}",
            column=GRID_MAPPING,
            expected=f"the same CRS as {like_file}",
        )


@lru_cache(maxsize=32)
def _to_grid(wkt: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", pyproj.CRS.from_wkt(wkt), always_xy=True)


def _axis_index(centres: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = np.asarray(centres, dtype="float64")
    n = c.size
    step = (c[-1] - c[0]) / (n - 1)
    with np.errstate(invalid="ignore"):
        f = np.floor((v - (c[0] - step / 2.0)) / step)
        ok = np.isfinite(f) & (f >= 0) & (f < n)
    return np.where(ok, np.nan_to_num(f, nan=-1.0), -1.0).astype(np.int64)


def _grid_xy(ds: xr.Dataset, lat, lon, file: str):
    lat = np.asarray(lat, dtype="float64")
    lon = np.asarray(lon, dtype="float64")
    if "y" in ds.dims and "x" in ds.dims:
        crs = grid_crs(ds, file)
        X, Y = _to_grid(crs.to_wkt()).transform(lon, lat, errcheck=False)
        return np.asarray(X, dtype="float64"), np.asarray(Y, dtype="float64"), "y", "x"
    if "lat" in ds.dims and "lon" in ds.dims:
        if float(np.nanmax(ds["lon"].values)) > 180:
            lon = np.where(lon < 0, lon + 360.0, lon)
        return lon, lat, "lat", "lon"
    raise InputError(
        file,
        f"no grid dimensions (dimensions are {tuple(ds.dims)})",
        expected="`y`/`x` (projected) or `lat`/`lon` dimensions",
    )


def cell_index(ds: xr.Dataset, lat, lon, file=None) -> tuple[np.ndarray, np.ndarray]:
    """Integer (iy, ix) of the grid cell containing each (lat, lon) point; -1 for both outside.

    Works with ascending or descending cell centres, and with ``lat``/``lon`` grids.
    """
    file = str(file) if file is not None else _source(ds)
    X, Y, ydim, xdim = _grid_xy(ds, lat, lon, file)
    for dim in (ydim, xdim):
        if ds[dim].size < 2:
            raise InputError(
                file,
                f"coordinate `{dim}` has fewer than 2 cells",
                column=dim,
                expected="at least 2 cells along each grid dimension",
            )
    ix = _axis_index(ds[xdim].values, X)
    iy = _axis_index(ds[ydim].values, Y)
    out = (ix < 0) | (iy < 0)
    ix = np.where(out, -1, ix)
    iy = np.where(out, -1, iy)
    return iy, ix


def _site_locations(sites: pd.DataFrame) -> pd.DataFrame:
    cols = {str(c).lower(): c for c in sites.columns}
    df = sites.rename(columns={v: k for k, v in cols.items()})
    if "site_id" not in df.columns:
        df = df.assign(site_id=[str(i) for i in df.index])
    return df.drop_duplicates("site_id")[["site_id", "lat", "lon"]].reset_index(drop=True)


def check_sites_in_grid(sites: pd.DataFrame, ds: xr.Dataset, file, variable: str | None = None) -> None:
    """Every site's (lat, lon) must fall inside the grid's x/y extent (cell edges).

    With ``variable``, the site's cell must also hold finite data of that variable (at least
    one time step for ``(time, y, x)`` variables).
    """
    file = str(file)
    loc = _site_locations(sites)
    iy, ix = cell_index(ds, loc["lat"].to_numpy(), loc["lon"].to_numpy(), file=file)
    out = np.flatnonzero(iy < 0)

    def _sites(idx):
        return [f"site {loc.site_id[i]} (lat {_fmt(loc.lat[i])}, lon {_fmt(loc.lon[i])})" for i in idx]

    if out.size:
        _, _, ydim, xdim = _grid_xy(ds, [], [], file)
        ext = []
        for dim in (xdim, ydim):
            c = ds[dim].values.astype("float64")
            half = abs(c[1] - c[0]) / 2
            ext.append(f"{dim} {_fmt(c.min() - half)}..{_fmt(c.max() + half)}")
        raise InputError(
            file,
            f"{out.size} of {len(loc)} site(s) fall outside the grid",
            column="lat/lon",
            where=_listing(_sites(out), out.size),
            expected=f"every site inside the grid extent ({', '.join(ext)})",
        )
    if variable is not None:
        _, _, ydim, xdim = _grid_xy(ds, [], [], file)
        da = ds[variable]
        vals = da.isel({ydim: xr.DataArray(iy, dims="site"), xdim: xr.DataArray(ix, dims="site")})
        ok = vals.notnull()
        other = [d for d in ok.dims if d != "site"]
        if other:
            ok = ok.any(dim=other)
        okv = np.asarray(_load(ok, file), dtype=bool)
        bad = np.flatnonzero(~okv)
        if bad.size:
            raise InputError(
                file,
                f"{bad.size} site(s) fall in cells without data",
                column=variable,
                where=_listing(_sites(bad), bad.size),
                expected=f"finite `{variable}` values in every site's cell",
            )


# --------------------------------------------------------------------------------------------
# site table
# --------------------------------------------------------------------------------------------


def _read_table(path) -> pd.DataFrame:
    file = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError(file, "file not found", expected="an existing CSV (.csv) or Parquet (.parquet) file")
    parquet = p.is_dir() or p.suffix.lower() in (".parquet", ".pq", ".parq")
    try:
        if parquet:
            return pd.read_parquet(p)
        header = pd.read_csv(p, nrows=0, encoding="utf-8-sig")
        dtype = {c: str for c in header.columns if str(c).strip().lower() == "site_id"}
        return pd.read_csv(p, dtype=dtype, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(
            file,
            "the file is empty",
            expected="a header line (site_id, lat, lon, year, month, gpp/reco/nee) and one row per site and month",
        ) from None
    except Exception as exc:
        raise InputError(
            file,
            f"cannot be read as {'Parquet' if parquet else 'CSV'} ({_short(exc)})",
            expected="a comma-separated CSV file with a header line, or a Parquet file",
        ) from exc


class _Table:
    """Row labelling for site-table messages."""

    def __init__(self, df: pd.DataFrame, file: str):
        self.df = df
        self.file = file

    def label(self, i: int) -> str:
        r = self.df["row"].iat[i]
        if "site_id" in self.df.columns:
            sid = self.df["site_id"].iat[i]
            if isinstance(sid, str) and sid:
                return f"row {r} (site {sid})"
        return f"row {r}"

    def where(self, mask, values=None) -> str:
        idx = np.flatnonzero(np.asarray(mask, dtype=bool))
        items = []
        for i in idx[:_MAX_LISTED]:
            text = self.label(int(i))
            if values is not None:
                v = values.iat[int(i)] if hasattr(values, "iat") else values[int(i)]
                text += f": {_fmt(v) if not isinstance(v, str) else repr(v)}"
            items.append(text)
        return _listing(items, idx.size)

    def fail(self, column, problem, mask, expected, values=None):
        raise InputError(self.file, problem, column=column, where=self.where(mask, values), expected=expected)

    def numeric(self, col: str) -> pd.Series:
        s = self.df[col]
        if pd.api.types.is_bool_dtype(s.dtype):
            self.fail(col, "boolean values", np.ones(len(s), bool), "numbers", s)
        if pd.api.types.is_numeric_dtype(s.dtype):
            return pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
        conv = pd.to_numeric(s, errors="coerce")
        conv = pd.Series(conv.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
        blank = s.isna() | (s.astype(str).str.strip() == "")
        bad = conv.isna() & ~blank
        if bad.any():
            self.fail(col, f"{int(bad.sum())} non-numeric value(s)", bad, "numbers", s)
        return conv


def _normalise_method(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return np.nan
    t = " ".join(str(v).strip().lower().replace("_", " ").replace("-", " ").split())
    if t == "":
        return np.nan
    return {"ec": "EC", "eddy covariance": "EC", "chamber": "chamber"}.get(t, None)


def check_site_ids(site_id: pd.Series, file, rows=None) -> None:
    """Refuse site ids that differ only by case or surrounding space ("US-Ivo" and "us-ivo"): two
    spellings of one site would be two sites in leave-one-site-out CV and in the site counts.
    ``rows``: the file's row numbers (for the message)."""
    ids = pd.Series(site_id).astype(str)
    first = ids.groupby(ids.str.strip().str.casefold(), sort=True).unique()
    clash = [list(v) for v in first if len(v) > 1]
    if clash:
        items = []
        for names in clash:
            parts = []
            for n in names:
                r = "" if rows is None else f" (row {int(pd.Series(rows)[ids.to_numpy() == n].iloc[0])})"
                parts.append(f"{n!r}{r}")
            items.append(" and ".join(parts))
        raise InputError(
            file,
            f"{len(clash)} site id(s) differ only by case",
            column="site_id",
            where=_listing(items),
            expected="one spelling per site (site ids are compared without regard to case)",
        )


def read_site_table(path) -> pd.DataFrame:
    """Read and validate the site-month flux table (docs/formats.md §1), CSV or Parquet.

    Returns a DataFrame sorted by ``site_id, year, month`` with lower-case column names, a ``row``
    column (1-based data row in the file, header excluded), ``site_id`` as str, ``lat``/``lon``
    float64, ``year``/``month`` int64, all of ``gpp, reco, nee`` (float64, NaN where absent),
    normalised ``method``/``disturbance``/``years_since_fire`` when present, and any other
    columns unchanged.
    """
    file = str(path)
    df = _read_table(path)
    cols = [str(c).strip().lower() for c in df.columns]
    dups = sorted({c for c in cols if cols.count(c) > 1})
    if dups:
        raise InputError(
            file,
            "duplicate column name(s) (names are case-insensitive)",
            column=", ".join(dups),
            expected="each column once",
        )
    df.columns = cols
    if "row" in cols:
        raise InputError(
            file,
            "column `row` is reserved",
            column="row",
            expected="no `row` column (the reader adds the file's row numbers)",
        )
    missing = [c for c in SITE_REQUIRED if c not in cols]
    if not any(f in cols for f in FLUXES):
        missing.append("gpp/reco/nee (at least one)")
    if missing:
        raise InputError(
            file,
            f"missing required column(s): {', '.join(missing)}",
            column=", ".join(missing),
            expected="columns site_id, lat, lon, year, month and at least one of gpp, reco, nee",
        )
    if len(df) == 0:
        raise InputError(file, "the table has no data rows", expected="one row per site and month")
    df = df.reset_index(drop=True)
    df.insert(0, "row", np.arange(1, len(df) + 1, dtype=np.int64))
    t = _Table(df, file)

    # site_id
    sid = df["site_id"]
    blank = sid.isna() | (sid.astype(str).str.strip() == "")
    if blank.any():
        t.fail("site_id", "missing site_id", blank, "a non-empty site identifier in every row")
    df["site_id"] = sid.astype(str).str.strip()

    # location
    for col, lo, hi, extra in (
        ("lat", -90.0, 90.0, ""),
        ("lon", -180.0, 180.0, " (convert 0-360 longitudes with lon - 360 where lon > 180)"),
    ):
        v = t.numeric(col)
        miss = v.isna()
        if miss.any():
            t.fail(col, "missing value(s)", miss, f"degrees WGS84 in {lo:g}..{hi:g}")
        bad = (v < lo) | (v > hi)
        if bad.any():
            t.fail(col, f"{int(bad.sum())} value(s) out of range", bad, f"degrees WGS84 in {lo:g}..{hi:g}{extra}", v)
        df[col] = v

    # calendar
    for col, lo, hi in (("year", 1900, 2100), ("month", 1, 12)):
        v = t.numeric(col)
        miss = v.isna()
        if miss.any():
            t.fail(col, "missing value(s)", miss, f"integers in {lo}..{hi}")
        bad = (v != np.round(v)) | (v < lo) | (v > hi)
        if bad.any():
            t.fail(col, f"{int(bad.sum())} invalid value(s)", bad, f"integers in {lo}..{hi}", v)
        df[col] = v.astype(np.int64)

    # fluxes
    summer = df["month"].isin(SUMMER_MONTHS).to_numpy()
    for col in FLUXES:
        if col not in df.columns:
            df[col] = np.nan
            continue
        v = t.numeric(col)
        inf = np.isinf(v)
        if inf.any():
            t.fail(col, "infinite value(s)", inf, "finite values in g C m-2 month-1, or NaN", v)
        huge = v.abs() > MAX_ABS_FLUX
        if huge.any():
            t.fail(
                col,
                f"implausible monthly flux(es), |value| > {MAX_ABS_FLUX:g}",
                huge,
                "g C m-2 month-1 (are the values g C m-2 yr-1, or mg C m-2 month-1?)",
                v,
            )
        valid = v.notna().to_numpy()
        if valid.sum() >= UMOL_MIN_VALUES:
            sel = valid & summer
            label = "June-August rows"
            if not sel.any():
                sel, label = valid, "all rows"
            mx = float(v[sel].abs().max())
            if mx < UMOL_SUSPECT_MAX:
                raise InputError(
                    file,
                    f"values look like µmol m-2 s-1: the largest |{col}| over {label} is {_fmt(mx)}",
                    column=col,
                    expected=(
                        f"g C m-2 month-1 (1 µmol m-2 s-1 ≈ {UMOL_TO_GC_MONTH} g C m-2 month-1); "
                        f"summer monthly fluxes are normally well above {UMOL_SUSPECT_MAX:g}"
                    ),
                )
        if col in ("gpp", "reco"):
            neg = v < NEG_TOL
            if neg.any():
                t.fail(
                    col,
                    f"{int(neg.sum())} negative value(s)",
                    neg,
                    f"{col} >= 0 (g C m-2 month-1; NEE carries the sign), or NaN",
                    v,
                )
        df[col] = v

    # one row per site-month
    key = ["site_id", "year", "month"]
    dup = df.duplicated(key, keep=False).to_numpy()
    if dup.any():
        items = []
        groups = df[dup].groupby(key, sort=False)["row"]
        for (s, y, m), rows in groups:
            items.append(f"site {s} {y:04d}-{m:02d} (rows {', '.join(str(r) for r in rows)})")
        raise InputError(
            file,
            f"{len(items)} duplicate site-month(s)",
            column="site_id, year, month",
            where=_listing(items),
            expected="one row per site and month",
        )

    # one location per site
    g = df.groupby("site_id", sort=True)
    spread = (g["lat"].max() - g["lat"].min()).combine(g["lon"].max() - g["lon"].min(), max)
    several = spread[spread > LOCATION_TOL].index.tolist()
    if several:
        items = []
        for s in several:
            sub = df[df["site_id"] == s].drop_duplicates(["lat", "lon"])
            locs = ", ".join(
                f"({_fmt(a)}, {_fmt(b)}) at row {r}" for a, b, r in zip(sub["lat"], sub["lon"], sub["row"])
            )
            items.append(f"site {s}: {locs}")
        raise InputError(
            file,
            f"{len(several)} site(s) have several locations",
            column="lat, lon",
            where=_listing(items),
            expected="a single lat/lon per site_id",
        )

    check_site_ids(df["site_id"], file, df["row"])

    # a site table that carries the predictors: the vegetation class must be one of the paper's
    if "veg_type" in df.columns:
        v = t.numeric("veg_type")
        bad = v.notna() & ~v.isin(VEG_VOCABULARY)
        if bad.any():
            t.fail(
                "veg_type",
                f"{int(bad.sum())} vegetation code(s) outside the paper's classes",
                bad,
                f"codes of the ESA CCI + CAVM classes {list(VEG_VOCABULARY)}, or empty",
                v,
            )
        df["veg_type"] = v

    # optional columns
    if "method" in df.columns:
        raw = df["method"]
        normed = [_normalise_method(v) for v in raw.tolist()]
        bad = np.array([n is None for n in normed])
        if bad.any():
            t.fail("method", "unknown method(s)", bad, "EC or chamber (case-insensitive)", raw)
        df["method"] = pd.Series(normed, index=df.index, dtype=object)
    if "disturbance" in df.columns:
        d = df["disturbance"]
        text = d.astype(object).where(d.notna(), "").map(lambda v: str(v).strip().lower())
        df["disturbance"] = text.where(text != "", "none").astype(object)
    if "years_since_fire" in df.columns:
        v = t.numeric("years_since_fire")
        bad = np.isinf(v) | (v < 0)
        if bad.any():
            t.fail(
                "years_since_fire", "negative or infinite value(s)", bad, "years >= 0, or empty for unburned sites", v
            )
        df["years_since_fire"] = v

    df = df.sort_values(key, kind="stable").reset_index(drop=True)
    df["row"] = df["row"].astype(np.int64)
    return df
