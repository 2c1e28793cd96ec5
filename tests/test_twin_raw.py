"""The raw twin (abzflux.twin_raw, docs/prepare_rawtwin.md): every raw file opens with the
library its real product needs, has the product's layout (names, dims, dtypes, packing, fill
values, CRS, sign, calendar), and decodes back to the twin's values at the twin's cells."""

from __future__ import annotations

import glob
import hashlib
import json
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import xarray as xr
from pyogrio.raw import read as read_vector
from pyproj import CRS, Transformer
from typer.testing import CliRunner

from abzflux import twin_raw as tr
from abzflux.cli import app
from abzflux.domain import CRS_EPSG
from abzflux.formats import FIRE_VARIABLES, ZONE_VARIABLES, cell_index
from abzflux.predictors import STACK_VARIABLES
from abzflux.twin import TwinSpec, make_twin

#: A small twin whose years overlap the process-model product's (2001-2014), so that every raw
#: file, the CMIP6-like one included, is written: 300 km, 2013-2014 (two years, so that gap filling
#: has a climatology), 30 sites.
RAW_SPEC = TwinSpec(resolution_km=300, first_year=2013, last_year=2014, seed=448, n_sites=30, n_site_months=300)


@pytest.fixture(scope="session")
def raw_twin(shared_root, code_key) -> Path:
    from conftest import shared_build

    key = hashlib.sha256(f"{code_key}|{RAW_SPEC}".encode()).hexdigest()

    def build(d: Path) -> None:
        make_twin(d / "twin", RAW_SPEC)
        tr.make_raw_twin(d / "raw", contract=d / "twin")

    return shared_build(shared_root, "raw-twin", key, build) / "raw"


@pytest.fixture(scope="session")
def world(raw_twin):
    w = tr.TwinWorld(raw_twin.parent / "twin")
    yield w
    w.close()


def _domain_lonlat(w: tr.TwinWorld):
    return w.lon[w.mask], w.lat[w.mask]


# --------------------------------------------------------------------------- grids
def test_twin_scaled_grids_are_near_a_quarter_and_half_of_the_spacing():
    g = tr.twin_scaled_grids(100)
    assert g.era5_deg == g.terraclimate_deg == g.gfed_deg == 0.25  # 25 km ~ 0.225 degrees
    assert g.modis_px_per_tile == 22  # 50.5-km pixels
    assert g.soilgrids_m == g.permafrost_m == 25_000
    assert tr.twin_scaled_grids(300).era5_deg == 0.5
    assert tr.twin_scaled_grids(8).era5_deg == 1 / 120  # 2 km: the finest step, MERIT's 30 arc-seconds
    assert tr.NATIVE_GRIDS.era5_deg == 0.1 and tr.NATIVE_GRIDS.modis_px_per_tile == 1200


# --------------------------------------------------------------------------- NetCDF products
def test_era5_land_has_the_cds_layout_and_the_twins_values(raw_twin, world):
    w = world
    f = raw_twin / "era5_land" / f"era5_land_monthly_means_{w.years[0]}.nc"
    ds = xr.open_dataset(f, engine="h5netcdf")
    assert set(ds.dims) == {"valid_time", "latitude", "longitude"}
    assert ds.number.ndim == 0 and ds.expver.dims == ("valid_time",)
    lat, lon = ds.latitude.values, ds.longitude.values
    assert lat[0] == 90.0 and (np.diff(lat) < 0).all() and lat[-1] < w.lat[w.mask].min()
    assert lon[0] == 0.0 and lon.max() < 360 and (np.diff(lon) > 0).all()
    assert pd.DatetimeIndex(ds.valid_time.values).equals(pd.date_range(f"{w.years[0]}-01-01", periods=12, freq="MS"))
    raw = xr.open_dataset(f, engine="h5netcdf", decode_times=False)
    assert "seconds since 1970" in raw.valid_time.attrs["units"]
    units = {"stl1": "K", "swvl1": "m**3 m**-3", "snowc": "%"}
    plon, plat = _domain_lonlat(w)
    for short, name in (("stl1", "soil_temp"), ("swvl1", "soil_moisture"), ("snowc", "snow_cover")):
        assert ds[short].attrs["units"] == units[short] and ds[short].dtype == np.float32
        at = ds[short].sel(
            latitude=xr.DataArray(plat, dims="p"), longitude=xr.DataArray(np.mod(plon, 360), dims="p"), method="nearest"
        )
        twin = w.year(name, w.years[0])[:, w.mask]
        np.testing.assert_allclose(at.values, twin, rtol=1e-6)
    # outside the twin's domain: no data (NaN), as ERA5-Land over the sea
    assert np.isnan(ds.stl1.sel(latitude=45.0, longitude=330.0, method="nearest")).all()


