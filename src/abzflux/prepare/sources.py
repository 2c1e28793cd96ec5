"""Generic raster readers: NetCDF, Zarr, GeoTIFF / COG and HDF5 (datasets in groups) files -> a
*source layer*
(:mod:`abzflux.prepare.layer`).

:func:`open_layer` is the entry point for every recipe entry: ``product = "generic"`` (the
default) is read here, any other product by ``prepare.products.READERS[product]``.

What a generic reader does, in order (docs/prepare_core.md):

1. opens each file lazily (dask; only the windows the regridder asks for are read later);
2. picks the variable (``variable``, or the file's only gridded variable; a GeoTIFF's band
   ``options.band``, default the only band; in an HDF5 file (``.h5``/``.hdf5``/``.he5`` with a
   ``variable`` path such as ``"grids/ndvi"``) a 2-D dataset, its axes from ``options.y`` /
   ``options.x`` dataset paths or ``lat``/``lon`` (``y``/``x``) datasets beside it or at the root);
3. renames the axes: ``lat``/``latitude`` -> ``y``, ``lon``/``longitude`` -> ``x``,
   ``valid_time``/``Time``/``t``/``date`` -> ``time``; drops length-1 dimensions
   (``band``, ``number``, ``expver``, ...) and selects ``options.select = {dim = index}``;
4. decodes the packing: the raw ``_FillValue`` / ``missing_value`` / GeoTIFF nodata (or the
   recipe's ``fill_value``) becomes NaN, then ``raw * scale_factor + add_offset`` (CF
   attributes or GeoTIFF scale/offset tags), then the recipe's ``scale_factor`` /
   ``add_offset``; values outside the recipe's ``valid_range`` become NaN;
5. finds the CRS: recipe ``crs``, else the CF grid mapping (WKT or CF attributes), else the
   GeoTIFF's CRS, else lat/lon axis names (EPSG:4326); none -> an error;
6. rolls 0-360 longitudes to -180..180 (ascending); keeps either latitude order;
7. builds the time axis: the file's ``time`` (CF-decoded, any calendar) or, for files without
   one, a date from the file name (``options.time_pattern``, a regex with groups ``year``,
   ``month``, ``day`` or ``doy``); detects the frequency (daily, 8-day, monthly, annual) and
   checks it against the recipe's ``frequency``; stamps become the first day of the period.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from ..errors import InputError
from .layer import LayerSpec

log = logging.getLogger(__name__)

Y_NAMES = ("y", "lat", "latitude", "nav_lat", "rlat", "northing")
X_NAMES = ("x", "lon", "longitude", "nav_lon", "rlon", "easting")
GEOGRAPHIC_NAMES = ("lat", "latitude", "lon", "longitude", "nav_lat", "nav_lon")
TIME_NAMES = ("time", "valid_time", "Time", "t", "date", "times")
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf")
TIFF_SUFFIXES = (".tif", ".tiff", ".gtiff", ".cog")
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
#: Default date pattern for one file per year (or per month), e.g. ``vcf_1999.tif``,
#: ``ndvi_2001-07.tif``, ``lst_200107.tif``.
DEFAULT_TIME_PATTERN = r"(?<!\d)(?P<year>(?:19|20)\d{2})(?:[-_.]?(?P<month>0[1-9]|1[0-2]))?(?!\d)"
#: Regular-spacing tolerance of source coordinates (relative to the step).
SPACING_RTOL = 1e-4
#: Dask chunk of a source: cells along y and x, steps along time. The decoding is
#: applied chunk by chunk, so a tile's window reads and decodes only the chunks it touches.
SOURCE_CHUNK = 1024
SOURCE_TIME_CHUNK = 12
EXPECT_CRS = "a CF grid mapping, a WKT, GeoTIFF CRS tags, lat/lon coordinates, or the recipe's `crs`"


def open_layer(spec: LayerSpec) -> xr.DataArray:
    """The recipe entry's source layer (lazy). Named products go to ``products.READERS``."""
    if spec.product != "generic":
        from .products import READERS

        if spec.product not in READERS:
            raise InputError(
                spec.recipe or "<recipe>",
                f"unknown product {spec.product!r}",
                column=f"{spec.name}.product",
                expected=f"one of {sorted(['generic', *READERS])}",
            )
        return READERS[spec.product](spec)
    return read_generic(spec)


