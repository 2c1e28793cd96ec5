"""abzflux prepare, the core: recipe, generic readers, time aggregation, regridding, the streamed
and resumable build. Values are hand-checkable (known functions of lon/lat, block means, days
of 8-day composites in each month)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from prepare_world import GRID, field, laea_tif, latlon_nc
from typer.testing import CliRunner

from abzflux import formats
from abzflux.cli import app
from abzflux.errors import InputError
from abzflux.prepare import build, temporal
from abzflux.prepare.build import layer_array, plan_layer, prepare
from abzflux.prepare.grid import target_grid
from abzflux.prepare.layer import LayerSpec, check_layer
from abzflux.prepare.recipe import GridSpec, load_recipe
from abzflux.prepare.sources import open_layer

MONTHS_2019 = pd.date_range("2019-01-01", "2019-12-01", freq="MS")


def grid(res=100e3, extent=(-1e6, -3e6, 1e6, -2e6)):
    return target_grid(GridSpec(crs="EPSG:6931", resolution=res, extent=extent))


def on_grid(spec: LayerSpec, target: xr.Dataset, group="predictors", years=(2019, 2019), tile=8):
    plan = plan_layer(group, spec, target, temporal.target_months(years), tile)
    return plan, layer_array(plan, target, tile).compute(scheduler="synchronous").values


def centres_lonlat(target):
    X, Y = np.meshgrid(target.x.values, target.y.values)
    return pyproj.Transformer.from_crs(6931, 4326, always_xy=True).transform(X, Y)


# ------------------------------------------------------------------------- regridding values
@pytest.mark.parametrize("res, rule, tol", [(25e3, "bilinear", 0.02), (100e3, "average", 0.05)])
def test_latlon_field_matches_the_function_at_cell_centres(tmp_path, res, rule, tol):
    src = latlon_nc(tmp_path / "f.nc", res=0.5, units="W m-2")
    target = grid(res)
    plan, out = on_grid(LayerSpec("cti", (src,), units="1"), target)
    assert plan.resampling == rule  # 0.5° cells (~55 x 21 km here) refine 25 km cells, coarsen 100 km
    lon, lat = centres_lonlat(target)
    assert np.abs(out - field(lon, lat)).max() < tol
    assert np.isfinite(out).all()


def test_longitude_convention_and_latitude_order_do_not_change_the_output(tmp_path):
    target = grid(50e3)
    outs = []
    for lon360 in (False, True):
        for asc in (False, True):
            p = latlon_nc(tmp_path / f"f_{lon360}_{asc}.nc", res=1.0, lon360=lon360, lat_ascending=asc)
            layer = open_layer(LayerSpec("cti", (p,)))
            check_layer(layer)
            assert layer.x.min() > -180 and layer.x.max() < 180
            outs.append(on_grid(LayerSpec("cti", (p,)), target)[1])
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def _laea_source(tmp_path, values, res=50e3, name="s.tif"):
    return laea_tif(tmp_path / name, values, x0=-1e6, y0=-2e6, res=res)


def test_average_of_a_2x2_block_is_its_mean(tmp_path):
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 10, (20, 40))
    v[0, 0] = np.nan  # no data is left out of the mean
    src = _laea_source(tmp_path, v)
    plan, out = on_grid(LayerSpec("cti", (src,), units="1"), grid(100e3))
    assert plan.resampling == "average"
    blocks = v.reshape(10, 2, 20, 2).transpose(0, 2, 1, 3).reshape(10, 20, 4)
    np.testing.assert_allclose(out, np.nanmean(blocks, axis=2), rtol=1e-5)


def test_average_weights_partial_cells_by_their_area(tmp_path):
    """A 75-km cell over 50-km cells: the second row and column count half (GDAL >= 3.1)."""
    rng = np.random.default_rng(2)
    v = rng.uniform(0, 10, (20, 40))
    src = _laea_source(tmp_path, v)
    target = grid(75e3, extent=(-1e6, -2.75e6, 0.5e6, -2e6))
    _, out = on_grid(LayerSpec("cti", (src,), units="1", resample="average"), target)
    w = np.outer([1.0, 0.5], [1.0, 0.5])
    assert out[0, 0] == pytest.approx((w * v[:2, :2]).sum() / w.sum(), rel=1e-5)
    w2 = np.outer([1.0, 0.5], [0.5, 1.0])  # the second cell: half of column 1, all of column 2
    assert out[0, 1] == pytest.approx((w2 * v[:2, 1:3]).sum() / w2.sum(), rel=1e-5)


def test_categorical_mode_and_unlisted_codes(tmp_path):
    v = np.full((20, 40), 70, dtype=np.int16)
    v[0:2, 0:2] = [[21, 21], [21, 160]]  # mode 21
    v[2:4, 0:2] = 210  # water: not a vegetation class -> NaN
    src = laea_tif(tmp_path / "veg.tif", v, dtype="int16", nodata=-1)
    plan, out = on_grid(LayerSpec("veg_type", (src,)), grid(100e3))
    assert plan.resampling == "mode"
    assert out[0, 0] == 21 and np.isnan(out[1, 0]) and out[0, 1] == 70


# --------------------------------------------------------------------------------- decoding
def test_packed_int16_with_scale_factor_is_decoded(tmp_path):
    p = latlon_nc(tmp_path / "p.nc", res=2.0, packed=True, units="degC", times=MONTHS_2019)
    with xr.open_dataset(p, mask_and_scale=False) as raw:
        assert raw["v"].dtype == np.int16 and raw["v"].attrs["scale_factor"] == 0.01
    layer = open_layer(LayerSpec("soil_temp", (p,)))
    check_layer(layer)
    lon, lat = np.meshgrid(layer.x.values, layer.y.values)
    np.testing.assert_allclose(layer.isel(time=3).values, field(lon, lat) + 3, atol=0.006)
    assert layer.attrs["frequency"] == "monthly" and layer.attrs["units"] == "degC"


def test_recipe_scale_fill_and_valid_range_on_a_geotiff(tmp_path):
    raw = np.full((20, 40), 5000, dtype=np.int16)
    raw[0, 0] = -3000  # MODIS NDVI fill
    raw[0, 1] = 12000  # above the valid range once scaled
    p = laea_tif(tmp_path / "ndvi.tif", raw, dtype="int16")
    spec = LayerSpec("ndvi", (p,), units="1", scale_factor=1e-4, fill_value=-3000, valid_range=(-1.0, 1.0))
    layer = open_layer(spec)
    check_layer(layer)
    v = layer.values
    assert np.isnan(v[0, 0]) and np.isnan(v[0, 1]) and v[5, 5] == pytest.approx(0.5)
    assert pyproj.CRS.from_wkt(layer.attrs["crs_wkt"]).to_epsg() == 6931


def test_geotiff_scale_tag_and_recipe_crs(tmp_path):
    p = laea_tif(tmp_path / "t.tif", np.full((20, 40), 250, dtype=np.int16), dtype="int16", scale=0.02)
    assert float(open_layer(LayerSpec("lst", (p,))).values[3, 3]) == pytest.approx(5.0)
    q = tmp_path / "nocrs.nc"
    xr.Dataset(
        {"v": (("y", "x"), np.ones((3, 4)))}, coords={"y": [3e5, 2e5, 1e5], "x": [0.0, 1e5, 2e5, 3e5]}
    ).to_netcdf(q)
    with pytest.raises(InputError, match="unknown CRS") as e:
        open_layer(LayerSpec("cti", (q,), units="1"))
    assert "nocrs.nc" in str(e.value) and "[cti]" in str(e.value)
    layer = open_layer(LayerSpec("cti", (q,), units="1", crs="EPSG:6931"))
    assert pyproj.CRS.from_wkt(layer.attrs["crs_wkt"]).to_epsg() == 6931


def test_cf_grid_mapping_and_valid_time(tmp_path):
    t = pd.date_range("2019-01-01", periods=3, freq="MS")
    ds = xr.Dataset(
        {"v": (("valid_time", "y", "x"), np.zeros((3, 3, 4)), {"grid_mapping": "crs", "units": "K"})},
        coords={"valid_time": t, "y": [3e5, 2e5, 1e5], "x": [0.0, 1e5, 2e5, 3e5]},
    )
    ds["crs"] = xr.Variable((), 0, pyproj.CRS("EPSG:3413").to_cf())
    ds.to_netcdf(tmp_path / "gm.nc")
    layer = open_layer(LayerSpec("soil_temp", (tmp_path / "gm.nc",)))
    check_layer(layer)
    assert layer.dims == ("time", "y", "x") and pyproj.CRS.from_wkt(layer.attrs["crs_wkt"]).to_epsg() == 3413


def test_zarr_source_and_file_name_dates(tmp_path):
    p = latlon_nc(tmp_path / "f.nc", res=2.0, units="K", times=MONTHS_2019[:3])
    with xr.open_dataset(p) as ds:
        ds.rename({"lat": "latitude", "lon": "longitude"}).to_zarr(tmp_path / "f.zarr")
    layer = open_layer(LayerSpec("soil_temp", (tmp_path / "f.zarr",)))
    check_layer(layer)
    assert layer.sizes["time"] == 3 and layer.attrs["frequency"] == "monthly"
    for doy in (1, 9, 33):  # MODIS-like names (8-day composites; 17 and 25 missing): A<year><day of year>
        laea_tif(tmp_path / f"MOD13.A2019{doy:03d}.tif", np.full((20, 40), float(doy)))
    spec = LayerSpec(
        "ndvi",
        tuple(sorted(tmp_path.glob("MOD13*.tif"))),
        units="1",
        frequency="8day",
        options={"time_pattern": r"A(?P<year>\d{4})(?P<doy>\d{3})"},
    )
    layer = open_layer(spec)
    check_layer(layer)
    assert [str(t)[:10] for t in layer.time.values] == ["2019-01-01", "2019-01-09", "2019-02-02"]
    assert float(layer.isel(time=1, y=0, x=0)) == 9.0


def test_hdf5_dataset_in_groups(tmp_path):
    import h5py

    lat = 89.0 - 2.0 * np.arange(25)
    lon = -179.0 + 2.0 * np.arange(180)
    lon2, lat2 = np.meshgrid(lon, lat)
    for y in (2019, 2020):
        with h5py.File(tmp_path / f"ndvi_{y}.h5", "w") as h:
            h["geo/lat"], h["geo/lon"] = lat2, lon2
            raw = np.full(lat2.shape, 1000 * (y - 2015), dtype=np.int16)
            raw[0, 0] = -3000
            d = h.create_dataset("grids/ndvi", data=raw)
            d.attrs["scale_factor"], d.attrs["_FillValue"], d.attrs["units"] = 1e-4, np.int16(-3000), b"1"
    spec = LayerSpec(
        "ndvi",
        tuple(sorted(tmp_path.glob("ndvi_*.h5"))),
        variable="grids/ndvi",
        options={"y": "geo/lat", "x": "geo/lon"},
    )
    layer = open_layer(spec)
    check_layer(layer)
    assert layer.attrs["frequency"] == "annual" and layer.attrs["units"] == "1"
    assert pyproj.CRS.from_wkt(layer.attrs["crs_wkt"]).to_epsg() == 4326
    v = layer.values
    assert np.isnan(v[0, 0, 0]) and v[0, 3, 3] == pytest.approx(0.4) and v[1, 3, 3] == pytest.approx(0.5)
    with pytest.raises(InputError, match="no dataset 'grids/ndv'") as e:
        open_layer(LayerSpec("ndvi", spec.files, variable="grids/ndv", options=spec.options))
    assert "grids/ndvi" in str(e.value)


# ------------------------------------------------------------------------------------- time
def test_8day_composites_weighted_by_their_days_in_each_month():
    starts = pd.date_range("2019-01-01", "2019-12-31", freq="8D")  # 46 composites, the last 27 Dec
    spec = LayerSpec("ndvi", ())
    W = temporal.weights(starts.values, "8day", MONTHS_2019.values, spec)
    # January: 1, 9, 17 full; the composite of 25 Jan has 7 days in January and 1 in February
    np.testing.assert_array_equal(W[0, :5], [8, 8, 8, 7, 0])
    np.testing.assert_array_equal(W[1, 3:8], [1, 8, 8, 8, 3])  # Feb: 1 + 8 + 8 + 8 + (26-28 Feb)
    assert W[11, -1] == 5  # 27-31 December: cut at 1 January
    assert (W.sum(axis=1) == MONTHS_2019.days_in_month).all()
    vals = np.arange(starts.size, dtype=float)[:, None]
    vals[1] = np.nan  # a missing composite is left out of its month's weights
    jan = temporal.aggregate(vals, W)[0, 0]
    assert jan == pytest.approx((0 * 8 + 2 * 8 + 3 * 7) / (8 + 8 + 7))


def test_8day_layer_on_the_grid_month_by_month(tmp_path):
    starts = pd.date_range("2019-01-01", "2019-12-31", freq="8D")
    p = latlon_nc(tmp_path / "n.nc", res=2.0, f=lambda lo, la: 0 * la + 0.5, units="1", times=starts, step=0.001)
    plan, out = on_grid(LayerSpec("ndvi", (p,), options={"gapfill": []}), grid(100e3))
    assert build._month_groups(plan.W) == [(0, 7), (7, 12)]  # at most 32 source steps per read
    days = pd.date_range("2019-01-01", "2019-12-31", freq="D").values
    Wd = temporal.weights(days, "daily", MONTHS_2019.values, LayerSpec("srad", ()))
    assert build._month_groups(Wd) == [(m, m + 1) for m in range(12)]  # daily: a month at a time
    feb = (3 * 1 + 4 * 8 + 5 * 8 + 6 * 8 + 7 * 3) / 28  # steps 3..7 weighted by their February days
    np.testing.assert_allclose(out[1], 0.5 + 0.001 * feb, rtol=1e-6)
    W = temporal.weights(MONTHS_2019.values, "monthly", MONTHS_2019.values, LayerSpec("srad", ()))
    assert build._month_groups(W) == [(0, 12)]


def test_daily_to_monthly_mean():
    days = pd.date_range("2019-01-01", "2019-12-31", freq="D")
    W = temporal.weights(days.values, "daily", MONTHS_2019.values, LayerSpec("srad", ()))
    m = temporal.aggregate(days.dayofyear.to_numpy(dtype=float)[:, None], W)[:, 0]
    assert m[0] == 16.0 and m[1] == pytest.approx(31 + 14.5)


def test_annual_layers_repeat_and_year_fallback(tmp_path):
    for y in (2019, 2021):
        laea_tif(tmp_path / f"tree_{y}.tif", np.full((20, 40), float(y - 2000)))
    spec = LayerSpec(
        "tree_pct", tuple(sorted(tmp_path.glob("tree_*.tif"))), units="%", options={"year_fallback": {"2020": 2019}}
    )
    plan, out = on_grid(spec, grid(100e3), years=(2019, 2021))
    assert plan.src.attrs["frequency"] == "annual"
    np.testing.assert_array_equal(out[:, 0, 0], [19.0] * 24 + [21.0] * 12)
    with pytest.raises(InputError, match="no layer for year 2020") as e:
        on_grid(LayerSpec("tree_pct", spec.files, units="%"), grid(100e3), years=(2019, 2021))
    assert "tree_2019.tif" in str(e.value)


def test_gapfill_linear_then_lowest():
    v = np.array([np.nan, 0.2, np.nan, 0.4, 0.5, np.nan, np.nan, np.nan, 0.3, 0.2, np.nan, np.nan])[:, None]
    out = temporal.gapfill(v, MONTHS_2019.values, ("linear", "lowest"), max_gap=2)[:, 0]
    np.testing.assert_allclose(out, [0.2, 0.2, 0.3, 0.4, 0.5, 0.2, 0.2, 0.2, 0.3, 0.2, 0.2, 0.2])
    months = pd.date_range("2019-01-01", "2020-12-01", freq="MS").values
    s = np.tile(np.arange(12.0), 2)[:, None]
    s[14] = np.nan  # March 2020: the climatology is March 2019's value
    assert temporal.gapfill(s, months, ("climatology",))[14, 0] == 2.0


def test_series_broadcast_and_units(tmp_path):
    t = pd.date_range("2019-01-01", periods=12, freq="MS") + pd.Timedelta(days=14)
    xr.DataArray(
        np.linspace(400e-6, 411e-6, 12), dims="time", coords={"time": t}, attrs={"units": "mol mol-1"}
    ).to_dataset(name="co2").to_netcdf(tmp_path / "co2.nc")
    plan, out = on_grid(LayerSpec("co2", (tmp_path / "co2.nc",)), grid(100e3))
    assert plan.kind == "series" and out.shape == (12, 10, 20)
    np.testing.assert_allclose(out[:, 4, 7], np.linspace(400, 411, 12), rtol=1e-5)  # mol mol-1 -> ppm


def test_rate_per_day_to_monthly_sum(tmp_path):
    p = latlon_nc(
        tmp_path / "fe.nc", res=2.0, f=lambda lo, la: 0 * la + 1e-9, units="kg m-2 s-1", times=MONTHS_2019, step=0
    )
    plan, out = on_grid(LayerSpec("fire_emissions", (p,)), grid(100e3), group="fire")
    assert plan.per_month
    np.testing.assert_allclose(out[:, 0, 0], 1e-9 * 1000 * 86400 * MONTHS_2019.days_in_month, rtol=1e-5)


# ----------------------------------------------------------------------------------- errors
def test_errors_name_file_variable_and_expectation(tmp_path):
    target = grid(100e3)
    p = latlon_nc(tmp_path / "south.nc", res=1.0, lat_range=(-60.0, -30.0), units="W m-2", times=MONTHS_2019)
    with pytest.raises(InputError, match="no overlap with the target grid") as e:
        on_grid(LayerSpec("srad", (p,)), target)
    assert "south.nc" in str(e.value) and "[srad]" in str(e.value)
    q = latlon_nc(tmp_path / "kg.nc", res=2.0, units="kg m-2", times=MONTHS_2019)
    with pytest.raises(InputError, match="cannot be converted to 'W m-2'") as e:
        on_grid(LayerSpec("srad", (q,)), target)
    assert "kg.nc" in str(e.value)
    d = latlon_nc(tmp_path / "daily.nc", res=2.0, units="W m-2", times=pd.date_range("2019-01-01", "2019-12-31"))
    with pytest.raises(InputError, match="wrong time step") as e:
        open_layer(LayerSpec("srad", (d,), frequency="monthly"))
    assert "daily.nc" in str(e.value) and "monthly steps" in str(e.value)
    bad = tmp_path / "bad.nc"
    bad.write_bytes(q.read_bytes()[:300])
    with pytest.raises(InputError, match="cannot be read as NetCDF") as e:
        open_layer(LayerSpec("srad", (bad,)))
    assert "bad.nc" in str(e.value)
    with pytest.raises(InputError, match="unknown option 'gapfil'") as e:
        on_grid(LayerSpec("srad", (d,), options={"gapfil": []}), target)
    assert "predictors.srad.options.gapfil" in str(e.value)
    short = latlon_nc(tmp_path / "short.nc", res=2.0, units="W m-2", times=MONTHS_2019[:6])
    with pytest.raises(InputError, match="6 month") as e:
        on_grid(LayerSpec("srad", (short,)), target)
    assert "2019-07" in str(e.value)


def test_recipe_errors(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text(GRID + '[time]\nyears = "2019"\n[predictors.srad]\nfiles = ["nope_*.nc"]\n')
    with pytest.raises(InputError, match="file not found") as e:
        load_recipe(r)
    assert "nope_*.nc" in str(e.value) and "predictors.srad.files" in str(e.value)
    r.write_text(GRID + '[time]\nyears = "2019"\n[predictors.srad]\nfiles = "x.nc"\nscale = 2\n')
    with pytest.raises(InputError, match="unknown key 'scale'"):
        load_recipe(r)
    r.write_text(GRID + '[time]\nyears = "2019"\n[predictors.soil_moist]\nfiles = "x.nc"\n')
    with pytest.raises(InputError, match="unknown key 'soil_moist'"):
        load_recipe(r)


# ------------------------------------------------------------------------------ whole build
def write_world(d: Path) -> Path:
    """Raw sources of 4 predictors, the 4 zones, fire and a reference, plus their recipe."""
    raw = d / "raw"
    raw.mkdir(parents=True)
    months = pd.date_range("2019-01-01", "2020-12-01", freq="MS")
    latlon_nc(
        raw / "srad.nc",
        times=months + pd.Timedelta(days=14),
        f=lambda lo, la: 100 + field(lo, la),
        units="W m-2",
        lon360=True,
    )
    latlon_nc(
        raw / "st.nc", times=months, f=lambda lo, la: 0 * la + 5, units="degC", packed=True, time_name="valid_time"
    )
    days8 = np.concatenate([pd.date_range(f"{y}-01-01", f"{y}-12-31", freq="8D").values for y in (2019, 2020)])
    latlon_nc(raw / "ndvi.nc", times=days8, f=lambda lo, la: 0 * la + 0.5, units="1", step=0.001)
    laea_tif(raw / "cti.tif", np.arange(20 * 40).reshape(20, 40) % 7 + 1.0)
    lc = np.where(np.arange(20 * 40).reshape(20, 40) % 4 == 0, 210, 70)
    laea_tif(raw / "lc.tif", lc, dtype="int16", nodata=0)
    biome = np.full((20, 40), 6)
    biome[:, 30:] = 11
    biome[0:2, 0:2] = 99  # outside the boreal/tundra domain: no land counted there
    laea_tif(raw / "biome.tif", biome, dtype="int16")
    laea_tif(raw / "region.tif", np.full((20, 40), 2), dtype="int16")
    laea_tif(raw / "pf.tif", np.full((20, 40), 50.0))
    latlon_nc(raw / "fe.nc", times=months, f=lambda lo, la: 0 * la + 1e-9, units="kg m-2 s-1", step=0)
    latlon_nc(raw / "bf.nc", times=months, f=lambda lo, la: 0 * la + 0.01, units="1", step=0)
    latlon_nc(raw / "ref.nc", times=months, f=lambda lo, la: 0 * la + 1e-8, units="kg C m-2 s-1", res=2.0, step=0)
    recipe = d / "recipe.toml"
    recipe.write_text(
        GRID
        + """
