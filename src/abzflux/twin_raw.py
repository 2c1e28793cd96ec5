"""The twin's world as raw public products, in their real layouts, plus a ``prepare`` recipe.

:func:`make_raw_twin` writes, into one directory (docs/prepare_rawtwin.md):

* ``contract/``: the contract twin (:func:`abzflux.twin.make_twin`), the source of every raw
  file and the truth that ``abzflux prepare`` + ``abzflux run`` on the raw files are judged by;
* ``era5_land/``: ERA5-Land-like monthly means as the new CDS delivers them (NetCDF,
  ``valid_time``, descending ``latitude``, ``longitude`` 0-360, ``number``, ``expver``;
  ``stl1`` K, ``swvl1`` m3 m-3, ``snowc`` %), one file per year;
* ``terraclimate/``: TerraClimate-like yearly NetCDF per variable (``srad`` W m-2, ``vpd`` kPa),
  int16 packed with ``scale_factor`` / ``add_offset`` / ``_FillValue``, lat descending;
* ``modis/``: MOD13A3-like NDVI (int16 x 0.0001, fill -3000) and MOD11A2-like monthly LST
  (uint16 x 0.02 K, fill 0) GeoTIFF mosaics in the MODIS sinusoidal projection, one per month,
  with cloud gaps; ``mod44b/``: MOD44B-like yearly cover percentages (uint8, 200 = water);
* static layers: ``merit/`` CTI (EPSG:4326), ``soilgrids/`` pH x 10 and SOC stock in t ha-1
  (int16, Interrupted Goode Homolosine), ``permafrost/`` UiO-like probability (uint8 %, EPSG:3995),
  ``landcover/`` ESA-CCI+CAVM-like vegetation classes on a grid finer than the twin's (water 210);
* ``noaa/``: the NOAA GML Barrow monthly CO2 text record;
* ``gfed/``: GFED4.1s-like yearly HDF5 (``emissions/MM/C``, ``burned_area/MM/burned_fraction``,
  ``ancill/grid_cell_area``, 2-D ``lat``/``lon``);
* ``vector/``: RESOLVE-like biomes, an IPA-like permafrost zonation and Natural-Earth-like
  countries (GeoPackage), polygonised from the twin's zone rasters;
* ``inversions/`` (kg m-2 s-1, positive = source, fire included) and ``cmip6/`` (``nbp``,
  kg m-2 s-1, positive = uptake, ``noleap``), from the twin's reference products;
* ``recipe.toml`` (the ``abzflux prepare`` recipe for all of the above) and ``raw.json``
  (grids, files, timings).

Each raw value is the twin's value of the twin cell that holds the raw cell's centre (nearest
cell: the twin's fields are cell means, constant over a cell), converted to the product's units
and packing; cells outside the twin's domain are the product's no-data. Fluxes and burned area
on the GFED grid are rescaled per twin cell so that their area totals are the twin's.
Grids are *twin-scaled* by default (:func:`twin_scaled_grids`: lat/lon steps near a quarter of
the twin's spacing, MODIS-like pixels near half of it), or the products' own
(:data:`NATIVE_GRIDS`, large).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer
from scipy.ndimage import gaussian_filter

from .domain import BIOMES, CRS_EPSG, REGIONS
from .twin import TwinSpec, co2_barrow, make_twin

log = logging.getLogger(__name__)

#: MODIS sinusoidal sphere radius (m) and tile size (m); the tile grid's upper-left corner.
MODIS_RADIUS = 6371007.181
MODIS_TILE = 1111950.5197665233
MODIS_ORIGIN = (-20015109.355798, 10007554.677899)
MODIS_CRS = f"+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R={MODIS_RADIUS} +units=m +no_defs"
#: SoilGrids 250m v2.0's projection (Interrupted Goode Homolosine).
SOILGRIDS_CRS = "+proj=igh +lat_0=0 +lon_0=0 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
#: The UiO / ESA CCI permafrost maps' projection (WGS 84 / Arctic Polar Stereographic).
PERMAFROST_EPSG = 3995
#: Lat/lon steps (degrees) a twin-scaled grid may take: the real products' and their multiples.
NICE_STEPS_DEG = (1 / 120, 1 / 24, 0.05, 0.1, 0.125, 0.25, 0.5, 1.0, 2.0)
#: Metres per degree of latitude (mean).
M_PER_DEG = 111_320.0
#: The CMIP6-like product's grid (CESM2's f09: 1.25 x 0.9375 degrees), global, both modes.
CMIP6_STEP_DEG = (1.25, 0.9375)
#: Missing value of CMIP6 output and of the NOAA GML text records.
CMIP6_FILL = np.float32(1.0e20)
NOAA_MISSING = -999.99
#: First year of the NOAA Barrow in-situ record; the two months before the twin's first year
#: written as missing (as the real record has gaps), outside the twin's years.
NOAA_FIRST_YEAR = 1973
#: Packing of the raw products (workflow.md §5 and the products' user guides).
NDVI_SCALE, NDVI_FILL, NDVI_VALID = 0.0001, -3000, (-2000, 10000)
LST_SCALE, LST_FILL = 0.02, 0
MOD44B_WATER, MOD44B_FILL = 200, 253
SOILGRIDS_FILL = -32768
TERRACLIMATE_FILL = -32768
TERRACLIMATE_SCALE = {"srad": 0.1, "vpd": 0.01}
PERMAFROST_FILL = 255
CTI_FILL = -9999.0
LANDCOVER_WATER, LANDCOVER_NODATA = 210, 0
#: Share of MODIS pixels lost to clouds each month (the gaps ``prepare`` fills).
CLOUD_FRACTION = 0.05
#: Carbon share of burned dry matter (GFED's DM from C), g C per g DM.
CARBON_PER_DM = 0.48
#: RESOLVE Ecoregions2017 biome numbers of the twin's biomes (1 boreal, 2 tundra).
RESOLVE_BIOME = {1: (6, "Boreal Forests/Taiga"), 2: (11, "Tundra")}
#: IPA-like permafrost extent classes from the twin's permafrost probability: lower bounds.
#: The twin's permafrost region (probability >= 0.15) is C + D + S; I lies outside it.
PERMAFROST_ZONES = (("C", 0.9), ("D", 0.5), ("S", 0.15), ("I", 0.05))
#: Ural longitude of the paper's region rule (Russia east of it is Siberia).
URAL_LON = 60.0
#: GFED basis regions of the twin's regions (BONA 2, EURO 7, BOAS 10).
GFED_BASIS = {1: 2, 2: 2, 3: 7, 4: 10}
EARTH_RADIUS = 6371007.2
DAYS_NOLEAP = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class RawGrids:
    """Cell sizes of the raw products."""

    era5_deg: float  # ERA5-Land-like
    terraclimate_deg: float
    gfed_deg: float
    cti_deg: float  # MERIT-like CTI
    soilgrids_m: float  # Homolosine metres
    permafrost_m: float  # polar stereographic metres
    modis_px_per_tile: int  # NDVI, LST and MOD44B: pixels per 1111950.5-m MODIS tile side
    landcover_m: float | None  # fine land-cover cell (m); None: a tenth of the twin's spacing


#: The products' own grids (MERIT CTI and MOD44B at their 1-km aggregates, SoilGrids at its
#: 1000-m release): gigabytes per year at the domain's size.
NATIVE_GRIDS = RawGrids(
    era5_deg=0.1,
    terraclimate_deg=1 / 24,
    gfed_deg=0.25,
    cti_deg=1 / 120,
    soilgrids_m=1000.0,
    permafrost_m=1000.0,
    modis_px_per_tile=1200,
    landcover_m=1000.0,
)


def nice_step(deg: float) -> float:
    """The step of :data:`NICE_STEPS_DEG` nearest to ``deg`` (in log)."""
    return min(NICE_STEPS_DEG, key=lambda s: abs(math.log(s / deg)))


def twin_scaled_grids(resolution_km: float) -> RawGrids:
    """Raw grids scaled to a twin of ``resolution_km``: lat/lon steps near a quarter of its
    spacing, projected rasters at a quarter, MODIS-like pixels near half, land cover a tenth."""
    res = resolution_km * 1000.0
    deg = nice_step(res / 4 / M_PER_DEG)
    return RawGrids(
        era5_deg=deg,
        terraclimate_deg=deg,
        gfed_deg=deg,
        cti_deg=deg,
        soilgrids_m=res / 4,
        permafrost_m=res / 4,
        modis_px_per_tile=max(1, round(MODIS_TILE / (res / 2))),
        landcover_m=None,
    )


# --------------------------------------------------------------------------- the twin's world
class TwinWorld:
    """The contract twin's grid, zones and files, and a lookup from points to its cells."""

    def __init__(self, contract: Path):
        self.dir = contract
        info = json.loads((contract / "twin.json").read_text())
        self.spec = TwinSpec(**info["spec"])
        self.years = list(range(self.spec.first_year, self.spec.last_year + 1))
        with xr.open_dataset(contract / "zones.nc", engine="h5netcdf") as z:
            z = z.load()
        self.x, self.y = z.x.values.astype(np.float64), z.y.values.astype(np.float64)
        self.res = float(abs(self.x[1] - self.x[0]))
        self.shape = (self.y.size, self.x.size)
        self.land_fraction = np.nan_to_num(z.land_fraction.values.astype(np.float64))
        self.mask = self.land_fraction > 0
        self.biome = np.nan_to_num(z.biome.values).astype(np.int16)
        self.region = np.nan_to_num(z.region.values).astype(np.int16)
        self.cell_area = z.cell_area.values.astype(np.float64) if "cell_area" in z else np.full(self.shape, self.res**2)
        self.crs = CRS.from_epsg(CRS_EPSG)
        self.to_grid = Transformer.from_crs(4326, CRS_EPSG, always_xy=True)
        X, Y = np.meshgrid(self.x, self.y)
        self.lon, self.lat = Transformer.from_crs(CRS_EPSG, 4326, always_xy=True).transform(X, Y)
        self.predictors = xr.open_zarr(contract / "predictors.zarr", consolidated=False)
        self.fire = xr.open_zarr(contract / "fire.zarr", consolidated=False)
        self.south = float(np.floor(self.lat[self.mask].min() - 2 * self.res / M_PER_DEG))
        self.transform = (float(self.x[0] - self.res / 2), float(self.y[0] + self.res / 2))  # upper-left corner

    def index_xy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Flat index of the domain cell holding each grid point (x, y), -1 outside."""
        x0, y0 = self.transform
        with np.errstate(invalid="ignore"):
            ix = np.floor((np.asarray(x) - x0) / self.res)
            iy = np.floor((y0 - np.asarray(y)) / self.res)
        ok = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (ix < self.shape[1]) & (iy >= 0) & (iy < self.shape[0])
        ixi, iyi = np.where(ok, ix, 0).astype(np.intp), np.where(ok, iy, 0).astype(np.intp)
        ok &= self.mask[iyi, ixi]
        return np.where(ok, iyi * self.shape[1] + ixi, -1)

    def index_lonlat(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Flat index of the domain cell holding each (lon, lat) point, -1 outside."""
        lon, lat = np.broadcast_arrays(np.asarray(lon, np.float64), np.asarray(lat, np.float64))
        ok = np.isfinite(lon) & np.isfinite(lat)
        x, y = self.to_grid.transform(np.where(ok, lon, 0.0), np.where(ok, lat, 0.0))
        return np.where(ok, self.index_xy(x, y), -1)

    def year(self, name: str, year: int) -> np.ndarray:
        """A dynamic predictor's 12 months of ``year`` (12, ny, nx) float64."""
        return self.predictors[name].sel(time=str(year)).values.astype(np.float64)

    def static(self, name: str) -> np.ndarray:
        return self.predictors[name].values.astype(np.float64)

    def close(self) -> None:
        self.predictors.close()
        self.fire.close()