# --------------------------------------------------------------------------------- opening
def _kind(path: Path, spec: LayerSpec | None = None) -> str:
    s = path.suffix.lower()
    if path.is_dir() or s == ".zarr":
        return "zarr"
    if s in TIFF_SUFFIXES:
        return "tiff"
    if s in HDF5_SUFFIXES and spec is not None and ("/" in (spec.variable or "") or "x" in spec.options):
        return "hdf5"  # a dataset path in groups (a NetCDF-4 file with a plain name is read as NetCDF)
    return "netcdf"


def _open_dataset(path: Path, var: str | None) -> xr.Dataset:
    if not path.exists():
        raise InputError(path, "file not found", column=var, expected="an existing source file")
    kind = _kind(path)
    if kind == "zarr":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return xr.open_dataset(path, engine="zarr", chunks={}, mask_and_scale=False, consolidated=None)
        except Exception as exc:
            raise InputError(
                path, f"cannot be read as a Zarr store ({exc})", column=var, expected="a Zarr store"
            ) from exc
    problems = []
    for engine in ("h5netcdf", "netcdf4", "scipy"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return xr.open_dataset(path, engine=engine, mask_and_scale=False, decode_timedelta=False)
        except Exception as exc:
            problems.append(f"{engine}: {str(exc)[:120]}")
    raise InputError(
        path,
        "cannot be read as NetCDF: the file is truncated, corrupt or not NetCDF (" + " | ".join(problems) + ")",
        column=var,
        expected="a complete NetCDF file",
    )


def _pick_variable(ds: xr.Dataset, spec: LayerSpec, path: Path) -> str:
    if spec.variable is not None:
        if spec.variable not in ds.data_vars:
            raise InputError(
                path,
                f"variable {spec.variable!r} not in the file",
                column=spec.variable,
                expected=f"one of {sorted(map(str, ds.data_vars))}",
            )
        return spec.variable
    gridded = [str(k) for k, v in ds.data_vars.items() if v.ndim >= 2 or (v.ndim == 1 and v.dims[0] in TIME_NAMES)]
    if len(gridded) != 1:
        raise InputError(
            path,
            f"{len(gridded)} candidate variables and no `variable` in the recipe",
            column=spec.name,
            expected=f"variable = one of {sorted(gridded)}",
        )
    return gridded[0]


def _crs_from_grid_mapping(ds: xr.Dataset, da: xr.DataArray, path: Path, var: str) -> pyproj.CRS | None:
    name = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
    candidates = [name.split(":")[0].split()[0]] if isinstance(name, str) and name.strip() else []
    candidates += [n for n in ("spatial_ref", "crs") if n not in candidates]
    for n in candidates:
        if n not in ds.variables:
            continue
        attrs = dict(ds[n].attrs)
        wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
        try:
            if isinstance(wkt, str) and wkt.strip():
                return pyproj.CRS.from_user_input(wkt)
            if "grid_mapping_name" in attrs:
                return pyproj.CRS.from_cf(attrs)
        except pyproj.exceptions.CRSError as exc:
            raise InputError(
                path, f"unknown CRS in grid mapping `{n}` ({exc})", column=var, expected=EXPECT_CRS
            ) from exc
    return None


def _open_tiff(path: Path, spec: LayerSpec) -> tuple[xr.DataArray, dict, pyproj.CRS | None]:
    import rioxarray  # noqa: F401  (the rasterio backend of open_rasterio)

    if not path.exists():
        raise InputError(path, "file not found", column=spec.name, expected="an existing GeoTIFF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            da = rioxarray.open_rasterio(
                path, chunks={"band": 1, "y": SOURCE_CHUNK, "x": SOURCE_CHUNK}, mask_and_scale=False, lock=False
            )
    except Exception as exc:
        raise InputError(
            path, f"cannot be read as GeoTIFF ({str(exc)[:200]})", column=spec.name, expected="a complete GeoTIFF / COG"
        ) from exc
    assert isinstance(da, xr.DataArray)
    band = spec.options.get("band")
    if band is not None:
        if band not in list(da["band"].values):
            raise InputError(path, f"no band {band}", column=spec.name, expected=f"a band in {list(da['band'].values)}")
        da = da.sel(band=band)
    elif da.sizes.get("band", 1) != 1:
        raise InputError(
            path,
            f"{da.sizes['band']} bands and no options.band in the recipe",
            column=spec.name,
            expected="a single-band GeoTIFF or options.band = N (1-based)",
        )
    attrs = dict(da.attrs)
    crs = None
    try:
        rcrs = da.rio.crs
        crs = pyproj.CRS.from_user_input(rcrs.to_wkt()) if rcrs is not None else None
    except Exception as exc:
        raise InputError(path, f"unknown CRS ({exc})", column=spec.name, expected=EXPECT_CRS) from exc
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    return da, attrs, crs


def _h5_text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    a = np.asarray(v)
    if a.dtype.kind in "SO" and a.size == 1:
        return _h5_text(a.ravel()[0])
    return v


def _h5_block(block: np.ndarray, path: str = "", key: str = "", block_info: dict | None = None) -> np.ndarray:
    import h5py

    assert block_info is not None
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    with h5py.File(path, "r") as f:
        return np.asarray(f[key][y0:y1, x0:x1])


def _h5_axis(f, var: str, names: tuple[str, ...], option: str | None, axis: int, path: Path) -> tuple[np.ndarray, bool]:
    """A 1-D axis of the dataset ``var``: ``option`` (a dataset path) or a dataset named like the
    axis beside it or at the root; a 2-D lat/lon array must be a regular grid (a row / column)."""
    group = var.rsplit("/", 1)[0] if "/" in var else ""
    candidates = [option] if option else [f"{group}/{n}".lstrip("/") for n in names] + list(names)
    for c in candidates:
        if c in f:
            a = np.asarray(f[c][()], dtype=np.float64)
            name = c.rsplit("/", 1)[-1].lower()
            geographic = name in GEOGRAPHIC_NAMES
            if a.ndim == 2:
                line = a[:, 0] if axis == 0 else a[0, :]
                full = line[:, None] if axis == 0 else line[None, :]
                if not np.allclose(a, np.broadcast_to(full, a.shape)):
                    raise InputError(path, f"`{c}` is not a regular (1-D) axis", column=var, expected="a regular grid")
                a = line
            return a, geographic
    raise InputError(
        path,
        f"no {'y' if axis == 0 else 'x'} coordinate for `{var}`",
        column=var,
        expected=f"a dataset {names} or options.{'y' if axis == 0 else 'x'}",
    )


def _open_hdf5(path: Path, spec: LayerSpec) -> tuple[xr.DataArray, dict, pyproj.CRS | None]:
    """A 2-D dataset of an HDF5 file with groups (``variable`` = its path), read lazily by chunks;
    ``y``/``x`` from ``options.y``/``options.x`` or ``lat``/``lon`` (``y``/``x``) datasets."""
    import dask.array as dsa
    import h5py

    var = str(spec.variable or spec.name)
    if not path.exists():
        raise InputError(path, "file not found", column=var, expected="an existing HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"cannot be read as HDF5 ({exc})", column=var, expected="a complete HDF5 file") from exc
    with f:
        if var not in f or not isinstance(f[var], h5py.Dataset):
            found: list[str] = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
            raise InputError(path, f"no dataset {var!r}", column=var, expected=f"one of {sorted(found)[:20]}")
        d = f[var]
        if d.ndim != 2:
            raise InputError(path, f"dataset of {d.ndim} dimensions", column=var, expected="a 2-D (y, x) dataset")
        shape, dtype = d.shape, d.dtype
        attrs = {k: _h5_text(v) for k, v in d.attrs.items()}
        y, geo_y = _h5_axis(f, var, ("lat", "latitude", "y"), spec.options.get("y"), 0, path)
        x, geo_x = _h5_axis(f, var, ("lon", "longitude", "x"), spec.options.get("x"), 1, path)
    if (y.size, x.size) != shape:
        raise InputError(
            path, f"axes of {y.size} x {x.size} for a {shape} dataset", column=var, expected="matching axes"
        )
    dummy = dsa.zeros(shape, chunks=(SOURCE_CHUNK, SOURCE_CHUNK), dtype=np.int8)
    data = dsa.map_blocks(_h5_block, dummy, path=str(path), key=var, dtype=dtype, meta=np.array((), dtype=dtype))
    raw = xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x}, name=var)
    crs = pyproj.CRS.from_epsg(4326) if (geo_y and geo_x) else None
    return raw, attrs, crs