def test_terraclimate_is_int16_packed_with_lat_descending(raw_twin, world):
    w = world
    plon, plat = _domain_lonlat(w)
    for var, scale in tr.TERRACLIMATE_SCALE.items():
        f = raw_twin / "terraclimate" / f"TerraClimate_{var}_{w.years[-1]}.nc"
        packed = xr.open_dataset(f, engine="h5netcdf", decode_cf=False)[var]
        assert packed.dtype == np.int16 and packed.dims == ("time", "lat", "lon")
        assert packed.attrs["scale_factor"] == scale and packed.attrs["_FillValue"] == tr.TERRACLIMATE_FILL
        ds = xr.open_dataset(f, engine="h5netcdf")
        assert (np.diff(ds.lat) < 0).all() and ds.lon.min() > -180 and ds.lon.max() < 180
        at = ds[var].sel(lat=xr.DataArray(plat, dims="p"), lon=xr.DataArray(plon, dims="p"), method="nearest")
        np.testing.assert_allclose(at.values, w.year(var, w.years[-1])[:, w.mask], atol=scale / 2 + 1e-9)
        assert int(packed.isel(time=0, lat=-1, lon=0)) == tr.TERRACLIMATE_FILL  # 41 N, 180 W: Pacific


# --------------------------------------------------------------------------- rasters
def _pixels(path: Path, w: tr.TwinWorld):
    """(raw values, profile, whole band, flat twin-cell index or -1) of every pixel of a
    single-band GeoTIFF: the twin cell holding each pixel centre, found with the pipeline's own
    lookup (``formats.cell_index``) from pyproj's inverse of the file's CRS."""
    with rasterio.open(path) as src:
        a = src.read(1)
        prof = src.profile
        rows, cols = np.indices(a.shape)
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        lon, lat = Transformer.from_crs(src.crs.to_wkt(), 4326, always_xy=True).transform(xs, ys, errcheck=False)
        # pixels off the map (outside the sinusoidal outline, in the Homolosine's interruptions)
        # do not come back to themselves
        bx, by = Transformer.from_crs(4326, src.crs.to_wkt(), always_xy=True).transform(lon, lat, errcheck=False)
        on_map = np.hypot(np.asarray(bx) - xs, np.asarray(by) - ys) < abs(src.transform.a) / 100
    with xr.open_dataset(w.dir / "zones.nc", engine="h5netcdf") as z:
        iy, ix = cell_index(z, np.asarray(lat), np.asarray(lon))
    ok = on_map & (iy >= 0)
    flat = np.where(ok, iy * w.shape[1] + ix, 0)
    idx = np.where(ok & w.mask.ravel()[flat], flat, -1).reshape(a.shape)
    return a, prof, idx


def _check_pixels(a, idx, nodata, twin: np.ndarray, decode, atol: float, gaps: np.ndarray | None = None) -> None:
    """Pixels in the domain decode to the twin's value there; the others are no data."""
    dom = idx >= 0
    valid = dom if gaps is None else dom & ~gaps
    np.testing.assert_allclose(decode(a[valid].astype(np.float64)), twin.ravel()[idx[valid]], atol=atol, rtol=1e-6)
    assert (a[~dom] == nodata).all() if nodata is not None else True