[time]
years = "2019-2020"
[output]
tile = 8
workers = 2
[predictors.srad]
files = ["raw/srad.nc"]
[predictors.soil_temp]
files = ["raw/st.nc"]
[predictors.ndvi]
files = ["raw/ndvi.nc"]
[predictors.cti]
files = ["raw/cti.tif"]
units = "1"
[zones.land_fraction]
files = ["raw/lc.tif"]
options = {water_values = [210, 220]}
[zones.biome]
files = ["raw/biome.tif"]
[zones.region]
files = ["raw/region.tif"]
options = {classes = {1 = "alaska", 2 = "canada", 3 = "europe", 4 = "siberia"}}
[zones.permafrost]
files = ["raw/pf.tif"]
units = "%"
[fire.fire_emissions]
files = ["raw/fe.nc"]
[fire.burned_fraction]
files = ["raw/bf.nc"]
[references.inv]
files = ["raw/ref.nc"]
options = {name = "test inversion", fire_included = true}
"""
    )
    return recipe


@pytest.mark.slow  # ~6 s: every group of a recipe, streamed
def test_prepare_writes_the_contract_files(tmp_path):
    recipe = write_world(tmp_path)
    out = tmp_path / "out"
    record = prepare(recipe, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.toml",
        "fire.zarr",
        "predictors.zarr",
        "prepare.json",
        "references",
        "zones.zarr",
    ]
    pred = formats.read_predictors(out / "predictors.zarr", required=["srad", "soil_temp", "ndvi", "cti"])
    assert pred["soil_temp"].dims == ("time", "y", "x") and pred.sizes["time"] == 24
    assert pred.srad.encoding["chunks"] == (12, 8, 8)
    np.testing.assert_allclose(pred["soil_temp"].values[5], 278.15 + 5, atol=0.01)  # degC packed -> K
    np.testing.assert_allclose(pred["ndvi"].values[0], 0.5 + 0.001 * (0 * 8 + 1 * 8 + 2 * 8 + 3 * 7) / 31, atol=1e-5)
    zones = formats.read_zones(out / "zones.zarr", like=pred)
    lf = zones.land_fraction.values
    assert lf[0, 0] == 0.0  # biome 99: outside the domain
    assert set(np.unique(lf[:, 1:])) == {0.5, 1.0}  # water = 1 of the 2 columns, or none
    assert formats.categories(zones.biome) == {6: "boreal", 11: "tundra"}
    assert float(zones.permafrost.mean()) == pytest.approx(0.5)
    fire = formats.read_fire(out / "fire.zarr", like=pred)
    assert float(fire.fire_emissions[1, 3, 3]) == pytest.approx(1e-6 * 86400 * 28, rel=1e-5)
    ref = formats.read_reference(out / "references" / "inv.nc")
    assert ref.attrs["product"] == "test inversion" and ref.nee.dims == ("time", "lat", "lon")
    assert float(ref.nee[0, 5, 5]) == pytest.approx(1e-5 * 86400 * 31, rel=1e-5)
    prov = json.loads((out / "prepare.json").read_text())
    assert prov["recipe_sha256"] == record["recipe_sha256"] and len(prov["inputs"]) == 11
    assert all(i["digest"] == "sha256" for i in prov["inputs"])
    assert prov["layers"]["predictors/ndvi"]["frequency"] == "8day"
    assert 'zones = "zones.zarr"' in (out / "config.toml").read_text()
    assert prepare(recipe, out)["written"] == record["written"]  # complete: nothing redone


def test_bad_input_leaves_nothing(tmp_path):
    recipe = write_world(tmp_path)
    text = recipe.read_text().replace(
        '[predictors.cti]\nfiles = ["raw/cti.tif"]\nunits = "1"',
        '[predictors.cti]\nfiles = ["raw/cti.tif"]\nunits = "kg"',
    )
    recipe.write_text(text)
    r = CliRunner().invoke(app, ["prepare", str(recipe), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    msg = " ".join(r.output.split())
    assert "cti.tif" in msg and "[cti]" in msg and "'kg' cannot be converted to '1'" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~6 s: three prepares
def test_killed_prepare_resumes_and_restart_deletes_only_its_files(tmp_path, monkeypatch):
    recipe = write_world(tmp_path)
    recipe.write_text(recipe.read_text().split("[zones.land_fraction]")[0])  # predictors only: quicker
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # not prepare's: never deleted
    calls: list[str] = []
    real = build._write_zarr_var

    def dying(store, da, *a, **k):
        calls.append(str(da.name))
        if da.name == "ndvi" and len(calls) == 3:
            raise KeyboardInterrupt  # killed while writing the third layer
        return real(store, da, *a, **k)

    monkeypatch.setattr(build, "_write_zarr_var", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(recipe, out)
    assert sorted(p.name for p in out.iterdir()) == [".prepare-work", "notes.txt"]  # no visible output
    state = json.loads((out / ".prepare-work" / "state.json").read_text())
    assert sorted(state["done"]) == ["predictors/soil_temp", "predictors/srad"]
    calls.clear()
    prepare(recipe, out)
    assert calls[0] == "ndvi" and "srad" not in calls  # resumed at the killed layer
    formats.read_predictors(out / "predictors.zarr", required=["srad", "soil_temp", "ndvi", "cti"])
    recipe.write_text(recipe.read_text().replace("tile = 8", "tile = 16"))
    with pytest.raises(InputError, match="another recipe"):
        prepare(recipe, out)
    prepare(recipe, out, restart=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert xr.open_zarr(out / "predictors.zarr").srad.encoding["chunks"] == (12, 16, 16)


def test_foreign_outputs_are_refused(tmp_path):
    recipe = write_world(tmp_path)
    (tmp_path / "out" / "zones.zarr").mkdir(parents=True)
    with pytest.raises(InputError, match="not written by abzflux prepare"):
        prepare(recipe, tmp_path / "out", restart=True)
    assert (tmp_path / "out" / "zones.zarr").is_dir()


def test_named_products_and_vector_zones_are_dispatched(tmp_path, monkeypatch):
    """``product = "x"`` goes to ``prepare.products.READERS["x"]``; a polygon file under
    ``[zones]`` to ``prepare.vector.rasterise_zone``, then masked by biome / region."""
    from abzflux.prepare import products

    seen: list[str] = []

    def reader(spec):
        seen.append(spec.name)
        return open_layer(LayerSpec(spec.name, spec.files, units="K"))

    monkeypatch.setitem(products.READERS, "fake", reader)
    p = latlon_nc(tmp_path / "st.nc", res=2.0, units="degC", times=MONTHS_2019)
    plan, out = on_grid(LayerSpec("soil_temp", (p,), product="fake"), grid(100e3))
    assert seen == ["soil_temp"] and plan.conversion == (1.0, 0.0)  # the reader's units (K) are kept
    with pytest.raises(InputError, match="unknown product 'nope'"):
        open_layer(LayerSpec("soil_temp", (p,), product="nope"))

    recipe = write_world(tmp_path / "w")
    ring = [[-180, 55], [180, 55], [180, 88], [-180, 88], [-180, 55]]
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    (tmp_path / "w" / "raw" / "land.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [feature]})
    )
    recipe.write_text(
        GRID
        + """[time]