# -------------------------------------------------------------------------------- decoding
def _attr_number(attrs: dict, key: str) -> float | None:
    v = attrs.get(key)
    if v is None:
        return None
    a = np.atleast_1d(np.asarray(v, dtype=np.float64))
    return float(a[0]) if a.size else None


def decode(raw: xr.DataArray, attrs: dict, spec: LayerSpec) -> xr.DataArray:
    """Raw (packed) values -> physical float values with NaN for no data (lazy)."""
    out = raw.astype(np.float64)
    fills = []
    for key in ("_FillValue", "missing_value", "nodata"):
        if attrs.get(key) is not None:
            fills.extend(np.atleast_1d(np.asarray(attrs[key], dtype=np.float64)).tolist())
    if spec.fill_value is not None:
        fills.append(float(spec.fill_value))
    for f in {f for f in fills if np.isfinite(f)}:
        out = out.where(out != f)
    scale = _attr_number(attrs, "scale_factor")
    offset = _attr_number(attrs, "add_offset")
    if scale is not None and scale != 1.0:
        out = out * scale
    if offset:
        out = out + offset
    if spec.scale_factor != 1.0:
        out = out * spec.scale_factor
    if spec.add_offset:
        out = out + spec.add_offset
    if spec.valid_range is not None:
        lo, hi = spec.valid_range
        out = out.where((out >= lo) & (out <= hi))
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------- axes
def _rename_axes(da: xr.DataArray, path: Path, var: str) -> tuple[xr.DataArray, bool]:
    ren: dict[str, str] = {}
    geographic = False
    for d in da.dims:
        ds_ = str(d)
        if ds_ in Y_NAMES or ds_.lower() in Y_NAMES:
            ren[ds_] = "y"
            geographic |= ds_.lower() in GEOGRAPHIC_NAMES
        elif ds_ in X_NAMES or ds_.lower() in X_NAMES:
            ren[ds_] = "x"
            geographic |= ds_.lower() in GEOGRAPHIC_NAMES
        elif ds_ in TIME_NAMES:
            ren[ds_] = "time"
    targets = list(ren.values())
    if len(targets) != len(set(targets)):
        raise InputError(path, f"ambiguous axes {list(da.dims)}", column=var, expected="one y, one x and one time axis")
    da = da.rename({k: v for k, v in ren.items() if k != v})
    return da, geographic