def sample(field: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Values of a (..., ny, nx) twin field at flat indices ``idx`` (NaN where -1)."""
    lead = field.shape[:-2]
    flat = field.reshape(*lead, -1)
    out = flat[..., np.where(idx >= 0, idx, 0)]
    return np.where(idx >= 0, out, np.nan)


def _lat_band(step: float, south: float, centred: bool) -> np.ndarray:
    """Descending latitudes from the pole to ``south``: points (90, 90-step, ...) or cell centres."""
    n = round((90.0 - south) / step) + (0 if centred else 1)
    k = np.arange(n)
    return np.round(90.0 - (k + 0.5) * step if centred else 90.0 - k * step, 9)


def _lon_axis(step: float, start: float, centred: bool) -> np.ndarray:
    n = round(360.0 / step)
    return np.round(start + (np.arange(n) + (0.5 if centred else 0.0)) * step, 9)


def _month_starts(year: int) -> pd.DatetimeIndex:
    return pd.date_range(f"{year}-01-01", periods=12, freq="MS")


def _days(times: pd.DatetimeIndex) -> np.ndarray:
    return times.days_in_month.to_numpy().astype(np.float64)


# --------------------------------------------------------------------------- NetCDF products
def write_era5_land(out: Path, w: TwinWorld, g: RawGrids) -> list[str]:
    """ERA5-Land-like monthly means, one NetCDF per year, as the new CDS delivers them."""
    lat = _lat_band(g.era5_deg, w.south, centred=False)
    lon = _lon_axis(g.era5_deg, 0.0, centred=False)  # 0..360
    idx = w.index_lonlat(np.where(lon > 180, lon - 360, lon)[None, :], lat[:, None])
    variables = {  # short name: (contract name, long name, units, standard name, GRIB paramId)
        "stl1": ("soil_temp", "Soil temperature level 1", "K", "surface_temperature", 139),
        "swvl1": ("soil_moisture", "Volumetric soil water layer 1", "m**3 m**-3", "unknown", 39),
        "snowc": ("snow_cover", "Snow cover", "%", "unknown", 260038),
    }
    (out / "era5_land").mkdir()
    files = []
    for year in w.years:
        times = _month_starts(year)
        ds = xr.Dataset(
            coords={
                "number": (
                    (),
                    np.int64(0),
                    {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"},
                ),
                "valid_time": ("valid_time", times, {"long_name": "time", "standard_name": "time"}),
                "latitude": (
                    "latitude",
                    lat,
                    {
                        "units": "degrees_north",
                        "standard_name": "latitude",
                        "long_name": "latitude",
                        "stored_direction": "decreasing",
                    },
                ),
                "longitude": (
                    "longitude",
                    lon,
                    {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
                ),
                "expver": ("valid_time", np.array(["0001"] * 12, dtype=object), {"long_name": "Experiment version"}),
            },
            attrs={
                "GRIB_centre": "ecmf",
                "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
                "GRIB_subCentre": 0,
                "Conventions": "CF-1.7",
                "institution": "European Centre for Medium-Range Weather Forecasts",
                "history": "abzflux raw twin: ERA5-Land-like monthly averaged reanalysis (reanalysis-era5-land-monthly-means)",
            },
        )
        for short, (name, long_name, units, std, pid) in variables.items():
            vals = sample(w.year(name, year), idx).astype(np.float32)
            ds[short] = (
                ("valid_time", "latitude", "longitude"),
                vals,
                {
                    "GRIB_paramId": pid,
                    "GRIB_shortName": short,
                    "GRIB_units": units,
                    "long_name": long_name,
                    "units": units,
                    "standard_name": std,
                    "GRIB_gridType": "regular_ll",
                },
            )
        enc = {
            v: {"zlib": True, "complevel": 1, "_FillValue": np.float32(np.nan), "chunksizes": (1, lat.size, lon.size)}
            for v in variables
        }
        enc["valid_time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
        name = f"era5_land/era5_land_monthly_means_{year}.nc"
        ds.to_netcdf(out / name, engine="h5netcdf", encoding=enc)
        files.append(name)
    return files


def write_terraclimate(out: Path, w: TwinWorld, g: RawGrids) -> list[str]:
    """TerraClimate-like yearly NetCDF per variable: int16 packed, lat descending, lon -180..180."""
    step = g.terraclimate_deg
    lat = _lat_band(step, w.south, centred=True)
    lon = _lon_axis(step, -180.0, centred=True)
    idx = w.index_lonlat(lon[None, :], lat[:, None])
    meta = {"srad": ("downwelling shortwave flux at the surface", "W/m^2"), "vpd": ("vapor pressure deficit", "kPa")}
    (out / "terraclimate").mkdir()
    files = []
    for var, (long_name, units) in meta.items():
        scale = TERRACLIMATE_SCALE[var]
        for year in w.years:
            vals = sample(w.year(var, year), idx)
            ds = xr.Dataset(
                {
                    var: (
                        ("time", "lat", "lon"),
                        vals,
                        {"long_name": long_name, "units": units, "description": f"twin {var}"},
                    )
                },
                coords={
                    "time": ("time", _month_starts(year), {"long_name": "time"}),
                    "lat": ("lat", lat, {"units": "degrees_north", "long_name": "latitude"}),
                    "lon": ("lon", lon, {"units": "degrees_east", "long_name": "longitude"}),
                },
                attrs={
                    "title": "TerraClimate-like monthly climate (abzflux raw twin)",
                    "Conventions": "CF-1.6",
                    "method": "twin predictor at the cell centre",
                },
            )
            enc: dict[str, dict[str, object]] = {
                var: {
                    "dtype": "int16",
                    "scale_factor": scale,
                    "add_offset": 0.0,
                    "_FillValue": np.int16(TERRACLIMATE_FILL),
                    "zlib": True,
                    "complevel": 1,
                    "chunksizes": (1, lat.size, lon.size),
                },
                "time": {"units": "days since 1900-01-01 00:00:00", "calendar": "gregorian", "dtype": "float64"},
            }
            name = f"terraclimate/TerraClimate_{var}_{year}.nc"
            ds.to_netcdf(out / name, engine="h5netcdf", encoding=enc)
            files.append(name)
    return files


# --------------------------------------------------------------------------- GeoTIFFs
#: Rows of a raster written at a time: memory stays bounded on the products' native grids.
BAND_ROWS = 512
#: Cloud blobs: pixels where smooth unit noise exceeds this (the 95 % quantile of N(0, 1)).
CLOUD_Z = 1.6448536269514722


@dataclass(frozen=True)
class RasterGrid:
    """A north-up raster: shape, corner, pixel size and CRS, and where its pixels' centres are."""

    shape: tuple[int, int]
    x0: float  # upper-left corner
    y0: float
    res: float
    crs: str

    @property
    def transform(self):
        from rasterio.transform import Affine

        return Affine(self.res, 0, self.x0, 0, -self.res, self.y0)

    def centres(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the pixel centres of rows r0..r1 (2-D)."""
        xs = self.x0 + (np.arange(self.shape[1]) + 0.5) * self.res
        ys = self.y0 - (np.arange(r0, r1) + 0.5) * self.res
        return np.meshgrid(xs, ys)


def twin_index(w: TwinWorld, grid: RasterGrid, r0: int, r1: int) -> np.ndarray:
    """Flat twin-cell index of the pixels of rows r0..r1: -1 off the domain, -2 off the map
    (outside the sinusoidal world's outline, in the Homolosine's interruptions)."""
    X, Y = grid.centres(r0, r1)
    crs = CRS.from_user_input(grid.crs)
    if crs.is_geographic:
        return w.index_lonlat(X, Y)
    if grid.crs == MODIS_CRS:  # the sinusoidal inverse on the sphere, exactly
        lat = np.rad2deg(Y / MODIS_RADIUS)
        with np.errstate(divide="ignore", invalid="ignore"):
            lon = np.rad2deg(X / (MODIS_RADIUS * np.cos(np.deg2rad(lat))))
        on_map = np.abs(lon) <= 180.0
        return np.where(on_map, w.index_lonlat(np.where(on_map, lon, np.nan), lat), -2)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(X, Y, errcheck=False)
    # A point off the map does not come back to itself.
    bx, by = Transformer.from_crs(4326, crs, always_xy=True).transform(lon, lat, errcheck=False)
    on_map = np.isfinite(lon) & np.isfinite(lat) & (np.hypot(bx - X, by - Y) < grid.res / 100)
    return np.where(on_map, w.index_lonlat(np.where(on_map, lon, np.nan), np.where(on_map, lat, np.nan)), -2)


def _tif_profile(grid: RasterGrid, dtype: str, nodata) -> dict:
    import rasterio

    return {
        "driver": "GTiff",
        "height": grid.shape[0],
        "width": grid.shape[1],
        "count": 1,
        "dtype": dtype,
        "crs": rasterio.crs.CRS.from_user_input(grid.crs),
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
        "tiled": grid.shape[0] >= 256 and grid.shape[1] >= 256,
    }


def write_tif(
    path: Path,
    grid: RasterGrid,
    dtype: str,
    nodata,
    band: Callable[[int, int], np.ndarray],
    **tags,
) -> None:
    """A single-band GeoTIFF written in bands of :data:`BAND_ROWS` rows: ``band(r0, r1)`` gives
    the raw values of rows r0..r1."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path, "w", **_tif_profile(grid, dtype, nodata)) as dst:
        for r0 in range(0, grid.shape[0], BAND_ROWS):
            r1 = min(grid.shape[0], r0 + BAND_ROWS)
            dst.write(band(r0, r1).astype(dtype), 1, window=Window(0, r0, grid.shape[1], r1 - r0))
        if tags:
            dst.update_tags(**tags)


def _band_index(w: TwinWorld, grid: RasterGrid, out: Path, name: str) -> np.ndarray:
    """The twin index of every pixel of ``grid`` (int32; -1 off the domain, -2 off the map),
    built band by band into a memory-mapped file under ``out`` when large."""
    n = grid.shape[0] * grid.shape[1]
    if n <= 2**24:
        idx = np.empty(grid.shape, np.int32)
    else:
        idx = np.lib.format.open_memmap(out / f".{name}.index.npy", mode="w+", dtype=np.int32, shape=grid.shape)
    for r0 in range(0, grid.shape[0], BAND_ROWS):
        r1 = min(grid.shape[0], r0 + BAND_ROWS)
        idx[r0:r1] = twin_index(w, grid, r0, r1)
    return idx


def sinusoidal_grid(w: TwinWorld, px_per_tile: int) -> RasterGrid:
    """A MODIS-like sinusoidal mosaic: whole tiles h00-h35, rows v00 down to the domain's south,
    on the MODIS tile grid's corner."""
    px = MODIS_TILE / px_per_tile
    y_south = MODIS_RADIUS * np.deg2rad(w.south)
    tiles_v = int(np.floor((MODIS_ORIGIN[1] - y_south) / MODIS_TILE)) + 1
    return RasterGrid((tiles_v * px_per_tile, 36 * px_per_tile), MODIS_ORIGIN[0], MODIS_ORIGIN[1], px, MODIS_CRS)


def clouds(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A cloud mask: smooth blobs of a few pixels over :data:`CLOUD_FRACTION` of the pixels
    (unit-variance smoothed noise above its 95 % quantile)."""
    f = gaussian_filter(rng.standard_normal(shape), sigma=1.0, mode="wrap")
    return f > CLOUD_Z * f.std()


def write_modis(out: Path, w: TwinWorld, g: RawGrids, rng: np.random.Generator) -> dict[str, list[str]]:
    """MOD13A3-like NDVI and MOD11A2-like monthly LST mosaics (one GeoTIFF per month) and
    MOD44B-like yearly cover percentages, in the MODIS sinusoidal projection."""
    grid = sinusoidal_grid(w, g.modis_px_per_tile)
    idx = _band_index(w, grid, out, "modis")
    (out / "modis").mkdir()
    (out / "mod44b").mkdir()
    files: dict[str, list[str]] = {"ndvi": [], "lst": [], "tree_pct": [], "nontree_pct": [], "nonveg_pct": []}
    cover_names = {
        "tree_pct": "Percent_Tree_Cover",
        "nontree_pct": "Percent_NonTree_Vegetation",
        "nonveg_pct": "Percent_NonVegetated",
    }
    for year in w.years:
        ndvi, lst = w.year("ndvi", year), w.year("lst", year)
        for k, t in enumerate(_month_starts(year)):
            doy = t.day_of_year
            seed = int(rng.integers(2**63))  # this month's clouds: the same in NDVI and LST

            def cloud(r0, r1, seed=seed):
                return clouds(np.random.default_rng([seed, r0]), (r1 - r0, grid.shape[1]))

            def ndvi_band(r0, r1, field=ndvi[k], cloud=cloud):
                i = idx[r0:r1]
                v = sample(field, i)
                raw = np.clip(np.round(v / NDVI_SCALE), *NDVI_VALID)
                return np.where((i >= 0) & ~cloud(r0, r1) & np.isfinite(v), raw, NDVI_FILL)

            def lst_band(r0, r1, field=lst[k], cloud=cloud):
                i = idx[r0:r1]
                v = sample(field, i) + 273.15
                raw = np.clip(np.round(v / LST_SCALE), 1, 65535)
                return np.where((i >= 0) & ~cloud(r0, r1) & np.isfinite(v), raw, LST_FILL)

            name = f"modis/MOD13A3.061__1_km_monthly_NDVI_doy{year}{doy:03d}_aid0001.tif"
            write_tif(out / name, grid, "int16", NDVI_FILL, ndvi_band, scale_factor=str(NDVI_SCALE), units="NDVI")
            files["ndvi"].append(name)
            name = f"modis/MOD11A2.061_LST_Day_1km_monthly_doy{year}{doy:03d}_aid0001.tif"
            write_tif(out / name, grid, "uint16", LST_FILL, lst_band, scale_factor=str(LST_SCALE), units="Kelvin")
            files["lst"].append(name)
        for var, sds in cover_names.items():
            mean = w.year(var, year).mean(0)  # the year's mean: an annual product

            def cover_band(r0, r1, mean=mean):
                i = idx[r0:r1]
                v = sample(mean, i)
                raw = np.where(np.isfinite(v), np.clip(np.round(v), 0, 100), MOD44B_WATER)
                return np.where(i >= -1, raw, MOD44B_FILL)

            name = f"mod44b/MOD44B.061_{sds}_doy{year}065_aid0001.tif"
            write_tif(out / name, grid, "uint8", MOD44B_FILL, cover_band, units="Percent", water=str(MOD44B_WATER))
            files[var].append(name)
    (out / ".modis.index.npy").unlink(missing_ok=True)  # the memory-mapped index of a large mosaic
    return files


def _static_tif(path: Path, w: TwinWorld, grid: RasterGrid, field: np.ndarray, encode, dtype: str, nodata, **tags):
    """A static layer: each pixel the twin's value at its cell, ``encode``d; ``nodata`` off the domain."""

    def band(r0, r1):
        v = sample(field, twin_index(w, grid, r0, r1))
        return np.where(np.isfinite(v), encode(v), nodata)

    write_tif(path, grid, dtype, nodata, band, **tags)


def write_statics(out: Path, w: TwinWorld, g: RawGrids, rng: np.random.Generator) -> dict[str, str]:
    """CTI (EPSG:4326), SoilGrids-like pH and SOC (Homolosine), UiO-like permafrost
    probability (polar stereographic) and the fine land-cover map (the twin's LAEA)."""
    files = {}
    # --- CTI, MERIT-like, EPSG:4326
    (out / "merit").mkdir()
    step = g.cti_deg
    grid = RasterGrid((round((90.0 - w.south) / step), round(360.0 / step)), -180.0, 90.0, step, "EPSG:4326")
    files["cti"] = "merit/cti_merit_like.tif"
    _static_tif(out / files["cti"], w, grid, w.static("cti"), lambda v: v, "float32", CTI_FILL)
    # --- SoilGrids-like, Interrupted Goode Homolosine
    (out / "soilgrids").mkdir()
    fwd = Transformer.from_crs(4326, SOILGRIDS_CRS, always_xy=True)
    _, y_top = fwd.transform(0.0, 89.999)
    _, y_bot = fwd.transform(0.0, w.south)
    res = g.soilgrids_m
    x_half = math.ceil(20037508.0 / res) * res
    y0, y1 = math.ceil(y_top / res) * res, math.floor(y_bot / res) * res
    grid = RasterGrid((round((y0 - y1) / res), round(2 * x_half / res)), -x_half, y0, res, SOILGRIDS_CRS)
    for key, name, units in (
        ("soil_ph", "soilgrids/phh2o_0-5cm_mean.tif", "pH*10"),
        ("soc_stock", "soilgrids/ocs_0-200cm_mean.tif", "t/ha"),
    ):
        # pH x 10; kg C m-2 x 10 = t C ha-1
        _static_tif(
            out / name, w, grid, w.static(key), lambda v: np.round(v * 10.0), "int16", SOILGRIDS_FILL, units=units
        )
        files[key] = name
    # --- permafrost probability, UiO-like, EPSG:3995, percent, covering the twin's grid
    (out / "permafrost").mkdir()
    to_ps = Transformer.from_crs(CRS_EPSG, PERMAFROST_EPSG, always_xy=True)
    x0, y0g = w.transform
    x1, y1g = x0 + w.shape[1] * w.res, y0g - w.shape[0] * w.res
    edge = np.linspace(0, 1, 65)
    bxs = np.r_[x0 + (x1 - x0) * edge, np.full(65, x1), x0 + (x1 - x0) * edge, np.full(65, x0)]
    bys = np.r_[np.full(65, y0g), y0g + (y1g - y0g) * edge, np.full(65, y1g), y0g + (y1g - y0g) * edge]
    px, py = to_ps.transform(bxs, bys)
    res = g.permafrost_m
    gx0, gx1 = math.floor(px.min() / res) * res, math.ceil(px.max() / res) * res
    gy1, gy0 = math.floor(py.min() / res) * res, math.ceil(py.max() / res) * res
    grid = RasterGrid((round((gy0 - gy1) / res), round((gx1 - gx0) / res)), gx0, gy0, res, f"EPSG:{PERMAFROST_EPSG}")
    files["permafrost_prob"] = "permafrost/UiO_PEX_PERPROB_like_NH.tif"
    _static_tif(
        out / files["permafrost_prob"],
        w,
        grid,
        w.static("permafrost_prob"),
        lambda v: np.clip(np.round(v * 100.0), 0, 100),
        "uint8",
        PERMAFROST_FILL,
        units="percent",
    )
    # --- land cover, finer than the twin's grid
    files["landcover"] = write_landcover(out, w, g, rng)
    return files


def write_landcover(out: Path, w: TwinWorld, g: RawGrids, rng: np.random.Generator) -> str:
    """An ESA-CCI+CAVM-like class map on a grid k times finer than the twin's (same corner):
    in each domain cell round(land fraction x k^2) fine cells (at least 1) are land with the
    cell's vegetation class, placed where a smooth random field is highest (lakes as blobs);
    the other fine cells are water (210). Share of land cells = the twin's land fraction."""
    import rasterio
    from rasterio.transform import Affine

    (out / "landcover").mkdir()
    k = 10 if g.landcover_m is None else max(1, round(w.res / g.landcover_m))
    fine = w.res / k
    veg = w.static("veg_type")
    ny, nx = w.shape
    name = f"landcover/esacci_cavm_like_{fine / 1000:g}km.tif"
    profile = {
        "driver": "GTiff",
        "height": ny * k,
        "width": nx * k,
        "count": 1,
        "dtype": "uint8",
        "crs": rasterio.crs.CRS.from_epsg(CRS_EPSG),
        "transform": Affine(fine, 0, w.transform[0], 0, -fine, w.transform[1]),
        "nodata": LANDCOVER_NODATA,
        "compress": "deflate",
        "tiled": True,
    }
    n_land = np.where(w.mask, np.maximum(np.round(w.land_fraction * k * k), 1), 0).astype(np.int64)
    band = max(1, 4096 // k)  # twin rows per write: bounded memory on fine grids
    with rasterio.open(out / name, "w", **profile) as dst:
        for r0 in range(0, ny, band):
            r1 = min(ny, r0 + band)
            field = gaussian_filter(rng.standard_normal(((r1 - r0) * k, nx * k)), sigma=max(k / 4, 0.5))
            blocks = field.reshape(r1 - r0, k, nx, k).transpose(0, 2, 1, 3).reshape(r1 - r0, nx, k * k)
            rank = np.argsort(np.argsort(-blocks, axis=-1), axis=-1)
            land = rank < n_land[r0:r1, :, None]
            code = np.where(land, np.nan_to_num(veg[r0:r1], nan=0)[:, :, None], LANDCOVER_WATER).astype(np.uint8)
            code = code.reshape(r1 - r0, nx, k, k).transpose(0, 2, 1, 3).reshape((r1 - r0) * k, nx * k)
            dst.write(code, 1, window=rasterio.windows.Window(0, r0 * k, nx * k, (r1 - r0) * k))
        dst.update_tags(water=str(LANDCOVER_WATER), classes="paper's ESA CCI + CAVM vegetation codes")
    return name


# --------------------------------------------------------------------------- CO2 record
NOAA_FIELDS = (
    "site_code year month day hour minute second datetime time_decimal midpoint_time value value_std_dev nvalue "
    "latitude longitude altitude elevation intake_height qcflag"
)


def write_noaa(out: Path, w: TwinWorld) -> str:
    """The NOAA GML Barrow in-situ monthly CO2 record (text, ``#`` header, -999.99 missing)."""
    (out / "noaa").mkdir()
    rows = []
    last = w.years[-1]
    missing = {(w.years[0] - 1, 2), (w.years[0] - 1, 3)}  # gaps outside the twin's years, as the real record has
    for year in range(min(NOAA_FIRST_YEAR, w.years[0]), last + 1):
        for month in range(1, 13):
            t = pd.Timestamp(year=year, month=month, day=1)
            mid = t + (t + pd.offsets.MonthBegin(1) - t) / 2
            dec = year + (t.day_of_year - 1) / (366 if t.is_leap_year else 365)
            mdec = year + (mid.day_of_year - 1 + mid.hour / 24) / (366 if t.is_leap_year else 365)
            if (year, month) in missing:
                val, sd, n, flag = NOAA_MISSING, -99.99, 0, "*.."
            else:
                val, sd, n, flag = float(co2_barrow(year, month)), 1.23, 28, "..."
            rows.append(
                f"BRW {year} {month} 1 0 0 0 {t:%Y-%m-%dT%H:%M:%SZ} {dec:.9f} {mdec:.9f} {val:.2f} {sd:.2f} {n} "
                "71.323 -156.611 27.0 11.0 16.0 " + flag
            )
    header = [
        "# comment: Atmospheric carbon dioxide dry air mole fractions, Barrow Atmospheric Baseline Observatory.",
        "# comment: abzflux raw twin: the twin's CO2 record in the layout of the NOAA GML in-situ monthly file.",
        "# comment: Units: micromol mol-1 (ppm), X2019 scale. Missing values are -999.99.",
        "# dataset_name: co2_brw_surface-insitu_1_ccgg_MonthlyData",
        "# dataset_parameter: co2",
        "# dataset_site_code: BRW",
        "# dataset_calibration_scale: CO2_X2019",
    ]
    lines = [f"# header_lines : {len(header) + 2}", *header, NOAA_FIELDS, *rows]
    name = "noaa/co2_brw_surface-insitu_1_ccgg_MonthlyData.txt"
    (out / name).write_text("\n".join(lines) + "\n")
    return name


# --------------------------------------------------------------------------- GFED
def _sphere_cell_area(lat_edges: np.ndarray, step_lon_deg: float) -> np.ndarray:
    """Area (m2) of lat/lon cells between consecutive latitude edges (degrees)."""
    s = np.sin(np.deg2rad(lat_edges))
    return EARTH_RADIUS**2 * np.deg2rad(step_lon_deg) * np.abs(s[:-1] - s[1:])


def write_gfed(out: Path, w: TwinWorld, g: RawGrids) -> list[str]:
    """GFED4.1s-like yearly HDF5: monthly C emissions (g C m-2 month-1, per m2 of grid cell),
    DM, burned fraction (of the grid cell) and the grid cell area, on a global grid.

    Per twin cell c with emission E_c (g C per m2 of land), land fraction f_c and area A_c, the
    grid cells g whose centres lie in c get E_c f_c A_c / S_c with S_c their summed area: the
    emissions' area total is the twin's exactly; burned area likewise."""
    step = g.gfed_deg
    lat = _lat_band(step, -90.0, centred=True)
    lon = _lon_axis(step, -180.0, centred=True)
    area = np.repeat(_sphere_cell_area(90.0 - np.arange(lat.size + 1) * step, step)[:, None], lon.size, axis=1)
    idx = w.index_lonlat(lon[None, :], lat[:, None])
    n_cells = w.mask.size
    ok = idx >= 0
    s_c = np.bincount(idx[ok], weights=area[ok], minlength=n_cells)  # grid area mapped to each twin cell
    scale_c = np.zeros(n_cells)
    has = s_c > 0
    scale_c[has] = (w.land_fraction.ravel() * w.cell_area.ravel())[has] / s_c[has]
    unmapped = w.mask.ravel() & ~has
    if unmapped.any():
        log.warning("GFED-like grid: %d domain cells hold no grid-cell centre (grid too coarse)", int(unmapped.sum()))
    factor = np.where(ok, scale_c[np.where(ok, idx, 0)], 0.0)
    basis = np.zeros(idx.shape, np.uint8)
    reg = w.region.ravel()
    for r, b in GFED_BASIS.items():
        basis[ok & (reg[np.where(ok, idx, 0)] == r)] = b
    (out / "gfed").mkdir()
    files = []
    gz = {"compression": "gzip", "compression_opts": 1}
    src, fac = idx[ok], factor[ok]  # only the grid cells on the twin's domain carry fire
    lat2, lon2 = (
        np.repeat(lat[:, None], lon.size, 1).astype(np.float32),
        np.repeat(lon[None, :], lat.size, 0).astype(np.float32),
    )
    for year in w.years:
        name = f"gfed/GFED4.1s_{year}.hdf5"
        fe = np.nan_to_num(w.fire.fire_emissions.sel(time=str(year)).values.astype(np.float64)).reshape(12, -1)
        bf = np.nan_to_num(w.fire.burned_fraction.sel(time=str(year)).values.astype(np.float64)).reshape(12, -1)
        with h5py.File(out / name, "w") as h:
            h.create_dataset("lat", data=lat2, **gz)
            h.create_dataset("lon", data=lon2, **gz)
            h.create_dataset("ancill/grid_cell_area", data=area.astype(np.float32), **gz)
            h.create_dataset("ancill/basis_regions", data=basis, **gz)
            for k in range(12):
                mm = f"{k + 1:02d}"
                c = np.zeros(area.shape)
                c[ok] = fe[k][src] * fac
                bfr = np.zeros(area.shape)
                bfr[ok] = np.clip(bf[k][src] * fac, 0.0, 1.0)
                h.create_dataset(f"emissions/{mm}/C", data=c.astype(np.float32), **gz)
                h.create_dataset(f"emissions/{mm}/DM", data=(c / CARBON_PER_DM / 1000.0).astype(np.float32), **gz)
                h.create_dataset(f"burned_area/{mm}/burned_fraction", data=bfr.astype(np.float32), **gz)
            h.attrs["title"] = "GFED4.1s-like monthly fire emissions (abzflux raw twin)"
        files.append(name)
    return files


# --------------------------------------------------------------------------- vector layers
def polygons(codes: np.ndarray, w: TwinWorld) -> dict[int, object]:
    """The twin grid's cells of each nonzero code, dissolved into one (multi)polygon per code,
    in the twin's CRS (metres)."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine

    tr = Affine(w.res, 0, w.transform[0], 0, -w.res, w.transform[1])
    parts: dict[int, list] = {}
    for geom, value in shapes(codes.astype(np.int32), mask=codes > 0, transform=tr, connectivity=4):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    return {c: shapely.union_all(p) for c, p in sorted(parts.items())}


def to_lonlat(geom, w: TwinWorld):
    """A polygon in the twin's north-polar LAEA as lon/lat (EPSG:4326), split at the
    antimeridian (the half-line x = 0, y > 0) so that no ring wraps around the globe."""
    import shapely

    tr = Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)
    geom = shapely.segmentize(geom, w.res / 8)
    big = 4e7
    out = []
    for sign, box in ((-1, shapely.box(-big, -big, 0, big)), (1, shapely.box(0, -big, big, big))):
        half = shapely.intersection(geom, box)
        if half.is_empty:
            continue

        def fn(xy, sign=sign):
            lon, lat = tr.transform(xy[:, 0], xy[:, 1])
            lon = np.where((np.abs(np.abs(lon) - 180.0) < 1e-7) | ((xy[:, 0] == 0) & (xy[:, 1] > 0)), 180.0 * sign, lon)
            lon = np.where((xy[:, 0] == 0) & (xy[:, 1] <= 0), 0.0, lon)
            return np.column_stack([lon, lat])

        out.append(shapely.transform(half, fn))
    merged = shapely.union_all(out) if len(out) > 1 else out[0]
    return shapely.make_valid(merged)


def to_crs(geom, w: TwinWorld, epsg: int):
    import shapely

    tr = Transformer.from_crs(CRS_EPSG, epsg, always_xy=True)
    geom = shapely.segmentize(geom, w.res / 8)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def polygonal(geom):
    """The polygons of a geometry (a collection's lines and points dropped) as one MultiPolygon."""
    import shapely

    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    return shapely.MultiPolygon(polys)


def _write_gpkg(path: Path, layer: str, geoms: list, fields: dict[str, np.ndarray], crs: str) -> None:
    import shapely
    from pyogrio.raw import write

    multi = [polygonal(g) for g in geoms]
    write(
        path,
        geometry=shapely.to_wkb(np.array(multi, dtype=object)),
        field_data=list(fields.values()),
        fields=list(fields),
        layer=layer,
        driver="GPKG",
        geometry_type="MultiPolygon",
        crs=crs,
    )


def country_codes(w: TwinWorld) -> np.ndarray:
    """A Natural-Earth-like ADM0_A3 code per domain cell (\"\" outside) consistent with the
    twin's region under the paper's rule (USA -> Alaska, CAN -> Canada, RUS east of the Ural
    and MNG -> Siberia, the rest -> Europe), with plausible countries by position: Greenland,
    Iceland, Norway (Svalbard included), Sweden, Finland, the Baltics, Russia west of the Ural."""
    lon, lat, reg = w.lon, w.lat, w.region
    out = np.full(w.shape, "", dtype=object)
    out[reg == 1] = "USA"
    out[reg == 2] = "CAN"
    sib = reg == 4
    out[sib] = np.where((lat[sib] < 52.0) & (lon[sib] > 87.0) & (lon[sib] < 120.0), "MNG", "RUS")
    eu = reg == 3
    e_lon, e_lat = lon[eu], lat[eu]
    code = np.select(
        [
            (e_lon < -30.0) | ((e_lon < -10.0) & (e_lat > 68.0)),
            (e_lon < -10.0),
            (e_lon < 0.0),
            (e_lat > 76.0) & (e_lon < 35.0),
            (e_lon < 12.0) | ((e_lat > 69.0) & (e_lon < 30.0)),
            (e_lon < 21.5) & (e_lat > 55.0),
            (e_lon < 30.5) & (e_lat > 59.8),
            (e_lon < 28.0) & (e_lat > 57.5),
            (e_lon < 28.0),
        ],
        ["GRL", "ISL", "GBR", "NOR", "NOR", "SWE", "FIN", "EST", "LVA"],
        default="RUS",
    )
    out[eu] = code
    return out


COUNTRY_NAMES = {
    "USA": ("United States of America", "North America"),
    "CAN": ("Canada", "North America"),
    "RUS": ("Russia", "Europe"),
    "MNG": ("Mongolia", "Asia"),
    "GRL": ("Greenland", "North America"),
    "ISL": ("Iceland", "Europe"),
    "GBR": ("United Kingdom", "Europe"),
    "NOR": ("Norway", "Europe"),
    "SWE": ("Sweden", "Europe"),
    "FIN": ("Finland", "Europe"),
    "EST": ("Estonia", "Europe"),
    "LVA": ("Latvia", "Europe"),
}


def paper_region(adm0: np.ndarray, lon: np.ndarray, ural_lon: float = URAL_LON) -> np.ndarray:
    """The paper's region codes (1 Alaska, 2 Canada, 3 Europe, 4 Siberia; 0 none) of country
    codes at longitudes ``lon``: USA Alaska, CAN Canada, RUS east of ``ural_lon`` and MNG
    Siberia, every other country Europe (Greenland included)."""
    adm0 = np.asarray(adm0, dtype=object)
    lon = np.asarray(lon, dtype=np.float64)
    out = np.where(adm0 == "", 0, 3)
    out = np.where(adm0 == "USA", 1, out)
    out = np.where(adm0 == "CAN", 2, out)
    out = np.where(((adm0 == "RUS") & (lon >= ural_lon)) | (adm0 == "MNG"), 4, out)
    return out.astype(np.int16)


def permafrost_zone_codes(prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """IPA-like extent class per cell: 4 C, 3 D, 2 S, 1 I, 0 none (see PERMAFROST_ZONES)."""
    out = np.zeros(prob.shape, np.int16)
    for code, (_, lo) in zip(range(len(PERMAFROST_ZONES), 0, -1), PERMAFROST_ZONES):
        out = np.where((out == 0) & mask & (np.nan_to_num(prob) >= lo), code, out)
    return out


def write_vectors(out: Path, w: TwinWorld) -> dict[str, str]:
    """RESOLVE-like biomes and Natural-Earth-like countries (EPSG:4326), an IPA-like permafrost
    zonation (EPSG:3995), as GeoPackages polygonised from the twin's zone rasters."""
    (out / "vector").mkdir()
    files = {}
    # --- biomes, one feature per biome and region (an ecoregion-like split)
    code = np.where(w.mask, w.biome * 10 + w.region, 0)
    polys = polygons(code, w)
    geoms: list = []
    fields: dict[str, list] = {k: [] for k in ("OBJECTID", "ECO_NAME", "BIOME_NUM", "BIOME_NAME", "REALM", "ECO_ID")}
    for i, (c, geom) in enumerate(polys.items()):
        b, r = divmod(c, 10)
        num, bname = RESOLVE_BIOME[b]
        geoms.append(to_lonlat(geom, w))
        fields["OBJECTID"].append(i + 1)
        fields["ECO_NAME"].append(f"{REGIONS[r - 1].title()} {BIOMES[b - 1]} (twin)")
        fields["BIOME_NUM"].append(float(num))
        fields["BIOME_NAME"].append(bname)
        fields["REALM"].append("Nearctic" if r in (1, 2) else "Palearctic")
        fields["ECO_ID"].append(900 + c)
    files["biome"] = "vector/resolve_ecoregions_like.gpkg"
    _write_gpkg(out / files["biome"], "Ecoregions2017", geoms, _arrays(fields), "EPSG:4326")
    # --- permafrost zonation
    zone = permafrost_zone_codes(w.static("permafrost_prob"), w.mask)
    polys = polygons(zone, w)
    labels = {len(PERMAFROST_ZONES) - i: z for i, (z, _) in enumerate(PERMAFROST_ZONES)}
    files["permafrost"] = "vector/permafrost_zonation_like.gpkg"
    _write_gpkg(
        out / files["permafrost"],
        "permaice",
        [to_crs(g_, w, PERMAFROST_EPSG) for g_ in polys.values()],
        _arrays({"EXTENT": [labels[c] for c in polys], "NUM_CODE": [int(c) for c in polys]}),
        f"EPSG:{PERMAFROST_EPSG}",
    )
    # --- countries
    adm = country_codes(w)
    names = sorted({a for a in adm.ravel() if a})
    polys = polygons(np.where(adm == "", 0, np.searchsorted(names, np.where(adm == "", names[0], adm)) + 1), w)
    iso = [names[c - 1] for c in polys]
    files["region"] = "vector/ne_admin0_countries_like.gpkg"
    _write_gpkg(
        out / files["region"],
        "ne_admin0_countries",
        [to_lonlat(g_, w) for g_ in polys.values()],
        _arrays(
            {
                "ADM0_A3": iso,
                "ISO_A3": iso,
                "NAME": [COUNTRY_NAMES[a][0] for a in iso],
                "CONTINENT": [COUNTRY_NAMES[a][1] for a in iso],
            }
        ),
        "EPSG:4326",
    )
    return files


def _arrays(fields: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=object if isinstance(v[0], str) else None) for k, v in fields.items()}


# --------------------------------------------------------------------------- references
def _month_bounds(times: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    start = times.to_numpy()
    end = (times + pd.offsets.MonthBegin(1)).to_numpy()
    return start, end


def write_inversion(out: Path, w: TwinWorld) -> str | None:
    """An inversion-like NetCDF (kg C m-2 s-1, positive = source, fire included) from the
    contract's ``ref_inversion.nc`` (g C m-2 month-1 on its 2-degree grid): the monthly sum
    divided by the month's seconds; times at mid-month with bounds."""
    src = w.dir / "ref_inversion.nc"
    if not src.exists():
        return None
    (out / "inversions").mkdir()
    with xr.open_dataset(src, engine="h5netcdf") as ref:
        ref = ref.load()
    times = pd.DatetimeIndex(ref.time.values)
    start, end = _month_bounds(times)
    secs = _days(times) * 86400.0
    flux = ref.nee.values.astype(np.float64) / 1000.0 / secs[:, None, None]
    mid = start + (end - start) / 2
    ds = xr.Dataset(
        {
            "flux_land": (
                ("time", "lat", "lon"),
                flux.astype(np.float32),
                {
                    "units": "kg m-2 s-1",
                    "long_name": "net land-atmosphere CO2 flux as carbon mass, fire emissions included",
                    "comment": "positive = flux into the atmosphere (source); mass of carbon; per m2 of land",
                },
            ),
            "time_bnds": (("time", "nv"), np.stack([start, end], 1)),
        },
        coords={
            "time": ("time", mid, {"bounds": "time_bnds", "long_name": "time"}),
            "lat": ("lat", ref.lat.values, {"units": "degrees_north"}),
            "lon": ("lon", ref.lon.values, {"units": "degrees_east"}),
        },
        attrs={
            "title": "inversion-like posterior land flux (abzflux raw twin)",
            "sign_convention": "positive upward (source to the atmosphere)",
            "fire_included": 1,
            "source": f"{src.name}: {ref.attrs.get('comment', '')}",
        },
    )
    y0, y1 = times.year.min(), times.year.max()
    name = f"inversions/inversion_like_monthly_{y0}-{y1}.nc"
    ds.to_netcdf(
        out / name,
        engine="h5netcdf",
        encoding={
            "time": {"units": "hours since 2000-01-01", "calendar": "standard"},
            "time_bnds": {"units": "hours since 2000-01-01", "calendar": "standard"},
            "flux_land": {"_FillValue": np.float32(np.nan), "zlib": True},
        },
    )
    return name


def write_cmip6(out: Path, w: TwinWorld) -> str | None:
    """A CMIP6-like ``nbp`` file (kg m-2 s-1, positive = uptake, per m2 of land, noleap,
    mid-month times with bounds, global 1.25 x 0.9375-degree grid, lon 0-360) from the
    contract's ``ref_process.nc``: nbp = -NEE / 1000 / (days of the noleap month x 86400)."""
    import cftime

    src = w.dir / "ref_process.nc"
    if not src.exists():
        return None
    (out / "cmip6").mkdir()
    dlon, dlat = CMIP6_STEP_DEG
    lat = np.round(-90.0 + (np.arange(round(180 / dlat)) + 0.5) * dlat, 9)
    lon = np.round((np.arange(round(360 / dlon)) + 0.5) * dlon, 9)
    idx = w.index_lonlat(np.where(lon > 180, lon - 360, lon)[None, :], lat[:, None])
    with xr.open_dataset(src, engine="h5netcdf") as ref:
        times = pd.DatetimeIndex(ref.time.values)
        nee = ref.nee.values.astype(np.float64)
    secs = DAYS_NOLEAP[times.month.to_numpy() - 1] * 86400.0
    nbp = -sample(nee, idx) / 1000.0 / secs[:, None, None]
    nbp = np.where(np.isfinite(nbp), nbp, CMIP6_FILL).astype(np.float32)
    t0 = [cftime.DatetimeNoLeap(t.year, t.month, 1) for t in times]
    t1 = [cftime.DatetimeNoLeap(t.year + (t.month == 12), t.month % 12 + 1, 1) for t in times]
    units, cal = "days since 1850-01-01 00:00:00", "noleap"
    b0, b1 = cftime.date2num(t0, units, cal), cftime.date2num(t1, units, cal)
    ds = xr.Dataset(
        {
            "nbp": (
                ("time", "lat", "lon"),
                nbp,
                {
                    "standard_name": "surface_net_downward_mass_flux_of_carbon_dioxide_expressed_as_carbon_due_to_all_land_processes",
                    "long_name": "Carbon Mass Flux out of Atmosphere Due to Net Biospheric Production on Land",
                    "units": "kg m-2 s-1",
                    "cell_methods": "area: mean where land time: mean",
                    "comment": "positive = uptake by the land (downward); fire not included in this twin product",
                    "_FillValue": CMIP6_FILL,
                    "missing_value": CMIP6_FILL,
                },
            ),
            "time_bnds": (("time", "bnds"), np.stack([b0, b1], 1), {}),
            "lat_bnds": (("lat", "bnds"), np.stack([lat - dlat / 2, lat + dlat / 2], 1)),
            "lon_bnds": (("lon", "bnds"), np.stack([lon - dlon / 2, lon + dlon / 2], 1)),
        },
        coords={
            "time": (
                "time",
                (b0 + b1) / 2,
                {"units": units, "calendar": cal, "bounds": "time_bnds", "standard_name": "time", "axis": "T"},
            ),
            "lat": (
                "lat",
                lat,
                {"units": "degrees_north", "standard_name": "latitude", "bounds": "lat_bnds", "axis": "Y"},
            ),
            "lon": (
                "lon",
                lon,
                {"units": "degrees_east", "standard_name": "longitude", "bounds": "lon_bnds", "axis": "X"},
            ),
        },
        attrs={
            "Conventions": "CF-1.7 CMIP-6.2",
            "activity_id": "CMIP",
            "experiment_id": "historical",
            "frequency": "mon",
            "table_id": "Lmon",
            "variable_id": "nbp",
            "grid_label": "gn",
            "source_id": "TWIN-ESM",
            "variant_label": "r1i1p1f1",
            "realm": "land",
            "title": "CMIP6-like nbp from the twin's process-model-like product (abzflux raw twin)",
        },
    )
    y0, y1 = times[0], times[-1]
    name = f"cmip6/nbp_Lmon_TWIN-ESM_historical_r1i1p1f1_gn_{y0:%Y%m}-{y1:%Y%m}.nc"
    ds.to_netcdf(out / name, engine="h5netcdf", encoding={"nbp": {"zlib": True}})
    return name


# --------------------------------------------------------------------------- recipe
def _q(s: str) -> str:
    """A TOML basic string."""
    return json.dumps(s)


def _layer(group: str, name: str, entry: dict, options: dict | None = None, comment: str = "") -> str:
    lines = [f"[{group}.{name}]" + (f"  # {comment}" if comment else "")]
    for k, v in entry.items():
        lines.append(f"{k} = {_toml_value(v)}")
    if options:
        lines.append(f"[{group}.{name}.options]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in options.items()]
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


#: File-name date of the MODIS-like GeoTIFFs (AppEEARS style ``doyYYYYDDD``).
DOY_PATTERN = r"doy(?P<year>\d{4})(?P<doy>\d{3})"


def recipe_toml(w: TwinWorld, files: dict, sites: str) -> str:
    """The ``abzflux prepare`` recipe (docs/prepare.md) for a raw twin's files."""
    x0, y1 = (float(v) for v in w.transform)
    x1, y0 = x0 + w.shape[1] * w.res, y1 - w.shape[0] * w.res
    lc = files["static"]["landcover"]
    era5 = "era5_land/era5_land_monthly_means_*.nc"
    doy = {"time_pattern": DOY_PATTERN}
    head = f"""# abzflux prepare recipe for the raw twin (abzflux twin-raw; docs/prepare_rawtwin.md).
# The twin: {w.spec.resolution_km:g} km, {w.years[0]}-{w.years[-1]}, seed {w.spec.seed}; its contract files and truth
# are in {Path(sites).parent.as_posix()}/.

[grid]
crs = "EPSG:{CRS_EPSG}"
resolution = {w.res!r}
extent = [{x0!r}, {y0!r}, {x1!r}, {y1!r}]

[time]
years = "{w.years[0]}-{w.years[-1]}"

[inputs]
sites = {_q(sites)}

[output]
tile = 512
"""
    P = "predictors"
    blocks = [
        _layer(
            P, "srad", {"product": "terraclimate", "files": ["terraclimate/TerraClimate_srad_*.nc"], "variable": "srad"}
        ),
        _layer(
            P, "vpd", {"product": "terraclimate", "files": ["terraclimate/TerraClimate_vpd_*.nc"], "variable": "vpd"}
        ),
        _layer(P, "co2", {"product": "noaa_gml", "files": [files["co2"]], "units": "ppm"}),
        _layer(
            P,
            "veg_type",
            {"files": [lc], "resample": "mode", "valid_range": [1, 200]},
            comment="210 water, 220 ice and 0 no data are not vegetation",
        ),
        _layer(P, "snow_cover", {"product": "era5_land", "files": [era5], "variable": "snowc"}),
        _layer(P, "soil_temp", {"product": "era5_land", "files": [era5], "variable": "stl1"}),
        _layer(P, "soil_moisture", {"product": "era5_land", "files": [era5], "variable": "swvl1"}),
        _layer(
            P,
            "ndvi",
            {
                "files": ["modis/MOD13A3.061__1_km_monthly_NDVI_doy*_aid0001.tif"],
                "units": "1",
                "scale_factor": NDVI_SCALE,
                "fill_value": NDVI_FILL,
                "valid_range": [-0.2, 1.0],
                "frequency": "monthly",
            },
            doy,
        ),
        _layer(
            P,
            "lst",
            {
                "files": ["modis/MOD11A2.061_LST_Day_1km_monthly_doy*_aid0001.tif"],
                "units": "K",
                "scale_factor": LST_SCALE,
                "fill_value": LST_FILL,
                "valid_range": [150.0, 350.0],
                "frequency": "monthly",
            },
            doy,
        ),
        _layer(P, "cti", {"files": [files["static"]["cti"]], "units": "1"}),
    ]
    for var, sds in (
        ("nontree_pct", "Percent_NonTree_Vegetation"),
        ("nonveg_pct", "Percent_NonVegetated"),
        ("tree_pct", "Percent_Tree_Cover"),
    ):
        blocks.append(
            _layer(
                P,
                var,
                {
                    "files": [f"mod44b/MOD44B.061_{sds}_doy*_aid0001.tif"],
                    "units": "%",
                    "valid_range": [0, 100],
                    "frequency": "annual",
                },
                doy,
                comment=f"{MOD44B_WATER} water, {MOD44B_FILL} fill",
            )
        )
    blocks += [
        _layer(
            P,
            "soil_ph",
            {"files": [files["static"]["soil_ph"]], "units": "1", "scale_factor": 0.1},
            comment="SoilGrids pH x 10",
        ),
        _layer(P, "soc_stock", {"files": [files["static"]["soc_stock"]], "units": "t ha-1"}),
        _layer(
            P, "permafrost_prob", {"files": [files["static"]["permafrost_prob"]], "units": "%", "valid_range": [0, 100]}
        ),
        _layer("zones", "land_fraction", {"files": [lc]}, {"water_values": [LANDCOVER_WATER, 220]}),
        _layer(
            "zones",
            "biome",
            {"files": [files["vector"]["biome"]]},
            {"field": "BIOME_NUM", "classes": {RESOLVE_BIOME[1][0]: "boreal", RESOLVE_BIOME[2][0]: "tundra"}},
        ),
        _layer(
            "zones",
            "region",
            {"files": [files["vector"]["region"]]},
            {"field": "ADM0_A3", "rule": "paper", "ural_lon": URAL_LON},
        ),
        _layer(
            "zones",
            "permafrost",
            {"files": [files["vector"]["permafrost"]]},
            {
                "field": "EXTENT",
                "values": {z: (0.0 if z == "I" else 1.0) for z, _ in PERMAFROST_ZONES},
                "mode": "mask",
                "per": "cell",
            },
            comment="the twin's permafrost region (a 0/1 mask): C, D and S over half the cell",
        ),
        _layer(
            "fire",
            "fire_emissions",
            {"product": "gfed4", "files": ["gfed/GFED4.1s_*.hdf5"], "variable": "emissions/{MM}/C"},
            comment="g C per m2 of grid cell; the contract's is per m2 of land",
        ),
        _layer(
            "fire",
            "burned_fraction",
            {"product": "gfed4", "files": ["gfed/GFED4.1s_*.hdf5"], "variable": "burned_area/{MM}/burned_fraction"},
            comment="of the grid cell; the contract's is of the land",
        ),
    ]
    if files.get("inversion"):
        blocks.append(
            _layer(
                "references",
                "inversion",
                {"product": "inversion", "files": [files["inversion"]], "variable": "flux_land"},
                {"sign": "nee", "fire_included": True, "name": "twin inversion-like", "keep_grid": True},
            )
        )
    if files.get("cmip6"):
        blocks.append(
            _layer(
                "references",
                "cmip6",
                {"product": "cmip6", "files": [files["cmip6"]], "variable": "nbp"},
                {"sign": "nbp", "fire_included": False, "name": "twin process-model-like", "keep_grid": True},
            )
        )
    return head + "\n" + "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- the whole raw twin
def make_raw_twin(
    out: str | Path,
    spec: TwinSpec | None = None,
    *,
    contract: str | Path | None = None,
    grids: RawGrids | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the raw twin into ``out`` (created; must not exist or be empty) and return the
    summary written to ``out/raw.json``.

    The contract twin is generated with ``spec`` into ``out/contract``, or, with ``contract``, an
    existing twin directory is read (its ``twin.json`` gives the spec; the recipe's sites then
    point at it by a relative path). ``grids``: the raw products' grids, default
    :func:`twin_scaled_grids` of the twin's spacing (:data:`NATIVE_GRIDS` for the real ones).
    Written into a temporary sibling directory and renamed at the end: a failure leaves nothing.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: directory exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        if contract is None:
            t = time.perf_counter()
            make_twin(tmp / "contract", spec or TwinSpec(), progress=progress)
            timings["contract twin"] = round(time.perf_counter() - t, 2)
            cdir, sites = tmp / "contract", "contract/sites.csv"
        else:
            cdir = Path(contract).resolve()
            if not (cdir / "twin.json").exists():
                raise FileNotFoundError(f"{cdir}: not a twin directory (no twin.json)")
            sites = Path(os.path.relpath(cdir / "sites.csv", out.resolve())).as_posix()
        w = TwinWorld(cdir)
        g = grids or twin_scaled_grids(w.spec.resolution_km)
        rng = np.random.default_rng(np.random.SeedSequence([w.spec.seed, 22]))
        files: dict = {}
        steps: list[tuple[str, Callable[[], object]]] = [
            ("era5_land", lambda: write_era5_land(tmp, w, g)),
            ("terraclimate", lambda: write_terraclimate(tmp, w, g)),
            ("modis", lambda: write_modis(tmp, w, g, rng)),
            ("static", lambda: write_statics(tmp, w, g, rng)),
            ("co2", lambda: write_noaa(tmp, w)),
            ("gfed", lambda: write_gfed(tmp, w, g)),
            ("vector", lambda: write_vectors(tmp, w)),
            ("inversion", lambda: write_inversion(tmp, w)),
            ("cmip6", lambda: write_cmip6(tmp, w)),
        ]
        try:
            for key, fn in steps:
                t = time.perf_counter()
                files[key] = fn()
                timings[key] = round(time.perf_counter() - t, 2)
                log.info("raw twin: %s written in %.1f s", key, timings[key])
        finally:
            w.close()
        (tmp / "recipe.toml").write_text(recipe_toml(w, files, sites))
        timings["total"] = round(time.perf_counter() - t_all, 2)
        summary = {
            "spec": asdict(w.spec),
            "contract": "contract" if contract is None else str(cdir),
            "grids": asdict(g),
            "files": files,
            "bytes": sum(
                p.stat().st_size
                for p in tmp.rglob("*")
                if p.is_file() and "contract" not in p.relative_to(tmp).parts[:1]
            ),
            "timings_s": timings,
        }
        (tmp / "raw.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