years = "2019"
[predictors.cti]
files = ["raw/cti.tif"]
units = "1"
[zones.land_fraction]
files = ["raw/land.geojson"]
[zones.biome]
files = ["raw/biome.tif"]
[zones.region]
files = ["raw/region.tif"]
options = {classes = {2 = "canada"}}
[zones.permafrost]
files = ["raw/pf.tif"]
units = "%"
"""
    )
    prepare(recipe, tmp_path / "out")
    z = formats.read_zones(tmp_path / "out" / "zones.zarr")
    assert float(z.land_fraction[0, 0]) == 0.0 and float(z.land_fraction[5, 5]) == 1.0  # masked by biome 99


# ------------------------------------------------------------------ the tiny twin, round trip
def _as_source(da: xr.DataArray, path: Path) -> Path:
    ds = formats.write_crs(da.drop_vars("spatial_ref", errors="ignore").to_dataset(name=da.name), "EPSG:6931")
    ds.to_netcdf(path, engine="h5netcdf")
    return path


@pytest.mark.slow  # the tiny twin fixture, 16 predictors, then `abzflux validate`
def test_twin_inputs_round_trip_through_prepare_and_validate(tiny_twin, tmp_path):
    """The twin's own files as generic sources on the same grid (template): prepare must give
    them back (average on an identical grid is the identity) and `abzflux validate` accepts the
    written config with the twin's site table."""
    raw = tmp_path / "raw"
    raw.mkdir()
    pred = formats.read_predictors(tiny_twin / "predictors.zarr").load()
    zones = formats.read_zones(tiny_twin / "zones.nc").load()
    lines = [
        f'[grid]\ntemplate = "{tiny_twin / "zones.nc"}"',
        '[time]\nyears = "2019-2020"',
        f'[inputs]\nsites = "{tiny_twin / "sites.csv"}"',
    ]
    for name in pred.data_vars:
        _as_source(pred[name], raw / f"{name}.nc")
        lines.append(f'[predictors.{name}]\nfiles = ["raw/{name}.nc"]\noptions = {{gapfill = []}}')
    for name in formats.ZONE_VARIABLES:
        _as_source(zones[name], raw / f"z_{name}.nc")
        opts = ""
        if name in ("biome", "region"):
            cls = ", ".join(f'{c} = "{n}"' for c, n in formats.categories(zones[name]).items())
            opts = f"\noptions = {{classes = {{{cls}}}}}"
        lines.append(f'[zones.{name}]\nfiles = ["raw/z_{name}.nc"]\nunits = "1"{opts}')
    fire = formats.read_fire(tiny_twin / "fire.zarr").load()
    for name in formats.FIRE_VARIABLES:
        _as_source(fire[name], raw / f"f_{name}.nc")
        lines.append(f'[fire.{name}]\nfiles = ["raw/f_{name}.nc"]')
    lines.append(
        f'[references.inversion]\nfiles = ["{tiny_twin / "ref_inversion.nc"}"]\nunits = "g C m-2 month-1"\n'
        'options = {name = "twin inversion", fire_included = true}'
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("\n\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["prepare", str(recipe), "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = formats.read_predictors(out / "predictors.zarr").load()
    for name in pred.data_vars:
        np.testing.assert_allclose(got[name].values, pred[name].values, rtol=1e-5, atol=1e-5, err_msg=name)
    gz = formats.read_zones(out / "zones.zarr", like=got).load()
    lf = zones.land_fraction.where(zones.biome.notnull() & zones.region.notnull(), 0.0)
    np.testing.assert_allclose(gz.land_fraction.values, lf.values, atol=1e-6)
    gf = formats.read_fire(out / "fire.zarr", like=got).load()
    for name in formats.FIRE_VARIABLES:
        want = fire[name].sel(time=gf.time)
        np.testing.assert_allclose(gf[name].values, want.values, rtol=1e-5, atol=1e-6, err_msg=name)
    ref = formats.read_reference(out / "references" / "inversion.nc")
    src = formats.read_reference(tiny_twin / "ref_inversion.nc")
    assert ref.attrs["product"] == "twin inversion" and int(ref.attrs["fire_included"]) == 1
    np.testing.assert_allclose(ref.nee.values, src.nee.sel(time=ref.time).values, rtol=1e-6)
    v = CliRunner().invoke(app, ["validate", str(out / "config.toml")])
    assert v.exit_code == 0, v.output


def test_build_with_named_products(tmp_path):
    """NOAA GML CO2 (a series broadcast over the grid), GFED4.1s fire (HDF5, lat descending) and
    an inversion in kg m-2 s-1 (kept on its lat/lon grid) through prepare."""
    import h5py

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = "\n".join(f"BRW 2019 {m} {400 + m:.2f} 0.5 20 ..." for m in range(1, 13))
    (raw / "co2_brw.txt").write_text(
        "# header_lines : 2\n# data_fields: site_code year month value value_std_dev nvalue qcflag\n" + rows + "\n"
    )
    ny, nx = 36, 72  # 5° cells
    lat1 = 90 - 2.5 - 5.0 * np.arange(ny)
    lon1 = -180 + 2.5 + 5.0 * np.arange(nx)
    lon2, lat2 = np.meshgrid(lon1, lat1)
    with h5py.File(raw / "GFED4.1s_2019.hdf5", "w") as h:
        h["lat"], h["lon"] = lat2, lon2
        h["ancill/grid_cell_area"] = np.full((ny, nx), 7.0)
        for m in range(1, 13):
            h[f"emissions/{m:02d}/C"] = np.full((ny, nx), float(m))
            h[f"burned_area/{m:02d}/burned_fraction"] = np.full((ny, nx), m / 100.0)
    t = pd.date_range("2019-01-01", periods=12, freq="MS")
    xr.Dataset(
        {"bio_flux_opt": (("time", "latitude", "longitude"), np.full((12, 30, 72), 1e-8), {"units": "kg m-2 s-1"})},
        coords={"time": t, "latitude": 30.5 + 2.0 * np.arange(30), "longitude": 2.5 + 5.0 * np.arange(72)},
    ).to_netcdf(raw / "ct_2019.nc", engine="h5netcdf")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        GRID
        + """[time]
years = "2019"
[predictors.co2]
product = "noaa_gml"
files = ["raw/co2_brw.txt"]
[fire.fire_emissions]
product = "gfed4"
files = ["raw/GFED4.1s_*.hdf5"]
variable = "emissions/{MM}/C"
options = {per = "land"}  # no zones here to divide per-cell values by (test_twin_raw checks "cell")
[fire.burned_fraction]
product = "gfed4"
files = ["raw/GFED4.1s_*.hdf5"]
variable = "burned_area/{MM}/burned_fraction"
options = {per = "land"}
[references.ct]
product = "inversion"
files = ["raw/ct_*.nc"]
variable = "bio_flux_opt"
options = {sign = "nee", name = "CT-like", keep_grid = true}
"""
    )
    out = tmp_path / "out"
    prepare(recipe, out)
    pred = formats.read_predictors(out / "predictors.zarr", required=["co2"])
    np.testing.assert_allclose(pred.co2.values[:, 3, 7], 401 + np.arange(12), rtol=1e-6)
    fire = formats.read_fire(out / "fire.zarr", like=pred)
    np.testing.assert_allclose(fire.fire_emissions.values[:, 4, 4], 1.0 + np.arange(12), rtol=1e-6)
    np.testing.assert_allclose(fire.burned_fraction.values[6], 0.07, rtol=1e-5)
    ref = formats.read_reference(out / "references" / "ct.nc")
    assert ref.attrs["product"] == "CT-like" and int(ref.attrs["fire_included"]) == 1
    np.testing.assert_allclose(ref.nee.values[1], 1e-8 * 1000 * 86400 * 28, rtol=1e-5)


@pytest.mark.slow  # a prepare in a subprocess, killed with SIGKILL, then resumed
def test_sigkilled_prepare_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = write_world(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(formats.__file__).parents[1]))
    code = f"from abzflux.prepare.build import prepare; prepare({str(recipe)!r}, {str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    state = out / ".prepare-work" / "state.json"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if state.exists() and json.loads(state.read_text())["done"]:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "predictors.zarr").exists() and not (out / "prepare.json").exists()
        done = json.loads(state.read_text())["done"]
        assert done  # at least one layer recorded before the kill
    prepare(recipe, out)
    assert not (out / ".prepare-work").exists()
    pred = formats.read_predictors(out / "predictors.zarr", required=["srad", "soil_temp", "ndvi", "cti"])
    np.testing.assert_allclose(pred["soil_temp"].values[5], 278.15 + 5, atol=0.01)
    formats.read_zones(out / "zones.zarr", like=pred)