def _squeeze(da: xr.DataArray, spec: LayerSpec, path: Path, var: str) -> xr.DataArray:
    select = spec.options.get("select", {})
    if select:
        try:
            da = da.isel({k: int(v) for k, v in select.items()})
        except (ValueError, IndexError, KeyError) as exc:
            raise InputError(
                path, f"options.select {select} ({exc})", column=var, expected=f"dims {list(da.dims)}"
            ) from exc
    for d in [d for d in da.dims if d not in ("time", "y", "x")]:
        if da.sizes[d] == 1:
            da = da.isel({d: 0}, drop=True)
        else:
            raise InputError(
                path,
                f"extra dimension `{d}` of size {da.sizes[d]}",
                column=var,
                expected=f"dims (time, y, x); choose one with options.select = {{{d} = 0}}",
            )
    if da.ndim and not {"y", "x"} <= set(da.dims) and da.dims != ("time",):
        raise InputError(path, f"dimensions {list(da.dims)}", column=var, expected="(time, y, x), (y, x) or (time,)")
    return da.drop_vars([c for c in da.coords if c not in da.dims])


def _regular_axis(da: xr.DataArray, ax: str, path: Path, var: str) -> xr.DataArray:
    if ax not in da.coords:
        raise InputError(path, f"no `{ax}` coordinate", column=var, expected=f"a 1-D {ax} coordinate of cell centres")
    c = np.asarray(da[ax].values, dtype=np.float64)
    d = np.diff(c)
    if c.size < 2 or not np.all(np.isfinite(c)) or not (np.all(d > 0) or np.all(d < 0)):
        raise InputError(path, f"`{ax}` is not strictly monotonic", column=var, expected="a regular grid")
    if not np.allclose(d, d[0], rtol=SPACING_RTOL, atol=0):
        i = int(np.argmax(np.abs(d - d[0])))
        raise InputError(path, f"`{ax}` is not regularly spaced (step {i})", column=var, expected="a regular grid")
    return da.assign_coords({ax: c})


