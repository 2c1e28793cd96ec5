"""Small raw source files for the prepare tests (generic NetCDF / GeoTIFF in known functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.transform import from_origin

GRID = """[grid]
crs = "EPSG:6931"
resolution = 100000
extent = [-1000000, -3000000, 1000000, -2000000]
"""


def field(lon, lat):
    """A smooth known function of longitude and latitude."""
    return lat + 2.0 * np.cos(np.deg2rad(lon))


def latlon_nc(
    path: Path,
    *,
    res=0.5,
    lon360=False,
    lat_ascending=False,
    times=None,
    f=field,
    units="1",
    packed=False,
    name="v",
    lat_range=(40.0, 90.0),
    time_name="time",
    step=1.0,
):
    lat = np.arange(lat_range[1] - res / 2, lat_range[0], -res)
    if lat_ascending:
        lat = lat[::-1]
    lon = np.arange(res / 2, 360, res) if lon360 else np.arange(-180 + res / 2, 180, res)
    lon_w = np.where(lon > 180, lon - 360, lon)
    base = f(lon_w[None, :], lat[:, None]) + np.zeros((lat.size, lon.size))
    if times is None:
        data, dims, coords = base, ("lat", "lon"), {"lat": lat, "lon": lon}
    else:
        k = step * np.arange(len(times), dtype=float)[:, None, None]
        data = base[None] + k
        dims, coords = (time_name, "lat", "lon"), {time_name: pd.DatetimeIndex(times), "lat": lat, "lon": lon}
    da = xr.DataArray(data, dims=dims, coords=coords, attrs={"units": units})
    enc = {}
    if packed:
        enc = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 50.0, "_FillValue": np.int16(-32768)}
    da.to_dataset(name=name).to_netcdf(path, engine="h5netcdf", encoding={name: enc})
    return path


def laea_tif(
    path: Path,
    values: np.ndarray,
    *,
    x0=-1000000.0,
    y0=-2000000.0,
    res=50000.0,
    nodata=None,
    dtype="float32",
    crs="EPSG:6931",
    scale=None,
):
    ny, nx = values.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=ny,
        width=nx,
        count=1,
        dtype=dtype,
        crs=crs,
        transform=from_origin(x0, y0, res, res),
        nodata=nodata,
    ) as dst:
        dst.write(values.astype(dtype), 1)
        if scale is not None:
            dst.scales = (scale,)
    return path