# ------------------------------------------------------------------------- the antimeridian
#: A 100-km target on the 180° meridian (EPSG:6931 has lon 180 along +y), 65-75°N.
SEAM_EXTENT = (-500e3, 1.8e6, 500e3, 2.8e6)


def test_latlon_source_across_the_antimeridian_has_no_gaps(tmp_path):
    """Cells next to ±180° are warped from the source re-centred on 180° (regrid module doc)."""
    src = latlon_nc(tmp_path / "f.nc", res=0.5, units="1")
    target = grid(100e3, SEAM_EXTENT)
    lon, lat = centres_lonlat(target)
    assert lon.min() < -170 and lon.max() > 170  # the grid straddles the antimeridian
    for rule, tol in (("average", 0.05), ("bilinear", 0.05), ("nearest", 0.6)):
        plan, out = on_grid(LayerSpec("cti", (src,), resample=rule), target)
        assert np.isfinite(out).all(), rule
        assert np.abs(out - field(lon, lat)).max() < tol, rule


def test_sinusoidal_source_across_the_antimeridian_has_no_gaps(tmp_path):
    """A MODIS-like sinusoidal mosaic: target cells whose corners lie on both sides of the
    antimeridian are filled from points spread over the cell (regrid.SEAM_SAMPLES)."""
    import rasterio
    from rasterio.transform import from_origin

    R = 6371007.181
    px = 10e3
    x = np.arange(-np.pi * R + px / 2, np.pi * R, px)
    y = np.arange(np.deg2rad(85.0) * R - px / 2, np.deg2rad(50.0) * R, -px)
    X, Y = np.meshgrid(x, y)
    lat = np.rad2deg(Y / R)
    lon = np.rad2deg(X / (R * np.cos(np.deg2rad(lat))))
    vals = np.where(np.abs(lon) <= 180, field(lon, lat), np.nan).astype(np.float32)
    path = tmp_path / "sinu.tif"
    crs = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
    with rasterio.open(
        path, "w", driver="GTiff", width=x.size, height=y.size, count=1, dtype="float32", crs=crs,
        transform=from_origin(x[0] - px / 2, y[0] + px / 2, px, px), nodata=np.nan,
    ) as f:  # fmt: skip
        f.write(vals, 1)
    target = grid(100e3, SEAM_EXTENT)
    lon_c, lat_c = centres_lonlat(target)
    plan, out = on_grid(LayerSpec("cti", (path,), units="1"), target)
    assert plan.resampling == "average"
    assert np.isfinite(out).all()
    assert np.abs(out - field(lon_c, lat_c)).max() < 0.1