def _roll_longitudes(da: xr.DataArray) -> xr.DataArray:
    x = np.asarray(da["x"].values, dtype=np.float64)
    if x.max() > 180.0:
        x = np.where(x > 180.0, x - 360.0, x)
        da = da.assign_coords(x=x)
    if x.size > 1 and not np.all(np.diff(x) > 0):
        # two slices joined (not a reordering index): a window of the result reads only its bytes
        k = int(np.argmin(x))
        if k and np.all(np.diff(x[k:]) > 0) and np.all(np.diff(x[:k]) > 0):
            da = xr.concat([da.isel(x=slice(k, None)), da.isel(x=slice(0, k))], dim="x")
        else:
            da = da.isel(x=np.argsort(x, kind="stable"))
    return da


# ----------------------------------------------------------------------------------- time
def _to_datetime64(values: Any) -> np.ndarray:
    v = np.asarray(values)
    if np.issubdtype(v.dtype, np.datetime64):
        return v.astype("datetime64[ns]")
    out = []  # cftime objects (noleap, 360_day, ...): year, month, day (clamped to the month)
    for t in v.ravel():
        day = min(int(t.day), pd.Timestamp(year=int(t.year), month=int(t.month), day=1).days_in_month)
        out.append(np.datetime64(f"{int(t.year):04d}-{int(t.month):02d}-{day:02d}"))
    return np.array(out, dtype="datetime64[ns]")


def detect_frequency(times: np.ndarray) -> str | None:
    """``daily``, ``8day``, ``monthly`` or ``annual`` from the steps (None: not one of them)."""
    t = pd.DatetimeIndex(times)
    if t.size < 2:
        return None
    d = np.diff(t.values.astype("datetime64[D]").astype(np.int64))
    if np.all(d == 1):
        return "daily"
    if np.median(d) == 8 and np.all(d[d != 8] <= 8) and np.all(d > 0):
        return "8day"  # composites restart on 1 January: the year's last one is shorter
    if np.all((d >= 28) & (d <= 31 * 11 + 1)) and np.all(t.day <= 16) and np.median(d) <= 31:
        return "monthly"  # gaps of whole months are allowed
    if np.all((d >= 365) & (d % 365 <= 3)) or np.all((t.month[1:] == t.month[0]) & (d >= 365)):
        return "annual"
    return None


def _period_start(times: np.ndarray, freq: str) -> np.ndarray:
    t = pd.DatetimeIndex(times)
    if freq == "monthly":
        return t.to_period("M").to_timestamp().values.astype("datetime64[ns]")
    if freq == "annual":
        return t.to_period("Y").to_timestamp().values.astype("datetime64[ns]")
    return t.floor("D").values.astype("datetime64[ns]")


