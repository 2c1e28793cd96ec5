"""Readers for the named public products the study uses (docs/prepare_products.md).

``READERS[product](spec)`` reads one recipe entry (:class:`~abzflux.prepare.layer.LayerSpec`)
and returns a **source layer** (:mod:`abzflux.prepare.layer`): ``(time, y, x)``, ``(y, x)`` or
``(time,)``, values in the layer's physical units, ``time`` the first day of each month (or
1 January of an annual layer). Geographic products come back on their own lat/lon grid with
``x`` = longitude in -180..180 ascending (0-360 products are rolled) and ``y`` = latitude in the
file's order; regridding to the target grid happens downstream (``prepare.regrid``).

Units stay physical (K, m3 m-3, %, W m-2, ppm, ...): conversion to the contract's units is done
downstream with :mod:`abzflux.units`, except where the conversion needs each time step's length:
accumulated ERA5-Land radiation (J m-2 per day -> W m-2) and carbon fluxes (kg m-2 s-1,
mol m-2 s-1, g C m-2 d-1, ... -> g C m-2 month-1 with the step's days in its calendar), which
these readers convert themselves.
"""

from __future__ import annotations

import calendar
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import InputError
from ..units import linear_conversion
from ..vocab import FLUX_UNITS
from .layer import LayerSpec

log = logging.getLogger(__name__)

#: WKT of the products' geographic grids (WGS84 lat/lon).
GEOGRAPHIC_CRS = "EPSG:4326"

#: Molar mass of carbon, g mol-1: a molar carbon (or CO2) flux times this is a carbon mass flux.
CARBON_G_PER_MOL = 12.011

#: Molar mass of CO2, g mol-1: a CO2 mass flux times 12.011 / 44.0095 is a carbon mass flux.
CO2_G_PER_MOL = 44.0095

SECONDS_PER_DAY = 86400.0

#: Sign conventions of a carbon flux (``options.sign``): NEE is positive for a source (net
#: emission to the atmosphere); NBP and NEP are positive for uptake, so they are negated.
SIGNS = {"nee": 1.0, "nbp": -1.0, "nep": -1.0}

#: ERA5-Land variables whose monthly means are mean *daily accumulations* (from 00 UTC to 00 UTC
#: the next day): J m-2 per day for the energy fluxes, m per day for the water fluxes.
ERA5_ACCUMULATED = frozenset(
    {"ssrd", "strd", "ssr", "str", "slhf", "sshf", "tp", "e", "pev", "ro", "sro", "ssro", "sf", "smlt", "evabs",
     "evaow", "evatc", "evavt"}
)  # fmt: skip

#: Names a latitude / longitude coordinate goes by in the products read here.
LAT_NAMES = ("latitude", "lat", "y")
LON_NAMES = ("longitude", "lon", "x")
TIME_NAMES = ("valid_time", "time")

#: GFED4.1s HDF5 datasets' units (the GFED4.1s readme; the files carry no units attributes).
GFED4_UNITS = {
    "C": FLUX_UNITS,
    "DM": "kg m-2 month-1",
    "burned_fraction": "1",
    "small_fire_fraction": "1",
    "grid_cell_area": "m2",
    "NPP": FLUX_UNITS,
    "Rh": FLUX_UNITS,
    "BB": FLUX_UNITS,
    "basis_regions": "1",
}

GFED4_LAYOUT = "the GFED4.1s layout (emissions/MM/C, burned_area/MM/burned_fraction, ancill/grid_cell_area, lat, lon)"

#: Default year (and month) pattern in a product's file names (GFED4.1s_2005.hdf5,
#: BA200505.nc, gfed500m_C_2005_h12v02.tif).
TIME_PATTERN = r"(?<!\d)(?P<year>(?:19|20)\d{2})(?:[-_]?(?P<month>0[1-9]|1[0-2]))?(?!\d)"


# ------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------


def _files(spec: LayerSpec) -> list[Path]:
    if not spec.files:
        raise InputError(spec.recipe or "<recipe>", "no files given", column=spec.name, expected="at least one file")
    for f in spec.files:
        if not Path(f).exists():
            raise InputError(f, "file not found", column=spec.name, expected=f"a {spec.product} file")
    return [Path(f) for f in spec.files]


def _sources(files: Iterable[Path]) -> str:
    return "; ".join(str(f) for f in files)


def _open_netcdf(path: Path, spec: LayerSpec) -> xr.Dataset:
    """Open a NetCDF file lazily (dask, the file's own chunks), times decoded with cftime so that
    any CF calendar (noleap, 360_day, ...) reads."""
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    errors = []
    for engine in ("h5netcdf", "netcdf4"):
        try:
            return xr.open_dataset(path, engine=engine, chunks={}, decode_times=coder)
        except Exception as exc:  # each engine raises its own types for a file it cannot read
            errors.append(f"{engine}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise InputError(path, "cannot be opened as NetCDF (" + "; ".join(errors) + ")", column=spec.name,
                     expected=f"a NetCDF file of the {spec.product} product")  # fmt: skip


def _pick_variable(ds: xr.Dataset, spec: LayerSpec, path: Path, default: str | None = None) -> xr.DataArray:
    name = spec.variable or default
    if name is None:
        data = [v for v in ds.data_vars if ds[v].ndim >= 2]
        if len(data) != 1:
            raise InputError(path, "several data variables and no `variable` in the recipe", column=spec.name,
                             expected=f"`variable` = one of {sorted(map(str, ds.data_vars))}")  # fmt: skip
        name = str(data[0])
    if name not in ds.data_vars:
        raise InputError(path, f"variable {name!r} not found", column=spec.name,
                         expected=f"one of {sorted(map(str, ds.data_vars))}")  # fmt: skip
    return ds[name]