def test_a_gap_in_one_month_does_not_blank_the_other_months(tmp_path):
    """GDAL warps the months of a block together; each month keeps its own no-data (a cloud gap
    in September must not make October's average NaN: UNIFIED_SRC_NODATA=NO)."""
    t = pd.date_range("2019-01-01", periods=12, freq="MS")
    src = latlon_nc(tmp_path / "f.nc", res=0.5, times=t, units="1")
    with xr.open_dataset(src, engine="h5netcdf") as ds:
        gappy = ds.load()
    gappy["v"][8, ::2, ::2] = np.nan  # September: every other source cell is a gap
    gappy.to_netcdf(tmp_path / "g.nc", engine="h5netcdf")
    target = grid(100e3)
    full = on_grid(LayerSpec("srad", (tmp_path / "g.nc",), units="W m-2", options={"gapfill": []}), target)[1]
    clean = on_grid(LayerSpec("srad", (src,), units="W m-2", options={"gapfill": []}), target)[1]
    assert np.isfinite(full).all()  # September averages its valid cells
    np.testing.assert_array_equal(full[[7, 9]], clean[[7, 9]])  # the other months are untouched


def test_gaps_on_land_are_counted_and_dated(tmp_path):
    """prepare.json's gaps_on_land: NaN cell-months on land only (sea NaN is fine), first month."""
    t = pd.date_range("2019-01-01", periods=3, freq="MS")
    y, x = np.arange(3.0), np.arange(4.0)
    v = np.ones((3, 3, 4))
    v[1, 0, 0] = v[2, 0, 0] = np.nan  # a land cell in Feb and Mar
    v[:, 2, 3] = np.nan  # sea: not counted
    static = np.ones((3, 4))
    lf = np.ones((3, 4))
    lf[2, 3] = 0.0
    xr.Dataset(
        {"lst": (("time", "y", "x"), v), "cti": (("y", "x"), static)}, coords={"time": t, "y": y, "x": x}
    ).to_zarr(tmp_path / "predictors.zarr")
    xr.Dataset({"land_fraction": (("y", "x"), lf)}, coords={"y": y, "x": x}).to_zarr(tmp_path / "zones.zarr")
    gaps = build.gaps_on_land(tmp_path)
    assert gaps == {"lst": {"land_cell_months": 2, "share": round(2 / 33, 6), "first": "2019-02"}}