def _time_from_name(path: Path, pattern: str) -> tuple[np.datetime64, str] | None:
    m = re.search(pattern, path.name)
    if m is None:
        return None
    g = m.groupdict()
    if g.get("year") is None:
        return None
    year = int(g["year"])
    if g.get("doy"):
        return np.datetime64(f"{year:04d}-01-01") + np.timedelta64(int(g["doy"]) - 1, "D"), "day"
    if g.get("month"):
        day = int(g["day"]) if g.get("day") else 1
        return np.datetime64(f"{year:04d}-{int(g['month']):02d}-{day:02d}"), "day" if g.get("day") else "month"
    return np.datetime64(f"{year:04d}-01-01"), "year"


def _finish_time(da: xr.DataArray, spec: LayerSpec, files: str) -> xr.DataArray:
    var = spec.variable or spec.name
    if "time" not in da.dims:
        if spec.frequency not in (None, "static", "annual"):
            raise InputError(
                files,
                f"no time axis for a {spec.frequency} layer",
                column=var,
                expected="a time axis or a date in each file name",
            )
        return da.assign_attrs(frequency="static")
    if da.sizes["time"] == 1 and spec.frequency in (None, "static"):
        return da.isel(time=0, drop=True).assign_attrs(frequency="static")
    times = _to_datetime64(da["time"].values)
    found = detect_frequency(times)
    freq: str | None = spec.frequency or found
    if freq is None:
        d = np.diff(times.astype("datetime64[D]").astype(np.int64))
        raise InputError(
            files,
            f"wrong time step: steps of {sorted(set(d.tolist()))[:5]} days",
            column=var,
            where=f"time {str(times[0])[:10]}..{str(times[-1])[:10]}",
            expected="daily, 8-day, monthly or annual steps (or the recipe's `frequency`)",
        )
    if found is not None and spec.frequency is not None and found != spec.frequency:
        raise InputError(
            files,
            f"wrong time step: the data are {found} but the recipe says frequency = {spec.frequency!r}",
            column=var,
            expected=f"{spec.frequency} steps",
        )
    if freq == "static":
        raise InputError(files, f"{times.size} time steps for a static layer", column=var, expected="one time step")
    stamps = _period_start(times, freq)
    order = np.argsort(stamps, kind="stable")
    stamps = stamps[order]
    dup = np.flatnonzero(np.diff(stamps.astype(np.int64)) == 0)
    if dup.size:
        raise InputError(
            files,
            f"{dup.size} duplicate time step(s)",
            column=var,
            where=", ".join(str(stamps[i])[:10] for i in dup[:5]),
            expected=f"one layer per {freq} period",
        )
    if not np.all(order == np.arange(order.size)):
        da = da.isel(time=order)
    return da.assign_coords(time=stamps).assign_attrs(frequency=freq)


# ---------------------------------------------------------------------------------- reader
def _one_file(path: Path, spec: LayerSpec) -> tuple[xr.DataArray, pyproj.CRS | None, dict]:
    """One file's variable: renamed axes, decoded values, CRS (or None), raw attributes."""
    kind = _kind(path, spec)
    if kind == "tiff":
        raw, attrs, crs = _open_tiff(path, spec)
        var = spec.name
    elif kind == "hdf5":
        raw, attrs, crs = _open_hdf5(path, spec)
        var = str(spec.variable or spec.name)
    else:
        ds = _open_dataset(path, spec.variable or spec.name)
        var = _pick_variable(ds, spec, path)
        raw = ds[var]
        attrs = dict(raw.attrs)
        raw, geographic = _rename_axes(raw, path, var)
        crs = pyproj.CRS.from_user_input(spec.crs) if spec.crs else None
        crs = crs or _crs_from_grid_mapping(ds, ds[var], path, var)
        if crs is None and geographic:
            crs = pyproj.CRS.from_epsg(4326)
    raw, _ = _rename_axes(raw, path, var)
    raw = _squeeze(raw, spec, path, var)
    if not raw.chunks or kind not in ("tiff", "hdf5"):
        raw = raw.chunk({d: (SOURCE_TIME_CHUNK if d == "time" else SOURCE_CHUNK) for d in raw.dims})
    if spec.crs:
        crs = pyproj.CRS.from_user_input(spec.crs)
    da = decode(raw, attrs, spec)
    if "time" in da.dims and not np.issubdtype(np.asarray(da["time"].values).dtype, np.datetime64):
        try:
            da = da.assign_coords(time=_to_datetime64(da["time"].values))
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(
                path, f"time cannot be decoded as dates ({exc})", column="time", expected="CF time units"
            ) from exc
    return da, crs, attrs