def test_modis_mosaics_are_sinusoidal_scaled_integers_with_cloud_gaps(raw_twin, world):
    w = world
    files = json.loads((raw_twin / "raw.json").read_text())["files"]["modis"]
    assert len(files["ndvi"]) == len(files["lst"]) == 12 * len(w.years)
    july = files["ndvi"][6]
    assert f"doy{w.years[0]}182" in july  # MOD13A3: the first day of the month, as day of year
    a_ndvi, prof, idx = _pixels(raw_twin / july, w)
    crs = CRS.from_wkt(prof["crs"].to_wkt())
    assert crs.coordinate_operation.method_name == "Sinusoidal"
    assert crs.ellipsoid.semi_major_metre == crs.ellipsoid.semi_minor_metre == pytest.approx(6371007.181)
    assert prof["dtype"] == "int16" and prof["nodata"] == tr.NDVI_FILL
    t = prof["transform"]
    assert (t.c, t.f) == pytest.approx(tr.MODIS_ORIGIN)  # the MODIS tile grid's corner
    assert (a_ndvi[a_ndvi != tr.NDVI_FILL] >= tr.NDVI_VALID[0]).all()
    a_lst, prof_l, _ = _pixels(raw_twin / files["lst"][6], w)
    assert prof_l["dtype"] == "uint16" and prof_l["nodata"] == tr.LST_FILL
    # the same clouds in both products, over about CLOUD_FRACTION of the domain's pixels
    cloud = (a_ndvi == tr.NDVI_FILL) & (idx >= 0)
    assert (cloud == ((a_lst == tr.LST_FILL) & (idx >= 0))).all()
    assert 0.5 * tr.CLOUD_FRACTION < cloud[idx >= 0].mean() < 2 * tr.CLOUD_FRACTION
    y = w.years[0]
    _check_pixels(a_ndvi, idx, tr.NDVI_FILL, w.year("ndvi", y)[6], lambda r: r * tr.NDVI_SCALE, 0.5e-4 + 1e-7, cloud)
    _check_pixels(a_lst, idx, tr.LST_FILL, w.year("lst", y)[6], lambda r: r * tr.LST_SCALE - 273.15, 0.01 + 1e-4, cloud)


def test_mod44b_is_yearly_uint8_percent_with_water_and_fill(raw_twin, world):
    w = world
    y = w.years[-1]
    a, prof, idx = _pixels(raw_twin / "mod44b" / f"MOD44B.061_Percent_Tree_Cover_doy{y}065_aid0001.tif", w)
    assert prof["dtype"] == "uint8" and prof["nodata"] == tr.MOD44B_FILL
    _check_pixels(a, idx, None, w.year("tree_pct", y).mean(0), lambda r: r, 0.5 + 1e-6)
    # water off the domain, fill off the world
    assert set(np.unique(a[idx < 0])) == {tr.MOD44B_WATER, tr.MOD44B_FILL}


def test_static_layers_have_their_products_crs_and_packing(raw_twin, world):
    w = world
    files = json.loads((raw_twin / "raw.json").read_text())["files"]["static"]
    a, prof, idx = _pixels(raw_twin / files["cti"], w)
    assert CRS.from_wkt(prof["crs"].to_wkt()).to_epsg() == 4326 and prof["dtype"] == "float32"
    _check_pixels(a, idx, tr.CTI_FILL, w.static("cti"), lambda r: r, 1e-5)
    a, prof, idx = _pixels(raw_twin / files["soil_ph"], w)
    assert "Goode" in CRS.from_wkt(prof["crs"].to_wkt()).coordinate_operation.method_name
    assert prof["dtype"] == "int16" and prof["nodata"] == tr.SOILGRIDS_FILL
    _check_pixels(a, idx, tr.SOILGRIDS_FILL, w.static("soil_ph"), lambda r: r / 10, 0.05 + 1e-6)
    a, prof, idx = _pixels(raw_twin / files["soc_stock"], w)
    _check_pixels(a, idx, tr.SOILGRIDS_FILL, w.static("soc_stock"), lambda r: r / 10, 0.05 + 1e-6)  # t/ha -> kg m-2
    a, prof, idx = _pixels(raw_twin / files["permafrost_prob"], w)
    assert CRS.from_wkt(prof["crs"].to_wkt()).to_epsg() == tr.PERMAFROST_EPSG and prof["dtype"] == "uint8"
    _check_pixels(a, idx, tr.PERMAFROST_FILL, w.static("permafrost_prob"), lambda r: r / 100, 0.005 + 1e-6)