def test_a_half_written_layer_is_rewritten_on_resume(tmp_path, monkeypatch):
    """A kill after a layer's variable reached the store but before state.json recorded it (no
    except clause runs on SIGKILL) must not block the resume: the variable is written again."""
    recipe = write_world(tmp_path)
    out = tmp_path / "out"
    real_write = build._write_zarr_var
    calls = []

    def write_then_die(store, da, *args):
        real_write(store, da, *args)
        calls.append(da.name)
        if len(calls) == 2:  # the second layer is in the store, not yet in state.json
            raise SystemExit("killed")

    with monkeypatch.context() as m:
        m.setattr(build, "_write_zarr_var", write_then_die)
        m.setattr(build, "_drop_zarr_var", lambda store, name: None)  # as under SIGKILL: no clean-up
        with pytest.raises(SystemExit):
            prepare(recipe, out)
    half = calls[1]
    assert (out / ".prepare-work" / "predictors.zarr" / half).is_dir()
    assert half not in {k.split("/")[1] for k in json.loads((out / ".prepare-work" / "state.json").read_text())["done"]}
    prepare(recipe, out)
    pred = formats.read_predictors(out / "predictors.zarr", required=["srad", "soil_temp", "ndvi", "cti"])
    np.testing.assert_allclose(pred["soil_temp"].values[5], 278.15 + 5, atol=0.01)