def read_generic(spec: LayerSpec) -> xr.DataArray:
    """A source layer from NetCDF / Zarr / GeoTIFF files (one, or one per period)."""
    if not spec.files:
        raise InputError(spec.recipe or "<recipe>", "no files", column=spec.name, expected="files = [...]")
    parts: list[xr.DataArray] = []
    crs = None
    units = None
    pattern = spec.options.get("time_pattern")
    for path in spec.files:
        da, c, attrs = _one_file(Path(path), spec)
        if c is None and "x" in da.dims:
            raise InputError(path, "unknown CRS", column=spec.variable or spec.name, expected=EXPECT_CRS)
        if crs is not None and c is not None and not c.equals(crs):
            raise InputError(
                path, "the files have different CRSs", column=spec.name, expected=f"{crs.name} as {spec.files[0]}"
            )
        crs = crs or c
        units = units or attrs.get("units")
        if "time" not in da.dims and (pattern or len(spec.files) > 1):
            stamp = _time_from_name(Path(path), pattern or DEFAULT_TIME_PATTERN)
            if stamp is None:
                raise InputError(
                    path,
                    "no date in the file name",
                    column=spec.name,
                    expected=f"a name matching options.time_pattern {pattern or DEFAULT_TIME_PATTERN!r}",
                )
            da = da.expand_dims(time=[stamp[0]])
        parts.append(da)
    da = parts[0] if len(parts) == 1 else _concat(parts, spec)
    files = "; ".join(str(f) for f in spec.files)
    var = spec.variable or spec.name
    if "x" in da.dims:
        assert crs is not None
        da = _regular_axis(da, "y", Path(spec.files[0]), var)
        if crs.is_geographic:
            da = _roll_longitudes(da)
        da = _regular_axis(da, "x", Path(spec.files[0]), var)
        if da["x"].values[0] > da["x"].values[-1]:
            da = da.isel(x=slice(None, None, -1))
    da = _finish_time(da, spec, files)
    dims = [d for d in ("time", "y", "x") if d in da.dims]
    da = da.transpose(*dims)
    out_units = spec.units or units
    if spec.units and units and spec.units != units:
        log.info("%s: the recipe's units %r replace the file's %r", spec.name, spec.units, units)
    attrs_out = {
        "units": str(out_units) if out_units is not None else "",
        "frequency": da.attrs["frequency"],
        "source_files": files,
    }
    if out_units is None:
        attrs_out.pop("units")
    if crs is not None and "x" in da.dims:
        attrs_out["crs_wkt"] = crs.to_wkt()
    da.attrs = attrs_out
    da.name = spec.name
    return da


def _concat(parts: list[xr.DataArray], spec: LayerSpec) -> xr.DataArray:
    for p, f in zip(parts, spec.files):
        if "time" not in p.dims:
            raise InputError(
                f, "a file without a time axis among several", column=spec.name, expected="a date per file"
            )
    ref = parts[0]
    for p, f in zip(parts[1:], spec.files[1:]):
        for ax in ("y", "x"):
            if ax in ref.dims and (
                p.sizes.get(ax) != ref.sizes[ax] or not np.allclose(p[ax].values, ref[ax].values, rtol=1e-9, atol=1e-9)
            ):
                raise InputError(
                    f, f"`{ax}` differs from {spec.files[0]}", column=spec.name, expected="the same grid in every file"
                )
    return xr.concat(parts, dim="time", join="override", coords="minimal", compat="override")