def test_landcover_share_of_land_cells_is_the_land_fraction(raw_twin, world):
    w = world
    lc = json.loads((raw_twin / "raw.json").read_text())["files"]["static"]["landcover"]
    with rasterio.open(raw_twin / lc) as src:
        a = src.read(1)
        assert CRS.from_wkt(src.crs.to_wkt()).to_epsg() == CRS_EPSG and src.dtypes[0] == "uint8"
        assert src.transform.c == w.transform[0] and src.transform.f == w.transform[1]
    k = a.shape[0] // w.shape[0]
    assert k == 10 and a.shape == (w.shape[0] * k, w.shape[1] * k)
    blocks = a.reshape(w.shape[0], k, w.shape[1], k).transpose(0, 2, 1, 3).reshape(*w.shape, k * k)
    land = ~np.isin(blocks, (tr.LANDCOVER_WATER, 220, tr.LANDCOVER_NODATA))
    share = land.mean(-1)
    lf = w.land_fraction[w.mask]
    # round(f k^2) land cells, at least one: a domain cell stays in the domain
    np.testing.assert_array_equal(land.sum(-1)[w.mask], np.maximum(np.round(lf * k**2), 1))
    big = lf >= 0.5 / k**2
    np.testing.assert_allclose(share[w.mask][big], lf[big], atol=0.5 / k**2 + 1e-6)
    assert big.mean() > 0.9
    assert (share[~w.mask] == 0).all()
    veg = w.static("veg_type")
    codes = np.where(land, blocks, 0).max(-1)  # one class per twin cell: its land cells' class
    assert (codes[w.mask] == veg[w.mask]).all()


# --------------------------------------------------------------------------- CO2 and fire
def test_noaa_record_reads_as_the_real_file_does(raw_twin, world):
    w = world
    path = raw_twin / "noaa" / "co2_brw_surface-insitu_1_ccgg_MonthlyData.txt"
    first = path.read_text().splitlines()[0]
    n_header = int(first.split(":")[1])
    df = pd.read_csv(path, sep=" ", comment="#")
    assert list(df.columns) == tr.NOAA_FIELDS.split()
    assert len(path.read_text().splitlines()) == n_header + len(df)  # header_lines counts the names row
    assert (df.site_code == "BRW").all() and df.year.min() == tr.NOAA_FIRST_YEAR
    assert (df.value == tr.NOAA_MISSING).sum() == 2 and not df[df.year >= w.years[0]].value.eq(tr.NOAA_MISSING).any()
    sel = df[df.year.isin(w.years)]
    co2 = np.concatenate([w.year("co2", y)[:, w.mask][:, 0] for y in w.years])
    np.testing.assert_allclose(sel.value.to_numpy(), co2, atol=0.005 + 1e-4)


