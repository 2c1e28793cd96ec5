"""Named product readers (abzflux.prepare.products): tiny files in each product's real layout,
read back, values checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux.errors import InputError
from abzflux.prepare.layer import LayerSpec, check_layer
from abzflux.prepare.products import READERS, days_in_month, flux_factor


def spec(product, files, variable=None, **kw):
    files = tuple(Path(f) for f in (files if isinstance(files, list | tuple) else [files]))
    return LayerSpec(name=kw.pop("name", "layer"), files=files, product=product, variable=variable, **kw)


# ------------------------------------------------------------------------------------------
# ERA5-Land
# ------------------------------------------------------------------------------------------


def _era5_new(path, var, units, values, months, lon=(0.0, 90.0, 180.0, 270.0), lat=(80.0, 70.0, 60.0)):
    """The 2024+ CDS NetCDF: valid_time, latitude descending, longitude 0-360, number + expver."""
    t = pd.to_datetime([f"{m}-01" for m in months])
    ds = xr.Dataset(
        {var: (("valid_time", "latitude", "longitude"), np.asarray(values, "float32"), {"units": units})},
        coords={
            "valid_time": t,
            "latitude": np.array(lat),
            "longitude": np.array(lon),
            "number": 0,
            "expver": ("valid_time", np.array(["0001"] * len(months))),
        },
    )
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def test_era5_land_new_cds_layout_rolls_longitudes_and_keeps_units(tmp_path):
    vals = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4) + 250.0
    f = _era5_new(tmp_path / "era5.nc", "stl1", "K", vals, ["2005-01", "2005-02"])
    da = READERS["era5_land"](spec("era5_land", f, "stl1"))
    check_layer(da)
    assert da.dims == ("time", "y", "x")
    assert da.attrs["units"] == "K" and da.attrs["frequency"] == "monthly"
    np.testing.assert_array_equal(da["x"].values, [-180.0, -90.0, 0.0, 90.0])
    np.testing.assert_array_equal(da["y"].values, [80.0, 70.0, 60.0])  # order kept
    # lon 180 (index 2) -> x=-180 first; lon 270 (index 3) -> x=-90
    np.testing.assert_array_equal(da.isel(time=1).values[:, 0], vals[1][:, 2])
    np.testing.assert_array_equal(da.isel(time=1).values[:, 1], vals[1][:, 3])
    np.testing.assert_array_equal(da.isel(time=1).values[:, 2], vals[1][:, 0])
    assert list(da["time"].values.astype("datetime64[M]").astype(str)) == ["2005-01", "2005-02"]
    assert "number" not in da.coords and "expver" not in da.coords


def test_era5_land_accumulated_radiation_is_divided_by_a_day(tmp_path):
    vals = np.full((1, 3, 4), 8.64e6, "float32")  # J m-2 per day
    f = _era5_new(tmp_path / "ssrd.nc", "ssrd", "J m**-2", vals, ["2010-07"])
    da = READERS["era5_land"](spec("era5_land", f, "ssrd"))
    check_layer(da)
    assert da.attrs["units"] == "W m-2"
    np.testing.assert_allclose(da.values, 100.0)


def test_era5_land_old_layout_merges_expver(tmp_path):
    # old CDS layout: `time` with an expver dimension when ERA5T (0005) is mixed in
    t = pd.to_datetime(["2020-11-01", "2020-12-01"])
    v = np.full((2, 2, 3, 4), np.nan, "float32")
    v[0, 0] = 0.3  # November final (expver 1)
    v[1, 1] = 0.4  # December preliminary (expver 5)
    ds = xr.Dataset(
        {"swvl1": (("time", "expver", "latitude", "longitude"), v, {"units": "m**3 m**-3"})},
        coords={"time": t, "expver": [1, 5], "latitude": [80.0, 70.0, 60.0], "longitude": [0.0, 90.0, 180.0, 270.0]},
    )
    f = tmp_path / "old.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    da = READERS["era5_land"](spec("era5_land", f, "swvl1"))
    check_layer(da)
    np.testing.assert_allclose(da.isel(time=0).values, 0.3, rtol=1e-6)
    np.testing.assert_allclose(da.isel(time=1).values, 0.4, rtol=1e-6)
    assert da.attrs["units"] == "m**3 m**-3"


def test_era5_land_several_files_concatenate_and_refuse_duplicates(tmp_path):
    a = _era5_new(tmp_path / "a.nc", "snowc", "%", np.full((1, 3, 4), 50.0), ["2005-02"])
    b = _era5_new(tmp_path / "b.nc", "snowc", "%", np.full((1, 3, 4), 20.0), ["2005-01"])
    da = READERS["era5_land"](spec("era5_land", [a, b], "snowc"))
    check_layer(da)
    np.testing.assert_allclose(da.isel(time=0).values, 20.0)  # sorted: January first
    assert da.attrs["units"] == "%"
    c = _era5_new(tmp_path / "c.nc", "snowc", "%", np.full((1, 3, 4), 1.0), ["2005-01"])
    with pytest.raises(InputError, match="2005-01 is in two files"):
        READERS["era5_land"](spec("era5_land", [b, c], "snowc"))


def test_era5_land_grib(tmp_path):
    eccodes = pytest.importorskip("eccodes")
    f = tmp_path / "stl1.grib"
    with open(f, "wb") as fh:
        for month, value in ((1, 260.0), (2, 262.5)):
            h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib1")
            for k, v in {
                "Ni": 6, "Nj": 3, "latitudeOfFirstGridPointInDegrees": 80.0, "latitudeOfLastGridPointInDegrees": 60.0,
                "longitudeOfFirstGridPointInDegrees": 0.0, "longitudeOfLastGridPointInDegrees": 300.0,
                "iDirectionIncrementInDegrees": 60.0, "jDirectionIncrementInDegrees": 10.0,
                "dataDate": 20050001 + month * 100, "dataTime": 0, "paramId": 139,
            }.items():  # fmt: skip
                eccodes.codes_set(h, k, v)
            eccodes.codes_set_values(h, np.full(18, value))
            eccodes.codes_write(h, fh)
            eccodes.codes_release(h)
    da = READERS["era5_land"](spec("era5_land", f, "stl1"))
    check_layer(da)
    assert da.attrs["units"] == "K"
    assert list(da["time"].values.astype("datetime64[M]").astype(str)) == ["2005-01", "2005-02"]
    np.testing.assert_allclose(da.isel(time=1).values, 262.5)
    np.testing.assert_array_equal(da["x"].values, [-180.0, -120.0, -60.0, 0.0, 60.0, 120.0])


# ------------------------------------------------------------------------------------------
# TerraClimate
# ------------------------------------------------------------------------------------------


def test_terraclimate_packed_int16_decodes(tmp_path):
    lat = 89.0 - np.arange(3) / 24.0  # descending, 1/24 degree
    lon = -179.0 + np.arange(4) / 24.0
    raw = np.arange(12 * 3 * 4, dtype="int16").reshape(12, 3, 4)
    phys = raw * 0.1 + 5.0
    phys[0, 0, 0] = np.nan  # written as _FillValue -32768
    t = pd.date_range("2003-01-01", periods=12, freq="MS")
    ds = xr.Dataset({"srad": (("time", "lat", "lon"), phys)}, coords={"time": t, "lat": lat, "lon": lon})
    ds["srad"].attrs = {"units": "W/m^2"}
    ds["srad"].encoding = {"dtype": "int16", "scale_factor": 0.1, "add_offset": 5.0, "_FillValue": -32768}
    f = tmp_path / "TerraClimate_srad_2003.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    import h5py

    with h5py.File(f) as h:  # really stored packed
        assert h["srad"].dtype == np.int16
        assert h["srad"][5, 2, 3] == raw[5, 2, 3] and h["srad"][0, 0, 0] == -32768
    da = READERS["terraclimate"](spec("terraclimate", f, "srad"))
    check_layer(da)
    assert da.attrs["units"] == "W/m^2"
    assert np.isnan(da.values[0, 0, 0])
    np.testing.assert_allclose(da.values[5, 2, 3], raw[5, 2, 3] * 0.1 + 5.0, rtol=1e-6)
    assert da["y"].values[0] > da["y"].values[-1]  # latitude order kept


# ------------------------------------------------------------------------------------------
# NOAA GML
# ------------------------------------------------------------------------------------------

GML = """# header_lines : 5
# comment: USE OF NOAA GML DATA
# data_fields: site_code year month value value_std_dev nvalue qcflag
#
# ------
BRW 2001 1 372.61 0.5 20 ...
BRW 2001 2 -999.99 -99.99 0 ...
BRW 2001 3 375.20 0.4 18 *..
BRW 2001 4 374.90 0.4 18 ...
"""

GML_NEW = """# header_lines : 3
# comment: insitu monthly
# ------
site_code year month day hour minute second datetime time_decimal value value_std_dev nvalue qcflag
BRW 2001 12 1 0 0 0 2001-12-01T00:00:00Z 2001.917 378.25 0.3 30 ...
BRW 2001 11 1 0 0 0 2001-11-01T00:00:00Z 2001.833 -999.99 -99.99 0 ...
"""


def test_noaa_gml_record(tmp_path):
    f = tmp_path / "co2_brw_surface-insitu_1_ccgg_MonthlyData.txt"
    f.write_text(GML)
    da = READERS["noaa_gml"](spec("noaa_gml", f))
    check_layer(da)
    assert da.dims == ("time",) and da.attrs["units"] == "ppm"
    assert "crs_wkt" not in da.attrs
    np.testing.assert_allclose(da.values[[0, 3]], [372.61, 374.90])
    assert np.isnan(da.values[1])  # -999.99
    assert np.isnan(da.values[2])  # qcflag rejected
    g = tmp_path / "new.txt"
    g.write_text(GML_NEW)  # uncommented column line; the value is not the 4th column; unsorted
    db = READERS["noaa_gml"](spec("noaa_gml", g))
    check_layer(db)
    assert list(db["time"].values.astype("datetime64[M]").astype(str)) == ["2001-11", "2001-12"]
    assert np.isnan(db.values[0]) and db.values[1] == pytest.approx(378.25)


def test_noaa_gml_bad_row_names_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("# x\nBRW 2001 1 abc\n")
    with pytest.raises(InputError, match="line 2"):
        READERS["noaa_gml"](spec("noaa_gml", f))


# ------------------------------------------------------------------------------------------
# GFED4.1s
# ------------------------------------------------------------------------------------------


def _gfed4(path, year_offset=0.0, shape=(4, 8)):
    import h5py

    ny, nx = shape
    dlat, dlon = 180.0 / ny, 360.0 / nx
    lat1 = 90 - dlat / 2 - dlat * np.arange(ny)
    lon1 = -180 + dlon / 2 + dlon * np.arange(nx)
    lon2, lat2 = np.meshgrid(lon1, lat1)
    with h5py.File(path, "w") as h:
        h["lat"], h["lon"] = lat2, lon2
        h["ancill/grid_cell_area"] = np.full(shape, 7.0)
        for m in range(1, 13):
            h[f"emissions/{m:02d}/C"] = np.full(shape, m + year_offset)
            h[f"burned_area/{m:02d}/burned_fraction"] = np.full(shape, m / 100.0)
    return path


def test_gfed4_months_and_static(tmp_path):
    a = _gfed4(tmp_path / "GFED4.1s_2004.hdf5", 0.0)
    b = _gfed4(tmp_path / "GFED4.1s_2005_beta.hdf5", 100.0)
    da = READERS["gfed4"](spec("gfed4", [b, a], "emissions/{MM}/C"))
    check_layer(da)
    assert da.sizes["time"] == 24 and da.attrs["units"] == "g C m-2 month-1"
    assert da.chunks is not None  # lazy: read month by month when computed
    assert str(da["time"].values[0])[:7] == "2004-01" and str(da["time"].values[13])[:7] == "2005-02"
    assert float(da.isel(time=13).mean()) == 102.0  # February 2005
    assert da["y"].values[0] > 0  # latitude descending kept
    bf = READERS["gfed4"](spec("gfed4", [a], "burned_area/{MM}/burned_fraction"))
    assert bf.attrs["units"] == "1" and float(bf.isel(time=6).mean()) == pytest.approx(0.07)
    area = READERS["gfed4"](spec("gfed4", [a, b], "ancill/grid_cell_area"))
    check_layer(area)
    assert area.dims == ("y", "x") and area.attrs["frequency"] == "static" and area.attrs["units"] == "m2"
    with pytest.raises(InputError, match="no dataset 'emissions/01/CO2'"):
        READERS["gfed4"](spec("gfed4", [a], "emissions/{MM}/CO2", units="g m-2 month-1"))


# ------------------------------------------------------------------------------------------
# GFED 500 m / GFED5
# ------------------------------------------------------------------------------------------


def test_gfed500_sinusoidal_tiles_mosaic_and_spread(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
    res = 463.3127
    for tile, x0, y0, val in (("h20v02", 0.0, 7e6, 365.0), ("h21v02", 4 * res, 7e6, 730.0),
                              ("h20v03", 0.0, 7e6 - 3 * res, 100.0)):  # fmt: skip
        with rasterio.open(
            tmp_path / f"gfed500m_C_2004_{tile}.tif", "w", driver="GTiff", width=4, height=3, count=1,
            dtype="float32", crs=sinu, transform=from_origin(x0, y0, res, res), nodata=-1,
        ) as dst:  # fmt: skip
            dst.write(np.full((1, 3, 4), val, "float32"))
    files = sorted(tmp_path.glob("*.tif"))
    da = READERS["gfed500"](spec("gfed500", files, units="g C m-2 year-1"))
    check_layer(da)
    assert da.sizes["x"] == 8 and da.attrs["frequency"] == "annual"
    assert da.chunks is not None  # a lazy mosaic
    assert da.sizes["y"] == 6
    np.testing.assert_allclose(da.isel(time=0).values[:3, :4], 365.0)
    np.testing.assert_allclose(da.isel(time=0).values[:3, 4:], 730.0)
    np.testing.assert_allclose(da.isel(time=0).values[3:, :4], 100.0)
    assert np.isnan(da.isel(time=0).values[3:, 4:]).all()  # no tile there
    sp = READERS["gfed500"](spec("gfed500", files, units="g C m-2 year-1", options={"spread_annual": True}))
    check_layer(sp)
    assert sp.sizes["time"] == 12 and sp.attrs["units"] == "g C m-2 month-1"
    np.testing.assert_allclose(sp.isel(time=1).values[0, 0], 365.0 * 29 / 366)  # 2004 is a leap year
    np.testing.assert_allclose(sp.sum("time", skipna=False).values, da.isel(time=0).values, rtol=1e-6)


def test_gfed5_burned_area_netcdf_to_fraction(tmp_path):
    lat = np.array([60.125, 60.375])  # ascending, as the GFED5 readme
    lon = np.array([-179.875, -179.625, 179.875])
    t = np.array([0])
    ds = xr.Dataset(
        {"Total": (("time", "lat", "lon"), np.full((1, 2, 3), 10.0))},
        coords={"time": ("time", t, {"units": "days since 2010-05-01", "calendar": "proleptic_gregorian"}),
                "lat": lat, "lon": lon},
    )  # fmt: skip
    f = tmp_path / "BA201005.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    with pytest.raises(InputError, match="not regularly spaced"):  # the lon gap
        READERS["gfed500"](spec("gfed500", f, "Total", units="km2"))
    ds = ds.isel(lon=[0, 1])
    ds.to_netcdf(g := tmp_path / "BA201006.nc", engine="h5netcdf")
    da = READERS["gfed500"](spec("gfed500", g, "Total", units="km2", options={"to_fraction": True}))
    check_layer(da)
    r = 6371.0072
    cell = r * r * np.radians(0.25) * (np.sin(np.radians(60.25)) - np.sin(np.radians(60.0)))
    np.testing.assert_allclose(da.values[0, 0, 0], 10.0 / cell, rtol=1e-9)
    assert da.attrs["units"] == "1" and str(da["time"].values[0])[:7] == "2010-05"


# ------------------------------------------------------------------------------------------
# inversions, CMIP6, FLUXCOM
# ------------------------------------------------------------------------------------------


def test_flux_factor_units():
    assert flux_factor("kg m-2 s-1") == ("second", 1000.0)
    assert flux_factor("kgC/m2/s") == ("second", 1000.0)
    assert flux_factor("mol m-2 s-1") == ("second", pytest.approx(12.011))
    assert flux_factor("gC m-2 d-1") == ("second", pytest.approx(1 / 86400))
    assert flux_factor("kg m-2 month-1") == ("month", 1000.0)
    assert flux_factor("g CO2 m-2 s-1")[1] == pytest.approx(12.011 / 44.0095)
    with pytest.raises(ValueError):
        flux_factor("kg s-1")


def test_inversion_kg_per_s_in_a_31_day_month(tmp_path):
    t = pd.to_datetime(["2010-01-01", "2010-02-01"])
    v = np.full((2, 2, 3), 1e-8)
    ds = xr.Dataset(
        {"bio_flux_opt": (("time", "latitude", "longitude"), v, {"units": "kg m-2 s-1"})},
        coords={"time": t, "latitude": [61.0, 62.0], "longitude": [0.5, 120.5, 240.5]},
    )
    f = tmp_path / "ct_2010.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    da = READERS["inversion"](spec("inversion", f, "bio_flux_opt", options={"sign": "nee", "name": "CT"}))
    check_layer(da)
    assert da.attrs["units"] == "g C m-2 month-1"
    np.testing.assert_allclose(da.isel(time=0).values, 1e-8 * 1000 * 86400 * 31)
    np.testing.assert_allclose(da.isel(time=1).values, 1e-8 * 1000 * 86400 * 28)
    assert da.attrs["fire_included"] == 1 and da.attrs["product"] == "CT"
    np.testing.assert_array_equal(da["x"].values, [-119.5, 0.5, 120.5])


def test_cmip6_nbp_noleap_is_negated_and_calendar_aware(tmp_path):
    import cftime

    times = [cftime.DatetimeNoLeap(2004, m, 16, 12) for m in (1, 2)]  # mid-month stamps, 2004 no leap
    v = np.full((2, 2, 4), 2e-9)
    ds = xr.Dataset(
        {"nbp": (("time", "lat", "lon"), v, {"units": "kg m-2 s-1"}),
         "lat_bnds": (("lat", "bnds"), np.array([[59.0, 61.0], [61.0, 63.0]])),
         "lon_bnds": (("lon", "bnds"), np.array([[0, 90], [90, 180], [180, 270], [270, 360.0]]))},
        coords={"time": times, "lat": [60.0, 62.0], "lon": [45.0, 135.0, 225.0, 315.0]},
    )  # fmt: skip
    f = tmp_path / "nbp_Lmon_X_historical_r1i1p1f1_gn_200401-200402.nc"
    ds.to_netcdf(f, engine="netcdf4")
    da = READERS["cmip6"](spec("cmip6", f, "nbp"))
    check_layer(da)
    np.testing.assert_allclose(da.isel(time=1).values, -2e-9 * 1000 * 86400 * 28)  # noleap Feb
    assert da.attrs["sign_convention"] == "nbp" and da.attrs["fire_included"] == 1
    assert list(da["time"].values.astype("datetime64[M]").astype(str)) == ["2004-01", "2004-02"]
    assert days_in_month([cftime.Datetime360Day(2004, 2, 15)])[0] == 30


def test_fluxcom_per_day_and_nep_sign(tmp_path):
    t = pd.to_datetime(["2001-04-01"])
    ds = xr.Dataset(
        {"NEP": (("time", "lat", "lon"), np.full((1, 2, 2), 1.5), {"units": "gC m-2 d-1"})},
        coords={"time": t, "lat": [70.0, 69.5], "lon": [10.0, 10.5]},
    )
    f = tmp_path / "fluxcom.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    with pytest.raises(InputError, match="options.sign"):
        READERS["fluxcom"](spec("fluxcom", f, "NEP", options={"sign": "uptake"}))
    da = READERS["fluxcom"](spec("fluxcom", f, "NEP", options={"sign": "nep"}))
    check_layer(da)
    np.testing.assert_allclose(da.values, -1.5 * 30)
    assert da.attrs["fire_included"] == 0


def test_flux_bad_units_and_missing_file(tmp_path):
    t = pd.to_datetime(["2001-04-01"])
    ds = xr.Dataset(
        {"nee": (("time", "lat", "lon"), np.ones((1, 2, 2)), {"units": "K"})},
        coords={"time": t, "lat": [70.0, 69.5], "lon": [10.0, 10.5]},
    )
    f = tmp_path / "x.nc"
    ds.to_netcdf(f, engine="h5netcdf")
    with pytest.raises(InputError, match=r"\[nee\] units 'K' are not a carbon flux"):
        READERS["inversion"](spec("inversion", f, "nee"))
    with pytest.raises(InputError, match="file not found"):
        READERS["inversion"](spec("inversion", tmp_path / "missing.nc", "nee"))
    with pytest.raises(InputError, match="variable 'gpp' not found"):
        READERS["inversion"](spec("inversion", f, "gpp"))


def test_cmip6_360_day_calendar_months_have_30_days(tmp_path):
    import cftime

    times = [cftime.Datetime360Day(2001, m, 16) for m in (2, 3)]
    ds = xr.Dataset(
        {"nep": (("time", "lat", "lon"), np.full((2, 2, 2), 1e-9), {"units": "kg m-2 s-1"})},
        coords={"time": times, "lat": [60.0, 61.0], "lon": [0.0, 1.0]},
    )
    f = tmp_path / "nep_360.nc"
    ds.to_netcdf(f, engine="netcdf4")
    da = READERS["cmip6"](spec("cmip6", f, "nep"))
    np.testing.assert_allclose(da.values, -1e-9 * 1000 * 86400 * 30)  # Feb and Mar both 30 days; nep negated
    assert da.attrs["fire_included"] == 0