def _coord_name(da: xr.DataArray, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in da.dims:
            return n
    return None


def month_starts(values: Any, file: Path | str, variable: str) -> np.ndarray:
    """``datetime64[ns]`` first day of each time step's month, from datetime64 or cftime values
    (any calendar). Mid-month stamps (CMIP6 ``2001-01-16 12:00``) map to their month."""
    out = []
    for v in np.asarray(values).ravel():
        if isinstance(v, np.datetime64):
            ts = pd.Timestamp(v)
            y, m = ts.year, ts.month
        else:
            y, m = int(v.year), int(v.month)
        out.append(np.datetime64(f"{y:04d}-{m:02d}-01", "ns"))
    arr = np.array(out, dtype="datetime64[ns]")
    if arr.size > 1:
        dup = np.flatnonzero(arr[1:] == arr[:-1])
        if dup.size:
            raise InputError(file, "two time steps fall in the same month", column=variable,
                             where=f"time step {int(dup[0]) + 1} ({str(arr[dup[0]])[:7]})",
                             expected="monthly time steps (one per month)")  # fmt: skip
    return arr


def days_in_month(values: Any) -> np.ndarray:
    """Days in each time step's month in the time axis's own calendar (cftime: ``noleap`` February
    has 28 days, ``360_day`` months 30; datetime64 is the proleptic Gregorian calendar)."""
    import cftime

    out = []
    for v in np.asarray(values).ravel():
        if isinstance(v, np.datetime64):
            out.append(pd.Timestamp(v).days_in_month)
            continue
        cal = v.calendar
        y, m = int(v.year), int(v.month)
        start = cftime.datetime(y, m, 1, calendar=cal)
        end = cftime.datetime(y + (m == 12), m % 12 + 1, 1, calendar=cal)
        out.append((end - start).days)
    return np.asarray(out, dtype=np.float64)


def _regular(c: np.ndarray, file: Path | str, what: str, variable: str) -> np.ndarray:
    """Coordinates made exactly regular when they are regular to 1e-4 of a step (float32
    round-off in the files), else an error: the source-layer contract needs a regular grid."""
    c = np.asarray(c, dtype=np.float64)
    if c.size < 2:
        raise InputError(file, f"`{what}` has fewer than 2 values", column=variable, expected="a 2-D grid")
    step = (c[-1] - c[0]) / (c.size - 1)
    ideal = c[0] + step * np.arange(c.size)
    if step == 0 or np.abs(c - ideal).max() > 1e-4 * abs(step):
        i = int(np.argmax(np.abs(np.diff(c) - step)))
        raise InputError(file, f"`{what}` is not regularly spaced", column=variable,
                         where=f"between index {i} and {i + 1} ({c[i]:g}, {c[i + 1]:g})",
                         expected="a regular lat/lon grid (regrid Gaussian grids first, e.g. cdo remapcon)")  # fmt: skip
    return ideal


def latlon_layer(da: xr.DataArray, file: Path | str, variable: str) -> xr.DataArray:
    """A lat/lon DataArray as a source layer's grid: ``y``/``x`` dims, longitudes rolled into
    -180..180 ascending, latitude order kept, coordinates exactly regular, ``crs_wkt`` set."""
    import pyproj

    lat = _coord_name(da, LAT_NAMES)
    lon = _coord_name(da, LON_NAMES)
    if lat is None or lon is None:
        raise InputError(file, f"no latitude/longitude dimensions (dims {da.dims})", column=variable,
                         expected="dimensions latitude/longitude or lat/lon")  # fmt: skip
    da = da.rename({lat: "y", lon: "x"}) if (lat, lon) != ("y", "x") else da
    x = np.asarray(da["x"].values, dtype=np.float64)
    xw = ((x + 180.0) % 360.0) - 180.0
    if not np.array_equal(xw, x) or not bool((np.diff(x) > 0).all()):
        order = np.argsort(xw, kind="stable")
        keep = np.concatenate([[True], np.diff(xw[order]) > 1e-9])  # 0 and 360 both present
        order = order[keep]
        da = da.isel(x=order).assign_coords(x=xw[order])
    da = da.assign_coords(
        x=_regular(da["x"].values, file, "longitude", variable),
        y=_regular(da["y"].values, file, "latitude", variable),
    )
    da["x"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    da["y"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    da.attrs["crs_wkt"] = pyproj.CRS.from_user_input(GEOGRAPHIC_CRS).to_wkt()
    return da


def _drop_extras(da: xr.DataArray, keep: tuple[str, ...] = ("time",) + LAT_NAMES + LON_NAMES) -> xr.DataArray:
    """Drop non-dimension coordinates (ERA5 ``number``/``expver``, GRIB ``step``/``surface``,
    CMIP6 bounds) so that concatenation and writing see only time/y/x."""
    extra = [c for c in da.coords if c not in keep or c not in da.dims]
    return da.drop_vars(extra)


def _apply_spec(da: xr.DataArray, spec: LayerSpec, file: Path | str) -> xr.DataArray:
    """The recipe's ``fill_value`` / ``scale_factor`` / ``add_offset`` / ``valid_range`` on decoded
    values (after the file's own CF packing), as the generic readers apply them."""
    if spec.fill_value is not None:
        da = da.where(da != spec.fill_value)
    if spec.scale_factor != 1.0 or spec.add_offset != 0.0:
        da = da * spec.scale_factor + spec.add_offset
    if spec.valid_range is not None:
        lo, hi = spec.valid_range
        da = da.where((da >= lo) & (da <= hi))
    return da


def _finish(da: xr.DataArray, spec: LayerSpec, files: list[Path], units: str, frequency: str,
            **attrs: Any) -> xr.DataArray:  # fmt: skip
    dims = tuple(d for d in ("time", "y", "x") if d in da.dims)
    da = da.transpose(*dims)
    if not np.issubdtype(da.dtype, np.floating):
        da = da.astype(np.float32)
    crs = da.attrs.get("crs_wkt")
    da.attrs = {"units": units, "frequency": frequency, "source_files": _sources(files), **attrs}
    if crs is not None:
        da.attrs["crs_wkt"] = crs
    da.name = spec.name
    for k in ("_FillValue", "missing_value", "scale_factor", "add_offset"):
        da.encoding.pop(k, None)
    return da


def _concat_time(parts: list[xr.DataArray], files: list[Path], variable: str) -> xr.DataArray:
    """Concatenate per-file pieces along ``time``, sorted; a month in two files is an error."""
    da = parts[0] if len(parts) == 1 else xr.concat(parts, dim="time", join="exact", coords="minimal",
                                                    compat="override")  # fmt: skip
    t = da["time"].values
    order = np.argsort(t, kind="stable")
    ts = t[order]
    dup = np.flatnonzero(ts[1:] == ts[:-1])
    if dup.size:
        raise InputError(_sources(files), f"the month {str(ts[dup[0]])[:7]} is in two files", column=variable,
                         expected="each month in one file only")  # fmt: skip
    if not np.array_equal(order, np.arange(order.size)):
        da = da.isel(time=order)
    return da


def _year_month(path: Path, pattern: str | None, spec: LayerSpec) -> tuple[int, int | None]:
    m = re.search(pattern or TIME_PATTERN, path.name)
    if m is None or "year" not in m.groupdict() or m.group("year") is None:
        raise InputError(path, "no year in the file name", column=spec.name,
                         expected=f"a name matching options.time_pattern {pattern or TIME_PATTERN!r}")  # fmt: skip
    month = m.groupdict().get("month")
    return int(m.group("year")), (int(month) if month else None)


# ------------------------------------------------------------------------------------------
# ERA5-Land
# ------------------------------------------------------------------------------------------


def _open_grib(path: Path, spec: LayerSpec) -> xr.Dataset:
    try:
        import cfgrib  # noqa: F401  (the engine registers itself)
    except ImportError as exc:  # pragma: no cover - cfgrib is a declared dependency
        raise InputError(path, "GRIB needs cfgrib and eccodes", column=spec.name,
                         expected="`pip install abzflux[grib]`, or NetCDF from the CDS") from exc  # fmt: skip
    coder = xr.coders.CFDatetimeCoder(use_cftime=False)
    try:
        return xr.open_dataset(path, engine="cfgrib", chunks={}, decode_times=coder,
                               backend_kwargs={"indexpath": ""})  # fmt: skip
    except Exception as exc:  # cfgrib/eccodes raise many types for a bad file
        raise InputError(path, f"cannot be read as GRIB ({exc})", column=spec.name,
                         expected="an ERA5-Land GRIB file") from exc  # fmt: skip


def _era5_time(da: xr.DataArray, path: Path, variable: str) -> xr.DataArray:
    """One ``time`` dimension of month starts: the CDS NetCDF's ``valid_time`` (2024 CDS), the
    old ``time``, or GRIB's ``time`` (with a length-1 ``step`` squeezed)."""
    if "step" in da.dims:
        if da.sizes["step"] != 1:
            raise InputError(path, f"{da.sizes['step']} forecast steps per month", column=variable,
                             expected="monthly means (one step per month)")  # fmt: skip
        da = da.isel(step=0)
    tname = _coord_name(da, TIME_NAMES)
    if tname is None:
        for name in TIME_NAMES:  # a single month: a scalar time coordinate
            if name in da.coords and da[name].ndim == 0:
                da = da.expand_dims(name)
                tname = name
                break
    if tname is None:
        raise InputError(path, f"no time dimension (dims {da.dims})", column=variable,
                         expected="`valid_time` (CDS NetCDF) or `time`")  # fmt: skip
    if tname != "time":
        da = da.drop_vars("time", errors="ignore").rename({tname: "time"})
    return da.assign_coords(time=month_starts(da["time"].values, path, variable))


def _era5_merge_expver(da: xr.DataArray, path: Path, variable: str) -> xr.DataArray:
    """The old CDS NetCDF had an ``expver`` *dimension* when a request mixed final ERA5 (0001)
    and preliminary ERA5T (0005): each month is valid in one of them; the first non-missing is
    kept (final before preliminary). ``number`` (the ensemble member) must be a single one."""
    if "number" in da.dims:
        if da.sizes["number"] != 1:
            raise InputError(path, f"{da.sizes['number']} ensemble members", column=variable,
                             expected="the reanalysis (one member)")  # fmt: skip
        da = da.isel(number=0)
    if "expver" in da.dims:
        ev = [str(v) for v in da["expver"].values]
        order = sorted(range(len(ev)), key=lambda i: ev[i])
        merged = da.isel(expver=order[0])
        for i in order[1:]:
            merged = merged.combine_first(da.isel(expver=i))
        da = merged
    return da


def read_era5_land(spec: LayerSpec) -> xr.DataArray:
    """ERA5-Land monthly averaged reanalysis (CDS ``reanalysis-era5-land-monthly-means``).

    NetCDF as the CDS delivers it since 2024 (``valid_time``, ``latitude`` descending, ``longitude``
    0-360, scalar ``number`` and a per-step ``expver`` coordinate), the older layout (``time``,
    an ``expver`` dimension when ERA5T is mixed in), or GRIB through cfgrib. Several files (one
    per year) are concatenated. Accumulated variables (``ssrd``, ``strd``, ``tp``, ...: mean daily
    accumulations in the monthly means) are divided by 86400 s: J m-2 -> W m-2, m -> m s-1;
    ``options.accumulated`` overrides the detection. Other variables keep their units (``stl1``
    K, ``swvl1`` m3 m-3, ``snowc`` %).
    """
    files = _files(spec)
    parts, units = [], None
    accumulated = spec.options.get("accumulated")
    name = spec.variable or ""
    for path in files:
        grib = path.suffix.lower() in (".grib", ".grb", ".grib2", ".grb2")
        ds = _open_grib(path, spec) if grib else _open_netcdf(path, spec)
        da = _pick_variable(ds, spec, path)
        name = str(da.name)
        u = spec.units or da.attrs.get("units") or da.attrs.get("GRIB_units")
        if u is None:
            raise InputError(path, "no units attribute", column=name, expected="`units` in the recipe")
        if units is not None and u != units:
            raise InputError(path, f"units {u!r} differ from {units!r} in {files[0]}", column=name,
                             expected="the same units in every file")  # fmt: skip
        units = u
        if accumulated is None:
            accumulated = name in ERA5_ACCUMULATED or da.attrs.get("GRIB_stepType") in ("accum", "avgad", "avgas")
        da = _era5_merge_expver(da, path, name)
        da = _era5_time(da, path, name)
        da = latlon_layer(_drop_extras(da), path, name)
        parts.append(da)
    da = _concat_time(parts, files, name)
    assert units is not None
    if accumulated:
        if linear_conversion(units, "J m-2") is not None:
            da = da * (linear_conversion(units, "J m-2")[0] / SECONDS_PER_DAY)  # type: ignore[index]
            units = "W m-2"
        else:
            da = da / SECONDS_PER_DAY
            units = f"{units} s-1"
        log.info("%s: %s is a mean daily accumulation; divided by 86400 s -> %s", spec.name, name, units)
    da = _apply_spec(da, spec, files[0])
    return _finish(da, spec, files, units, "monthly", long_name=f"ERA5-Land {name}")


# ------------------------------------------------------------------------------------------
# TerraClimate
# ------------------------------------------------------------------------------------------


def read_terraclimate(spec: LayerSpec) -> xr.DataArray:
    """TerraClimate yearly files ``TerraClimate_<var>_<YYYY>.nc``: ``(time, lat, lon)`` at 1/24°,
    latitude descending, int16 packed with ``scale_factor``/``add_offset``/``_FillValue`` (decoded
    here by xarray's CF decoding), units in the ``units`` attribute (``srad`` W/m^2, ``vpd`` kPa,
    ``tmax`` degC). The 12 monthly steps of each file become month starts."""
    files = _files(spec)
    parts, units, name = [], None, spec.variable or ""
    for path in files:
        ds = _open_netcdf(path, spec)
        da = _pick_variable(ds, spec, path)
        name = str(da.name)
        u = spec.units or da.attrs.get("units")
        if u is None:
            raise InputError(path, "no units attribute", column=name, expected="`units` in the recipe")
        if units is not None and u != units:
            raise InputError(path, f"units {u!r} differ from {units!r} in {files[0]}", column=name,
                             expected="the same units in every file")  # fmt: skip
        units = u
        if "time" not in da.dims:
            raise InputError(path, f"no `time` dimension (dims {da.dims})", column=name,
                             expected="(time, lat, lon)")  # fmt: skip
        da = da.assign_coords(time=month_starts(da["time"].values, path, name))
        parts.append(latlon_layer(_drop_extras(da), path, name))
    da = _concat_time(parts, files, name)
    da = _apply_spec(da, spec, files[0])
    assert units is not None
    return _finish(da, spec, files, units, "monthly", long_name=f"TerraClimate {name}")


# ------------------------------------------------------------------------------------------
# NOAA GML monthly record
# ------------------------------------------------------------------------------------------

#: A NOAA GML value at or below this is a missing-value code (-999.99, -99.99, ...).
GML_MISSING_BELOW = 0.0


def read_noaa_gml(spec: LayerSpec) -> xr.DataArray:
    """NOAA GML monthly text record (``co2_brw_surface-insitu_1_ccgg_MonthlyData.txt`` or the
    flask ``..._month.txt``): ``#`` comment lines (the header; ``# data_fields:`` names the columns
    in older files), then whitespace-separated rows ``site_code year month [...] value [...]``,
    optionally after an uncommented column-name line. Columns are found by name (``year``,
    ``month``, ``value``, ``qcflag``) or by position (site, year, month, value). A value at or below 0
    (-999.99, -99.99) is missing; a ``qcflag`` whose first character is not ``.`` marks a rejected
    month (missing). ``options.site`` keeps one site code when the file has several.
    Returns a ``(time,)`` series in ppm (µmol mol-1)."""
    files = _files(spec)
    site = spec.options.get("site")
    rows: dict[np.datetime64, float] = {}
    for path in files:
        names: list[str] | None = None
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise InputError(path, f"cannot be read ({exc})", column=spec.name) from exc
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = re.match(r"#\s*data_fields\s*:\s*(.*)", line)
                if m:
                    names = m.group(1).split()
                continue
            tok = line.split()
            if names is None and not re.fullmatch(r"\d{4}", tok[1] if len(tok) > 1 else ""):
                names = tok  # the column-name line
                continue
            cols = names or ["site_code", "year", "month", "value"]
            idx = {n.lower(): i for i, n in enumerate(cols)}
            iy, im = idx.get("year", 1), idx.get("month", 2)
            iv = idx.get("value", idx.get("average", 3))
            iq = idx.get("qcflag")
            try:
                year, month, value = int(tok[iy]), int(tok[im]), float(tok[iv])
            except (IndexError, ValueError) as exc:
                raise InputError(path, f"cannot read the row {line[:60]!r}", column=spec.name,
                                 where=f"line {lineno}",
                                 expected="site year month value [...] (whitespace separated)") from exc  # fmt: skip
            if site is not None and tok[idx.get("site_code", idx.get("site", 0))].lower() != str(site).lower():
                continue
            if not 1 <= month <= 12:
                raise InputError(path, f"month {month}", column=spec.name, where=f"line {lineno}",
                                 expected="1-12")  # fmt: skip
            if value <= GML_MISSING_BELOW or (iq is not None and len(tok) > iq and not tok[iq].startswith(".")):
                value = np.nan
            t = np.datetime64(f"{year:04d}-{month:02d}-01", "ns")
            if t in rows:
                raise InputError(path, f"{year}-{month:02d} appears twice", column=spec.name,
                                 where=f"line {lineno}", expected="one row per month (set options.site)")  # fmt: skip
            rows[t] = value
    if not rows:
        raise InputError(_sources(files), "no data rows", column=spec.name,
                         expected="rows `site year month value`" + (f" for site {site!r}" if site else ""))  # fmt: skip
    time = np.array(sorted(rows), dtype="datetime64[ns]")
    da = xr.DataArray(np.array([rows[t] for t in time], dtype=np.float64), dims=("time",), coords={"time": time})
    da = _apply_spec(da, spec, files[0])
    return _finish(da, spec, files, spec.units or "ppm", "monthly", long_name="NOAA GML monthly CO2")


# ------------------------------------------------------------------------------------------
# GFED4.1s (yearly HDF5)
# ------------------------------------------------------------------------------------------


def _h5(path: Path, spec: LayerSpec):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"cannot be opened as HDF5 ({exc})", column=spec.name,
                         expected="a GFED4.1s yearly HDF5 file") from exc  # fmt: skip


def _h5_dataset(h5, key: str, path: Path, spec: LayerSpec) -> np.ndarray:
    if key not in h5:
        raise InputError(path, f"no dataset {key!r}", column=spec.name, expected=GFED4_LAYOUT)
    return np.asarray(h5[key][()], dtype=np.float64)


def _h5_read(path: str, key: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as h5:
        return np.asarray(h5[key][()], dtype=np.float32)


def _h5_lazy(path: Path, key: str, shape: tuple[int, int]) -> Any:
    """A dask array reading one HDF5 dataset when computed (float32)."""
    import dask
    import dask.array as dsa

    return dsa.from_delayed(dask.delayed(_h5_read)(str(path), key), shape=shape, dtype=np.float32)


def read_gfed4(spec: LayerSpec) -> xr.DataArray:
    """GFED4.1s yearly HDF5 (``GFED4.1s_<YYYY>.hdf5``, ``..._beta.hdf5``): 720 x 1440 at 0.25°,
    latitude descending, 2-D ``lat``/``lon`` datasets; ``variable`` is a dataset path, with
    ``{MM}`` for the month (``emissions/{MM}/C`` g C m-2 month-1, ``burned_area/{MM}/burned_fraction``
    0-1); without ``{MM}`` it is static (``ancill/grid_cell_area`` m2, from the first file). The
    year comes from the file name (``options.time_pattern``)."""
    files = _files(spec)
    var = spec.variable
    if not var:
        raise InputError(spec.recipe or "<recipe>", "no `variable`", column=spec.name,
                         expected="a GFED4.1s dataset path, e.g. 'emissions/{MM}/C'")  # fmt: skip
    leaf = var.rstrip("/").split("/")[-1]
    units = spec.units or GFED4_UNITS.get(leaf)
    if units is None:
        raise InputError(spec.recipe or "<recipe>", f"units of {var!r} unknown", column=spec.name,
                         expected=f"`units` in the recipe (known: {sorted(GFED4_UNITS)})")  # fmt: skip
    monthly = "{MM}" in var
    chosen = files if monthly else files[:1]
    times: list[np.datetime64] = []
    planes: list[Any] = []
    lat = lon = None
    for path in chosen:
        year = _year_month(path, spec.options.get("time_pattern"), spec)[0] if monthly else None
        with _h5(path, spec) as h5:
            la = _h5_dataset(h5, "lat", path, spec)
            lo = _h5_dataset(h5, "lon", path, spec)
            la1 = la[:, 0] if la.ndim == 2 else la
            lo1 = lo[0, :] if lo.ndim == 2 else lo
            if lat is None or lon is None:
                lat, lon = la1, lo1
            elif not (np.allclose(la1, lat) and np.allclose(lo1, lon)):
                raise InputError(path, "its lat/lon grid differs from the first file's", column=spec.name,
                                 expected="the same 0.25° grid in every year")  # fmt: skip
            for month in range(1, 13) if monthly else (None,):
                key = var.replace("{MM}", f"{month:02d}") if month else var
                if key not in h5:
                    raise InputError(path, f"no dataset {key!r}", column=spec.name, expected=GFED4_LAYOUT)
                if h5[key].shape != (la1.size, lo1.size):
                    raise InputError(path, f"{key} has shape {h5[key].shape}", column=spec.name,
                                     expected=f"(lat, lon) = {(la1.size, lo1.size)}")  # fmt: skip
                planes.append(_h5_lazy(path, key, (la1.size, lo1.size)))
                if month:
                    times.append(np.datetime64(f"{year:04d}-{month:02d}-01", "ns"))
    assert lat is not None and lon is not None
    import dask.array as dsa

    if monthly:
        da = xr.DataArray(dsa.stack(planes), dims=("time", "lat", "lon"),
                          coords={"time": np.array(times), "lat": lat, "lon": lon})  # fmt: skip
        da = _concat_time([da], chosen, var)
    else:
        da = xr.DataArray(planes[0], dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    da = latlon_layer(da, chosen[0], var)
    da = _apply_spec(da, spec, chosen[0])
    return _finish(da, spec, chosen, units, "monthly" if monthly else "static", long_name=f"GFED4.1s {var}")


# ------------------------------------------------------------------------------------------
# GFED 500 m / GFED5
# ------------------------------------------------------------------------------------------


def _spherical_cell_area_km2(lat: np.ndarray, dlat: float, dlon: float) -> np.ndarray:
    """Area (km2) of lat/lon cells centred on ``lat`` on the authalic sphere (R = 6371.007 km)."""
    r = 6371.0072
    lo = np.radians(np.clip(lat - abs(dlat) / 2, -90, 90))
    hi = np.radians(np.clip(lat + abs(dlat) / 2, -90, 90))
    return r * r * np.radians(abs(dlon)) * np.abs(np.sin(hi) - np.sin(lo))


@dataclass(frozen=True)
class _Tile:
    """One GeoTIFF tile placed on the mosaic's pixel lattice."""

    path: str
    row: int
    col: int
    height: int
    width: int
    nodata: float | None
    scale: float
    offset: float


#: Mosaic chunk (pixels along y and x): one MODIS 500-m tile is 2400 x 2400.
MOSAIC_CHUNK = 2400


def _mosaic_block(dummy: np.ndarray, tiles: tuple[_Tile, ...], block_info: dict | None = None) -> np.ndarray:
    """One chunk of a tile mosaic, read from the tiles that overlap it (NaN elsewhere)."""
    import rasterio
    from rasterio.windows import Window

    assert block_info is not None
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    out = np.full((r1 - r0, c1 - c0), np.nan, dtype=np.float32)
    for t in tiles:
        rr0, rr1 = max(r0, t.row), min(r1, t.row + t.height)
        cc0, cc1 = max(c0, t.col), min(c1, t.col + t.width)
        if rr0 >= rr1 or cc0 >= cc1:
            continue
        with rasterio.open(t.path) as src:
            raw = src.read(1, window=Window(cc0 - t.col, rr0 - t.row, cc1 - cc0, rr1 - rr0))
        vals = raw.astype(np.float32) * np.float32(t.scale) + np.float32(t.offset)
        if t.nodata is not None:
            vals[raw == t.nodata] = np.nan
        dst = out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        np.copyto(dst, vals, where=np.isfinite(vals))
    return out


def _gfed500_tiffs(spec: LayerSpec, files: list[Path]) -> xr.DataArray:
    """500-m GeoTIFF tiles (MODIS sinusoidal, hXXvYY), one or more per year or month: the tiles of
    each time step are mosaicked lazily (dask; read chunk by chunk) on one pixel lattice, in the
    files' own CRS."""
    import dask.array as dsa
    import pyproj
    import rasterio

    groups: dict[tuple[int, int | None], list[Path]] = {}
    for path in files:
        groups.setdefault(_year_month(path, spec.options.get("time_pattern"), spec), []).append(path)
    monthly = {m is None for _, m in groups}
    if len(monthly) != 1:
        raise InputError(_sources(files), "some file names have a month and some not", column=spec.name,
                         expected="all annual (YYYY) or all monthly (YYYYMM) files")  # fmt: skip
    annual = monthly == {True}
    meta: dict[Path, tuple] = {}
    units = spec.units
    for path in files:
        try:
            with rasterio.open(path) as s:
                crs = s.crs.to_wkt() if s.crs else spec.crs
                if crs is None:
                    raise InputError(path, "no CRS", column=spec.name,
                                     expected="a GeoTIFF with a CRS (MODIS sinusoidal), or `crs` in the recipe")  # fmt: skip
                units = units or s.tags(1).get("units") or s.tags().get("units")
                meta[path] = (pyproj.CRS.from_user_input(crs), s.transform, s.height, s.width, s.nodata,
                              (s.scales or (1.0,))[0], (s.offsets or (0.0,))[0])  # fmt: skip
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(path, f"cannot be opened as a raster ({exc})", column=spec.name,
                             expected="GeoTIFF tiles of the GFED 500-m product") from exc  # fmt: skip
    if units is None:
        raise InputError(_sources(files), "no units in the GeoTIFF tags", column=spec.name,
                         expected="`units` in the recipe (e.g. 'g C m-2 year-1' or '1')")  # fmt: skip
    crs0, tr0 = meta[files[0]][0], meta[files[0]][1]
    res_x, res_y = tr0.a, tr0.e
    for path, (crs, tr, *_rest) in meta.items():
        if crs != crs0 or not (np.isclose(tr.a, res_x) and np.isclose(tr.e, res_y)) or tr.b or tr.d:
            raise InputError(path, "its CRS or pixel size differs from the first tile's", column=spec.name,
                             expected=f"tiles of one grid ({files[0]})")  # fmt: skip
    west = min(m[1].c for m in meta.values())
    north = max(m[1].f for m in meta.values())
    east = max(m[1].c + m[3] * res_x for m in meta.values())
    south = min(m[1].f + m[2] * res_y for m in meta.values())
    nx, ny = int(round((east - west) / res_x)), int(round((south - north) / res_y))
    tiles_of: dict[Path, _Tile] = {}
    for path, (_crs, tr, h, w, nodata, scale, offset) in meta.items():
        col, row = (tr.c - west) / res_x, (tr.f - north) / res_y
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            raise InputError(path, "the tile is not on the pixel lattice of the others", column=spec.name,
                             expected="tiles of one grid (MODIS sinusoidal tiles align)")  # fmt: skip
        tiles_of[path] = _Tile(str(path), int(round(row)), int(round(col)), h, w, nodata, scale, offset)
    chunks = (min(MOSAIC_CHUNK, ny), min(MOSAIC_CHUNK, nx))
    planes, times = [], []
    for (year, month), paths in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        dummy = dsa.zeros((ny, nx), chunks=chunks, dtype=np.uint8)
        tiles = tuple(tiles_of[p] for p in paths)
        planes.append(dsa.map_blocks(_mosaic_block, dummy, tiles=tiles, dtype=np.float32))
        times.append(np.datetime64(f"{year:04d}-{(month or 1):02d}-01", "ns"))
    x = west + res_x * (np.arange(nx) + 0.5)
    y = north + res_y * (np.arange(ny) + 0.5)
    da = xr.DataArray(dsa.stack(planes), dims=("time", "y", "x"), coords={"time": np.array(times), "y": y, "x": x},
                      attrs={"crs_wkt": crs0.to_wkt(), "units_hint": units, "annual": int(annual)})  # fmt: skip
    return da


def _spread_annual(da: xr.DataArray, units: str, spec: LayerSpec) -> tuple[xr.DataArray, str]:
    """An annual total spread over its 12 months in proportion to their days (keeps the annual
    sum; no seasonality): g C m-2 year-1 -> g C m-2 month-1, a burned fraction -> per month."""
    steps = []
    for t in da["time"].values:
        year = pd.Timestamp(t).year
        ndays = 366.0 if calendar.isleap(year) else 365.0
        months = pd.date_range(f"{year}-01-01", periods=12, freq="MS")
        share = xr.DataArray(months.days_in_month.to_numpy() / ndays, dims=("time",),
                             coords={"time": months.values.astype("datetime64[ns]")})  # fmt: skip
        steps.append(da.sel(time=t, drop=True) * share)
    out = xr.concat(steps, dim="time")
    out.attrs = dict(da.attrs)
    new_units = re.sub(r"\b(year|yr|a)-1\b", "month-1", units) if re.search(r"\b(year|yr|a)-1\b", units) else units
    log.info("%s: annual totals spread over months by days (%s -> %s)", spec.name, units, new_units)
    return out, new_units


def read_gfed500(spec: LayerSpec) -> xr.DataArray:
    """The GFED-based 500-m fire product (van Wees et al. 2022, GMD 15, 8411; the paper's ref. 21)
    and the GFED5 burned-area NetCDF.

    - GeoTIFF tiles (``.tif``) on the MODIS sinusoidal 500-m grid, one file (or one per tile) per
      year or month; year/month from the file name. Units from the recipe or the band's
      ``units`` tag. ``options.spread_annual = true`` spreads annual totals over the months by
      their days (annual sums kept; the paper uses annual fire emissions and burned fraction).
    - NetCDF in the GFED5 burned-area layout (``BAYYYYMM.nc``: ``(time, lat, lon)``, latitude
      ascending -89.875..89.875, longitude -179.875..179.875, ``Total``/``Norm``/``Peat``/``Defo``/
      ``Crop`` in km2 of burned area per 0.25° cell per month). ``options.to_fraction = true``
      divides the burned area by the cell's area (sphere), giving a burned fraction (0-1).
    """
    files = _files(spec)
    tif = [f for f in files if f.suffix.lower() in (".tif", ".tiff")]
    if tif and len(tif) != len(files):
        raise InputError(_sources(files), "GeoTIFF and other files mixed", column=spec.name,
                         expected="one kind of file per layer")  # fmt: skip
    if tif:
        da = _gfed500_tiffs(spec, files)
        units = da.attrs.pop("units_hint")
        annual = bool(da.attrs.pop("annual"))
        frequency = "annual" if annual else "monthly"
        if annual and spec.options.get("spread_annual", False):
            da, units = _spread_annual(da, units, spec)
            frequency = "monthly"
        da = _apply_spec(da, spec, files[0])
        return _finish(da, spec, files, units, frequency, long_name="GFED 500 m")
    parts, units = [], spec.units
    name = spec.variable or "Total"
    for path in files:
        ds = _open_netcdf(path, spec)
        da = _pick_variable(ds, spec, path, default="Total")
        if "iLCT" in da.dims:  # GFED5 `Norm`: burned area per land-cover type; summed
            da = da.sum("iLCT", min_count=1)
        units = units or da.attrs.get("units") or "km2"
        if "time" not in da.dims:
            raise InputError(path, f"no `time` dimension (dims {da.dims})", column=name,
                             expected="(time, lat, lon) as in BAYYYYMM.nc")  # fmt: skip
        da = da.assign_coords(time=month_starts(da["time"].values, path, name))
        parts.append(latlon_layer(_drop_extras(da), path, name))
    da = _concat_time(parts, files, name)
    assert units is not None
    if spec.options.get("to_fraction", False):
        conv = linear_conversion(units, "km2")
        if conv is None:
            raise InputError(files[0], f"units {units!r} are not an area", column=name,
                             expected="burned area per cell (km2) for options.to_fraction")  # fmt: skip
        y = da["y"].values
        area = _spherical_cell_area_km2(y, float(y[1] - y[0]), float(da["x"].values[1] - da["x"].values[0]))
        da = da * conv[0] / xr.DataArray(area, dims=("y",), coords={"y": y})
        units = "1"
    da = _apply_spec(da, spec, files[0])
    return _finish(da, spec, files, units, "monthly", long_name=f"GFED5 {name}")


# ------------------------------------------------------------------------------------------
# carbon-flux products: inversions, CMIP6, FLUXCOM-X
# ------------------------------------------------------------------------------------------

_CARBON_TOKEN = re.compile(r"(?<=[gl])\s*(?:CO2|C)(?![A-Za-z0-9])")  # kgC, g C, mol CO2 (after g / mol)
_CO2 = re.compile(r"CO2")
_MONTH = re.compile(r"\b(months?|mon)\b")


def flux_factor(units: str) -> tuple[str, float]:
    """How a carbon-flux unit becomes g C m-2 month-1: ``("month", f)`` (already per month:
    multiply by ``f``), ``("second", f)`` (multiply by ``f`` x seconds in the step's month) or raise
    ``ValueError``. Handles mass (kg, g) and molar (mol, µmol: x 12.011 g/mol) carbon, CO2 mass
    (x 12.011/44.0095), ``kgC``/``gC`` spellings, per s / d / yr / month."""
    u = str(units).strip()
    co2_mass = bool(_CO2.search(u)) and not re.search(r"mol", u)
    clean = _CARBON_TOKEN.sub("", u)
    clean = re.sub(r"\bmon\b", "month", clean)
    extra = CARBON_G_PER_MOL / CO2_G_PER_MOL if co2_mass else 1.0
    per, suffix = ("month", "month-1") if _MONTH.search(clean) else ("second", "s-1")
    conv = linear_conversion(clean, f"g m-2 {suffix}")
    if conv is not None:
        return per, conv[0] * extra
    conv = linear_conversion(clean, f"mol m-2 {suffix}")
    if conv is not None:
        return per, conv[0] * CARBON_G_PER_MOL
    raise ValueError(units)


#: Default sign convention and fire inclusion of each product kind / variable name.
DEFAULT_SIGN = {"nbp": "nbp", "nep": "nep", "nee": "nee", "netatmoslandco2flux": "nee"}
DEFAULT_FIRE = {"inversion": True, "fluxcom": False}
CMIP6_FIRE = {"nbp": True, "nep": False, "netatmoslandco2flux": True}


def _flux_reader(kind: str) -> Callable[[LayerSpec], xr.DataArray]:
    def read(spec: LayerSpec) -> xr.DataArray:
        return read_flux(spec, kind)

    read.__name__ = f"read_{kind}"
    read.__doc__ = f"{kind} carbon-flux NetCDF -> NEE in g C m-2 month-1 (see :func:`read_flux`)."
    return read


def read_flux(spec: LayerSpec, kind: str) -> xr.DataArray:
    """A gridded carbon flux (an atmospheric inversion, a CMIP6 ``nbp``/``nep`` output, FLUXCOM-X)
    as NEE in g C m-2 month-1 on its lat/lon grid.

    - units per time step: a rate per second / day / year (kg m-2 s-1, mol m-2 s-1,
      g C m-2 d-1, ...) is multiplied by the step's seconds (days in its month in the file's
      calendar x 86400), a molar flux by 12.011 g/mol; a per-month unit by its factor only;
    - sign: ``options.sign`` = ``nee`` (positive = source), ``nbp`` or ``nep`` (positive = uptake;
      negated). Default from the variable name (``nbp``, ``nep``, ``nee``); otherwise required;
    - ``options.fire_included`` (default: inversions yes, CMIP6 ``nbp`` yes / ``nep`` no, FLUXCOM
      no) and ``options.name`` (the contract's ``product`` attribute) become attributes;
    - time: month starts of any CF calendar (noleap, 360_day: cftime); mid-month stamps allowed;
    - grid: ``lat``/``lon`` or ``latitude``/``longitude`` (bounds dropped), 0-360 rolled.
    """
    files = _files(spec)
    parts: list[xr.DataArray] = []
    name = spec.variable or ""
    for path in files:
        ds = _open_netcdf(path, spec)
        da = _pick_variable(ds, spec, path)
        name = str(da.name)
        units = spec.units or da.attrs.get("units")
        if units is None:
            raise InputError(path, "no units attribute", column=name,
                             expected="`units` in the recipe (e.g. 'kg m-2 s-1')")  # fmt: skip
        try:
            how, factor = flux_factor(units)
        except ValueError:
            raise InputError(path, f"units {units!r} are not a carbon flux per area", column=name,
                             expected="kg m-2 s-1, mol m-2 s-1, g C m-2 d-1, g C m-2 month-1, ...") from None  # fmt: skip
        tname = _coord_name(da, ("time",))
        if tname is None:
            raise InputError(path, f"no `time` dimension (dims {da.dims})", column=name,
                             expected="(time, lat, lon)")  # fmt: skip
        tvals = da["time"].values
        if how == "second":
            scale = factor * SECONDS_PER_DAY * days_in_month(tvals)
        else:
            scale = np.full(len(tvals), factor)
        da = da.assign_coords(time=month_starts(tvals, path, name))
        da = da * xr.DataArray(scale, dims=("time",), coords={"time": da["time"].values})
        for extra in [d for d in da.dims if d not in ("time",) + LAT_NAMES + LON_NAMES]:
            if da.sizes[extra] != 1:
                raise InputError(path, f"extra dimension {extra!r} of size {da.sizes[extra]}", column=name,
                                 expected="(time, lat, lon)")  # fmt: skip
            da = da.isel({extra: 0})
        parts.append(latlon_layer(_drop_extras(da), path, name))
    da = _concat_time(parts, files, name)
    sign = spec.options.get("sign") or DEFAULT_SIGN.get(name.lower())
    if sign not in SIGNS:
        raise InputError(spec.recipe or "<recipe>", f"sign convention of {name!r} unknown ({sign!r})",
                         column=spec.name, expected='options.sign = "nee" | "nbp" | "nep"')  # fmt: skip
    if SIGNS[sign] < 0:
        da = -da
        log.info("%s: %s is positive for uptake (%s); negated to NEE", spec.name, name, sign)
    fire = spec.options.get("fire_included")
    if fire is None:
        fire = CMIP6_FIRE.get(name.lower(), False) if kind == "cmip6" else DEFAULT_FIRE.get(kind, False)
    da = _apply_spec(da, spec, files[0])
    return _finish(da, spec, files, FLUX_UNITS, "monthly", product=str(spec.options.get("name", spec.name)),
                   fire_included=int(bool(fire)), sign_convention=sign, long_name=f"NEE from {kind} {name}")  # fmt: skip


#: Reader-specific ``options`` keys each product understands (for the recipe's unknown-key check;
#: build-level keys such as ``keep_grid`` or ``year_fallback`` are the recipe's own).
PRODUCT_OPTIONS: dict[str, frozenset[str]] = {
    "era5_land": frozenset({"accumulated"}),
    "terraclimate": frozenset(),
    "noaa_gml": frozenset({"site"}),
    "gfed4": frozenset({"time_pattern"}),
    "gfed500": frozenset({"time_pattern", "spread_annual", "to_fraction"}),
    "inversion": frozenset({"sign", "fire_included", "name"}),
    "cmip6": frozenset({"sign", "fire_included", "name"}),
    "fluxcom": frozenset({"sign", "fire_included", "name"}),
}

#: The named products' readers: ``READERS[spec.product](spec)`` returns a source layer.
READERS: dict[str, Callable[[LayerSpec], xr.DataArray]] = {
    "era5_land": read_era5_land,
    "terraclimate": read_terraclimate,
    "noaa_gml": read_noaa_gml,
    "gfed4": read_gfed4,
    "gfed500": read_gfed500,
    "inversion": _flux_reader("inversion"),
    "cmip6": _flux_reader("cmip6"),
    "fluxcom": _flux_reader("fluxcom"),
}


__all__ = ["PRODUCT_OPTIONS", "READERS", "days_in_month", "flux_factor", "latlon_layer", "month_starts", "read_flux"]