def test_gfed_hdf5_layout_and_emission_totals_by_area(raw_twin, world):
    w = world
    area_twin = w.land_fraction * w.cell_area
    y = w.years[0]
    fe = w.fire.fire_emissions.sel(time=str(y)).values
    bf = w.fire.burned_fraction.sel(time=str(y)).values
    with h5py.File(raw_twin / "gfed" / f"GFED4.1s_{y}.hdf5", "r") as h:
        lat, lon, area = h["lat"][:], h["lon"][:], h["ancill/grid_cell_area"][:].astype(np.float64)
        assert lat.ndim == lon.ndim == 2 and lat.shape == area.shape
        assert (np.diff(lat[:, 0]) < 0).all() and lat[0, 0] < 90 and lon[0, 0] > -180
        assert area.sum() == pytest.approx(4 * np.pi * tr.EARTH_RADIUS**2, rel=1e-5)
        burning = 0
        for k in range(12):
            c = h[f"emissions/{k + 1:02d}/C"][:].astype(np.float64)
            b = h[f"burned_area/{k + 1:02d}/burned_fraction"][:].astype(np.float64)
            assert c.shape == area.shape and (c >= 0).all() and ((b >= 0) & (b <= 1)).all()
            total_twin = np.nansum(fe[k] * area_twin)
            assert (c * area).sum() == pytest.approx(total_twin, rel=1e-5, abs=1e-3)
            assert (b * area).sum() == pytest.approx(np.nansum(bf[k] * area_twin), rel=1e-4, abs=1e-3)
            np.testing.assert_allclose(h[f"emissions/{k + 1:02d}/DM"][:] * 1000 * tr.CARBON_PER_DM, c, rtol=1e-5)
            burning += total_twin > 0
        assert burning >= 2  # fire months to compare


# --------------------------------------------------------------------------- vectors
def _layer(path: Path):
    meta, _, wkb, fields = read_vector(path)
    geoms = shapely.from_wkb(wkb)
    return meta, geoms, dict(zip(meta["fields"], fields))


def _to_grid(geoms, src_crs: str):
    t = Transformer.from_crs(src_crs, CRS_EPSG, always_xy=True)
    return [shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))) for g in geoms]


def _cell_values(geoms, values, w: tr.TwinWorld, default):
    """Each twin cell's value: the polygon that holds its centre."""
    X, Y = np.meshgrid(w.x, w.y)
    out = np.full(w.shape, default, dtype=object)
    for g, v in zip(geoms, values):
        out[shapely.contains_xy(g, X, Y)] = v
    return out


def test_countries_with_the_papers_rule_reproduce_the_twins_regions(raw_twin, world):
    w = world
    meta, geoms, fields = _layer(raw_twin / "vector" / "ne_admin0_countries_like.gpkg")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 4326
    assert {"ADM0_A3", "NAME"} <= set(fields) and {"USA", "CAN", "RUS", "GRL", "NOR"} <= set(fields["ADM0_A3"])
    assert all(g.is_valid and g.geom_type == "MultiPolygon" for g in geoms)
    b = np.array([g.bounds for g in geoms])
    assert b[:, 0].min() >= -180 and b[:, 2].max() <= 180 and b[:, 1].min() > 30
    adm = _cell_values(_to_grid(geoms, "EPSG:4326"), fields["ADM0_A3"], w, "")
    region = tr.paper_region(adm, w.lon)
    match = (region == w.region)[w.mask].mean()
    assert match >= 0.95, match
    # the rule's own helper agrees with the assignment it is applied to
    assert (tr.paper_region(tr.country_codes(w), w.lon) == w.region)[w.mask].mean() >= 0.95


def test_biome_and_permafrost_polygons_reproduce_the_twins_zones(raw_twin, world):
    w = world
    meta, geoms, fields = _layer(raw_twin / "vector" / "resolve_ecoregions_like.gpkg")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 4326
    assert set(fields["BIOME_NUM"]) == {6.0, 11.0} and fields["BIOME_NUM"].dtype == np.float64
    num = _cell_values(_to_grid(geoms, "EPSG:4326"), fields["BIOME_NUM"], w, 0.0).astype(float)
    biome = np.select([num == 6, num == 11], [1, 2], 0)
    assert (biome == w.biome)[w.mask].mean() >= 0.99
    meta, geoms, fields = _layer(raw_twin / "vector" / "permafrost_zonation_like.gpkg")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == tr.PERMAFROST_EPSG
    assert set(fields["EXTENT"]) <= {"C", "D", "S", "I"}
    ext = _cell_values(_to_grid(geoms, f"EPSG:{tr.PERMAFROST_EPSG}"), fields["EXTENT"], w, "")
    with xr.open_dataset(w.dir / "zones.nc", engine="h5netcdf") as z:
        pf = z.permafrost.values
    assert (np.isin(ext, ["C", "D", "S"]) == (pf > 0.5))[w.mask].mean() >= 0.99


# --------------------------------------------------------------------------- references
def test_inversion_is_kg_per_second_positive_source(raw_twin, world):
    w = world
    (f,) = glob.glob(str(raw_twin / "inversions" / "*.nc"))
    ds = xr.open_dataset(f, engine="h5netcdf")
    assert ds.flux_land.attrs["units"] == "kg m-2 s-1" and ds.attrs["fire_included"] == 1
    assert "source" in ds.attrs["sign_convention"]
    ref = xr.open_dataset(w.dir / "ref_inversion.nc", engine="h5netcdf")
    start = pd.DatetimeIndex(ds.time_bnds.values[:, 0])
    assert start.equals(pd.DatetimeIndex(ref.time.values))
    secs = start.days_in_month.to_numpy() * 86400.0
    back = ds.flux_land.values * secs[:, None, None] * 1000.0
    np.testing.assert_allclose(back, ref.nee.values, rtol=1e-5, atol=1e-4)


def test_cmip6_nbp_is_uptake_positive_on_a_noleap_calendar(raw_twin, world):
    w = world
    (f,) = glob.glob(str(raw_twin / "cmip6" / "nbp_Lmon_*.nc"))
    raw = xr.open_dataset(f, engine="h5netcdf", decode_times=False)
    assert raw.time.attrs["calendar"] == "noleap" and raw.nbp.attrs["units"] == "kg m-2 s-1"
    packed = xr.open_dataset(f, engine="h5netcdf", decode_cf=False).nbp
    assert packed.dtype == np.float32 and packed.attrs["_FillValue"] == np.float32(1e20)
    assert raw.lon.min() > 0 and raw.lon.max() < 360 and "time_bnds" in raw
    ds = xr.open_dataset(f, engine="h5netcdf", decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    months = np.array([t.month for t in ds.time.values])
    ref = xr.open_dataset(w.dir / "ref_process.nc", engine="h5netcdf")
    assert len(months) == ref.sizes["time"]
    plon, plat = _domain_lonlat(w)
    at = ds.nbp.sel(lat=xr.DataArray(plat, dims="p"), lon=xr.DataArray(np.mod(plon, 360), dims="p"), method="nearest")
    nee = -at.values * tr.DAYS_NOLEAP[months - 1][:, None] * 86400.0 * 1000.0
    np.testing.assert_allclose(nee, ref.nee.values[:, w.mask], rtol=1e-5, atol=1e-4)
    assert ds.nbp.attrs["standard_name"].startswith("surface_net_downward_mass_flux")


# --------------------------------------------------------------------------- recipe and CLI
def test_recipe_names_every_layer_and_its_files_exist(raw_twin, world):
    w = world
    r = tomllib.loads((raw_twin / "recipe.toml").read_text())
    assert r["grid"]["crs"] == f"EPSG:{CRS_EPSG}" and r["grid"]["resolution"] == w.res
    x0, y0, x1, y1 = r["grid"]["extent"]
    assert (x1 - x0) / w.res == w.shape[1] and (y1 - y0) / w.res == w.shape[0]
    assert x0 == w.transform[0] and y1 == w.transform[1]
    assert r["time"]["years"] == f"{w.years[0]}-{w.years[-1]}"
    assert (raw_twin / r["inputs"]["sites"]).resolve() == (w.dir / "sites.csv").resolve()
    assert set(r["predictors"]) == set(STACK_VARIABLES)
    assert set(r["zones"]) == set(ZONE_VARIABLES) and set(r["fire"]) == set(FIRE_VARIABLES)
    assert set(r["references"]) == {"inversion", "cmip6"}
    for group in ("predictors", "zones", "fire", "references"):
        for name, entry in r[group].items():
            for pattern in entry["files"]:
                assert glob.glob(str(raw_twin / pattern)), f"{group}.{name}: {pattern}"
    assert r["references"]["cmip6"]["options"]["sign"] == "nbp"
    assert r["zones"]["permafrost"]["options"]["mode"] == "mask"
    assert r["references"]["inversion"]["options"]["sign"] == "nee"


def test_cli_twin_raw_writes_a_raw_twin_and_refuses_a_full_directory(tmp_path, tiny_twin):
    out = tmp_path / "raw"
    res = CliRunner().invoke(app, ["twin-raw", "--out", str(out), "--contract", str(tiny_twin), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "recipe.toml").exists() and (out / "raw.json").exists() and not (out / "contract").exists()
    assert not (out / "cmip6").exists()  # the tiny twin's years (2019-2020) miss the CMIP6-like 2001-2014
    res = CliRunner().invoke(app, ["twin-raw", "--out", str(out), "--contract", str(tiny_twin), "--quiet"])
    assert res.exit_code == 2 and "not empty" in res.output


def test_a_failed_raw_twin_leaves_nothing(tmp_path):
    (tmp_path / "notatwin").mkdir()
    with pytest.raises(FileNotFoundError, match="twin.json"):
        tr.make_raw_twin(tmp_path / "raw", contract=tmp_path / "notatwin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notatwin"]


# --------------------------------------------------------------------------- prepare on it
@pytest.mark.slow
def test_prepare_turns_the_raw_twin_back_into_the_twin(raw_twin, tmp_path):
    """`abzflux prepare` on the raw twin's recipe gives inputs `abzflux validate` accepts, close to
    the contract twin's: every predictor r > 0.9, zones matching, fire totals within 2 % (GFED's
    per-grid-cell values divided by the land fraction), the twin's forest settings and truth."""
    from abzflux.formats import open_dataset, read_fire, read_predictors, read_zones

    out = tmp_path / "prep"
    res = CliRunner().invoke(app, ["--quiet", "prepare", str(raw_twin / "recipe.toml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["validate", str(out / "config.toml")])
    assert res.exit_code == 0, res.output
    cfg = tomllib.loads((out / "config.toml").read_text())
    twin = raw_twin.parent / "twin"
    assert cfg["forest"] == tomllib.loads((twin / "config.toml").read_text())["forest"]
    assert Path(cfg["inputs"]["truth"]) == (twin / "truth.nc").resolve()
    a, b = read_predictors(twin / "predictors.zarr"), read_predictors(out / "predictors.zarr")
    za, zb = read_zones(twin / "zones.nc"), read_zones(out / "zones.zarr")
    land = (za.land_fraction.values > 0) & (zb.land_fraction.values > 0)
    assert land.sum() > 0.98 * (za.land_fraction.values > 0).sum()
    for v in STACK_VARIABLES:
        x, y = np.broadcast_arrays(a[v].values, b[v].values)
        m = np.broadcast_to(land, x.shape) & np.isfinite(x)
        assert np.isfinite(y[m]).all(), v
        if v == "veg_type":
            assert np.mean(x[m] == y[m]) > 0.95
        else:
            assert np.corrcoef(x[m], y[m])[0, 1] > 0.9, v
    for z in ("biome", "region"):
        assert np.mean(za[z].values[land] == zb[z].values[land]) > 0.95, z
    fa, fb = read_fire(twin / "fire.zarr"), read_fire(out / "fire.zarr")
    for v in FIRE_VARIABLES:
        ta = float((fa[v] * za.land_fraction).sum())
        tb = float((fb[v] * zb.land_fraction).sum())
        assert tb == pytest.approx(ta, rel=0.02), v
    assert open_dataset(out / "references" / "inversion.nc").attrs["fire_included"] in (1, "1")
    # prepare.json lists the land cell(-month)s left NaN, counted here independently
    gaps = json.loads((out / "prepare.json").read_text())["gaps_on_land"]
    prepared_land = zb.land_fraction.values > 0
    for v in STACK_VARIABLES:
        n = int((np.isnan(b[v].values) & prepared_land).sum())
        assert gaps.get(v, {}).get("land_cell_months", 0) == n, v
