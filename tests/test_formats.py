"""Tests of the input-contract readers and validators (abzflux.formats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

from abzflux import formats, predictors
from abzflux.errors import InputError

CRS = "EPSG:6931"  # NSIDC EASE-Grid 2.0 North (LAEA at the pole)
X = np.array([-50e3, -25e3, 0.0, 25e3, 50e3])  # 5 cells, 25 km
Y = np.array([37.5e3, 12.5e3, -12.5e3, -37.5e3])  # 4 cells, descending
TIME = pd.date_range("2015-06-01", periods=3, freq="MS")

SITES = {  # site_id: (lat, lon), all within ~25 km of the pole
    "S1": (89.80, 0.0),
    "S2": (89.85, 90.0),
    "S3": (89.75, -120.0),
    "S4": (89.90, 170.0),
}


def expect_error(fn, *parts):
    """Call fn, assert it raises InputError whose message contains every part."""
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert str(part) in msg, f"{part!r} not in message: {msg}"
    return info.value


def write(ds: xr.Dataset, path) -> str:
    path = str(path)
    if path.endswith(".zarr"):
        ds.to_zarr(path, mode="w", consolidated=False)
    else:
        ds.to_netcdf(path, engine="h5netcdf")
    return path


# ------------------------------------------------------------------------------------ fixtures


def _dims(kind):
    return ("time", "y", "x") if kind in predictors.TIME_VARYING else ("y", "x")


def make_stack(seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = {}
    for name in predictors.STACK_VARIABLES:
        p = predictors.BY_NAME[name]
        shape = (len(TIME), len(Y), len(X)) if p.time_varying else (len(Y), len(X))
        if p.categorical:
            codes = np.array(sorted(predictors.VEG_CLASSES))
            vals = rng.choice(codes, size=shape).astype("int16")
            attrs = {
                "flag_values": codes.astype("int16"),
                "flag_meanings": " ".join(predictors.VEG_CLASSES[c] for c in codes),
            }
        else:
            lo, hi = predictors.PHYSICAL_RANGE.get(name, (0.0, 20.0))
            vals = lo + (hi - lo) * rng.uniform(0.2, 0.8, size=shape)  # physically plausible values
            attrs = {"units": p.units}
        data[name] = xr.Variable(_dims(p.kind), vals, attrs)
    ds = xr.Dataset(data, coords={"time": TIME, "y": Y, "x": X})
    ds["ndvi"][0, 0, 0] = np.nan  # a few NaNs are fine
    return formats.write_crs(ds, CRS)


def make_zones() -> xr.Dataset:
    lf = np.full((len(Y), len(X)), 1.0)
    lf[0, 0] = 0.0
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), lf),
            "biome": (
                ("y", "x"),
                np.tile([1, 2, 1, 2, 1], (len(Y), 1)).astype("int8"),
                {"flag_values": np.array([1, 2], "int8"), "flag_meanings": "boreal tundra"},
            ),
            "region": (
                ("y", "x"),
                np.ones((len(Y), len(X)), "int8"),
                {"flag_values": np.array([1, 2, 3, 4], "int8"), "flag_meanings": "alaska canada europe siberia"},
            ),
            "permafrost": (("y", "x"), np.full((len(Y), len(X)), 0.7)),
        },
        coords={"y": Y, "x": X},
    )
    return formats.write_crs(ds, CRS)


def make_fire() -> xr.Dataset:
    shape = (len(TIME), len(Y), len(X))
    ds = xr.Dataset(
        {
            "fire_emissions": (("time", "y", "x"), np.full(shape, 2.5)),
            "burned_fraction": (("time", "y", "x"), np.full(shape, 0.01)),
        },
        coords={"time": TIME, "y": Y, "x": X},
    )
    return formats.write_crs(ds, CRS)


def make_reference(latlon=False) -> xr.Dataset:
    if latlon:
        lat = np.arange(60.5, 90.0, 1.0)
        lon = np.arange(-179.5, 180.0, 1.0)
        ds = xr.Dataset(
            {"nee": (("time", "lat", "lon"), np.full((len(TIME), lat.size, lon.size), -10.0))},
            coords={"time": TIME, "lat": lat, "lon": lon},
        )
    else:
        ds = formats.write_crs(
            xr.Dataset(
                {"nee": (("time", "y", "x"), np.full((len(TIME), len(Y), len(X)), -10.0))},
                coords={"time": TIME, "y": Y, "x": X},
            ),
            CRS,
        )
    ds.attrs["product"] = "test-inversion"
    return ds


def make_sites() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(1)
    for sid, (lat, lon) in SITES.items():
        for m in (6, 7, 8):
            gpp = rng.uniform(40, 150)
            reco = rng.uniform(30, 100)
            rows.append(
                {
                    "Site_ID": sid,
                    "lat": lat,
                    "lon": lon,
                    "year": 2015,
                    "month": m,
                    "GPP": gpp,
                    "Reco": reco,
                    "nee": reco - gpp,
                    "method": "ec" if sid != "S3" else "Chamber",
                    "disturbance": "Fire" if sid == "S2" else "",
                    "ndvi": 0.5,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def sites_csv(tmp_path):
    path = tmp_path / "sites.csv"
    # reversed order, so that sorting and the `row` column are exercised
    make_sites().iloc[::-1].to_csv(path, index=False)
    return path


@pytest.fixture
def stack_nc(tmp_path):
    return write(make_stack(), tmp_path / "stack.nc")


def csv_with(tmp_path, edit, name="sites.csv"):
    """Write the valid site table after ``edit(df)`` changed it; return the path."""
    df = make_sites()
    out = edit(df)
    df = df if out is None else out
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# -------------------------------------------------------------------------------- valid inputs


def test_site_table_csv_normalised(sites_csv):
    df = formats.read_site_table(sites_csv)
    assert len(df) == 12
    assert {"site_id", "lat", "lon", "year", "month", "gpp", "reco", "nee", "row"} <= set(df)
    assert list(df["site_id"].unique()) == ["S1", "S2", "S3", "S4"]
    assert list(df["month"][:3]) == [6, 7, 8]
    assert df["year"].dtype == np.int64 and df["month"].dtype == np.int64
    assert df["row"].dtype == np.int64
    # file was written in reverse order: S1-June is the last data row
    assert df["row"].iloc[0] == 12
    assert set(df["method"]) == {"EC", "chamber"}
    assert set(df.loc[df.site_id == "S2", "disturbance"]) == {"fire"}
    assert set(df.loc[df.site_id != "S2", "disturbance"]) == {"none"}
    assert df["ndvi"].eq(0.5).all()  # extra (predictor) columns kept
    src = make_sites().iloc[::-1].reset_index(drop=True)
    exp = src.loc[11]
    assert df.loc[0, "gpp"] == pytest.approx(exp["GPP"])
    assert df.loc[0, "reco"] == pytest.approx(exp["Reco"])


def test_site_table_parquet_matches_csv(tmp_path, sites_csv):
    pq = tmp_path / "sites.parquet"
    make_sites().iloc[::-1].to_parquet(pq, index=False)
    a = formats.read_site_table(sites_csv)
    b = formats.read_site_table(pq)
    pd.testing.assert_frame_equal(
        a[["site_id", "row", "year", "month"]].astype(object), b[["site_id", "row", "year", "month"]].astype(object)
    )
    np.testing.assert_allclose(
        a[["lat", "lon", "gpp", "reco", "nee"]].to_numpy(), b[["lat", "lon", "gpp", "reco", "nee"]].to_numpy()
    )


def test_site_table_missing_flux_filled(tmp_path):
    path = csv_with(tmp_path, lambda d: d.drop(columns=["GPP", "Reco"]))
    df = formats.read_site_table(path)
    assert df["gpp"].isna().all() and df["reco"].isna().all()
    assert df["nee"].notna().all()


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_predictors_roundtrip(tmp_path, suffix):
    src = make_stack()
    path = write(src, tmp_path / f"stack{suffix}")
    ds = formats.read_predictors(path)
    assert set(ds.data_vars) == set(predictors.STACK_VARIABLES)
    assert ds["ndvi"].chunks is not None  # lazy
    assert ds["srad"].dims == ("time", "y", "x") and ds["cti"].dims == ("y", "x")
    np.testing.assert_allclose(ds["srad"].values, src["srad"].values)
    np.testing.assert_array_equal(ds["veg_type"].values, src["veg_type"].values)
    assert formats.categories(ds["veg_type"]) == predictors.VEG_CLASSES
    assert formats.grid_crs(ds, path) == pyproj.CRS(CRS)
    assert ds["time"].values[0] == np.datetime64("2015-06-01")


def test_predictors_subset_and_transposed(tmp_path):
    src = make_stack()[["srad", "cti", "spatial_ref"]]
    src["srad"] = src["srad"].transpose("y", "x", "time")
    path = write(src, tmp_path / "sub.nc")
    ds = formats.read_predictors(path, required=["srad", "cti", "month"])
    assert ds["srad"].dims == ("time", "y", "x")


def test_zones_fire_reference_roundtrip(tmp_path, stack_nc):
    like = formats.open_dataset(stack_nc)
    z = formats.read_zones(write(make_zones(), tmp_path / "zones.zarr"), like=like)
    assert float(z["cell_area"].max()) == 25e3 * 25e3  # from grid spacing
    np.testing.assert_allclose(z["permafrost"].values, 0.7)
    assert formats.categories(z["biome"]) == {1: "boreal", 2: "tundra"}
    f = formats.read_fire(write(make_fire(), tmp_path / "fire.nc"), like=like)
    np.testing.assert_allclose(f["burned_fraction"].values, 0.01)
    r = formats.read_reference(write(make_reference(), tmp_path / "ref.nc"), like=like)
    assert r.attrs["product"] == "test-inversion"
    r2 = formats.read_reference(write(make_reference(latlon=True), tmp_path / "ref_ll.nc"), like=like)
    assert r2["nee"].dims == ("time", "lat", "lon")


def test_cell_index_and_sites_in_grid(stack_nc, sites_csv):
    ds = formats.open_dataset(stack_nc)
    # a point at the pole lies in the middle column (x=0) and on the edge between rows 1 and 2
    tr = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform([-50e3, 50e3, 10e3], [37.5e3, -37.5e3, -20e3])
    iy, ix = formats.cell_index(ds, lat, lon)
    assert list(iy) == [0, 3, 2] and list(ix) == [0, 4, 2]
    # ascending y gives the matching index
    asc = ds.isel(y=slice(None, None, -1))
    iy2, ix2 = formats.cell_index(asc, lat, lon)
    assert list(iy2) == [3, 0, 1] and list(ix2) == [0, 4, 2]
    iy3, ix3 = formats.cell_index(ds, [70.0], [20.0])
    assert iy3[0] == -1 and ix3[0] == -1
    sites = formats.read_site_table(sites_csv)
    formats.check_sites_in_grid(sites, ds, stack_nc, variable="srad")


def test_write_crs_attributes():
    ds = make_zones()
    assert ds["land_fraction"].attrs["grid_mapping"] == "spatial_ref"
    assert "crs_wkt" in ds["spatial_ref"].attrs and "spatial_ref" in ds["spatial_ref"].attrs
    assert ds["spatial_ref"].attrs["grid_mapping_name"] == "lambert_azimuthal_equal_area"


# ------------------------------------------------------------------------- site-table errors


def test_missing_columns(tmp_path):
    path = csv_with(tmp_path, lambda d: d.drop(columns=["lat", "month", "GPP", "Reco", "nee"]))
    expect_error(lambda: formats.read_site_table(path), str(path), "lat", "month", "gpp/reco/nee")


def test_fluxes_in_umol(tmp_path):
    def edit(d):
        d["GPP"] = d["GPP"] / 31.5

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[gpp]", "µmol m-2 s-1", "g C m-2 month-1")


def test_month_out_of_range(tmp_path):
    def edit(d):
        d.loc[4, "month"] = 13

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[month]", "row 5", "site S2", "13", "1..12")


def test_duplicate_site_months(tmp_path):
    def edit(d):
        d.loc[8, "month"] = 7  # S3: data rows 8 and 9 now both 2015-07

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "site S3 2015-07 (rows 8, 9)")


@pytest.mark.parametrize("col,name", [("GPP", "gpp"), ("Reco", "reco")])
def test_negative_gpp_reco(tmp_path, col, name):
    def edit(d):
        d.loc[2, col] = -3.5

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), f"[{name}]", "negative", "row 3 (site S1)", "-3.5")


def test_implausibly_large_flux(tmp_path):
    def edit(d):
        d.loc[0, "nee"] = -4000.0

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[nee]", "row 1", "-4000")


def test_infinite_flux(tmp_path):
    def edit(d):
        d.loc[1, "Reco"] = np.inf

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[reco]", "row 2", "inf")


def test_lat_out_of_range_and_non_numeric(tmp_path):
    def edit(d):
        d.loc[3, "lat"] = 95.0

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[lat]", "row 4", "95")

    def edit2(d):
        d["lon"] = d["lon"].astype(object)
        d.loc[5, "lon"] = "east"

    path = csv_with(tmp_path, edit2, "b.csv")
    expect_error(lambda: formats.read_site_table(path), "[lon]", "row 6", "'east'")


def test_site_with_two_locations(tmp_path):
    def edit(d):
        d.loc[1, "lat"] = 89.5

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "site S1", "row 2")


def test_unknown_method(tmp_path):
    def edit(d):
        d.loc[0, "method"] = "flask"

    path = csv_with(tmp_path, edit)
    expect_error(lambda: formats.read_site_table(path), str(path), "[method]", "row 1", "flask")


def test_empty_table(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    expect_error(lambda: formats.read_site_table(empty), str(empty), "empty")
    header = tmp_path / "header.csv"
    header.write_text("site_id,lat,lon,year,month,gpp\n")
    expect_error(lambda: formats.read_site_table(header), str(header), "no data rows")


def test_nonexistent_paths(tmp_path):
    missing = tmp_path / "nope.csv"
    expect_error(lambda: formats.read_site_table(missing), str(missing), "not found")
    missing_nc = tmp_path / "nope.nc"
    expect_error(lambda: formats.read_predictors(missing_nc), str(missing_nc), "not found")


# ---------------------------------------------------------------------------- gridded errors


def test_sites_outside_grid(tmp_path, stack_nc):
    def edit(d):
        d.loc[d.Site_ID == "S4", ["lat", "lon"]] = (70.0, 20.0)

    sites = formats.read_site_table(csv_with(tmp_path, edit))
    ds = formats.open_dataset(stack_nc)
    expect_error(
        lambda: formats.check_sites_in_grid(sites, ds, stack_nc), str(stack_nc), "site S4 (lat 70, lon 20)", "outside"
    )


def test_shifted_grid(tmp_path, stack_nc):
    z = make_zones().assign_coords(x=X + 1000.0)
    path = write(z, tmp_path / "zones.nc")
    like = formats.open_dataset(stack_nc)
    expect_error(lambda: formats.read_zones(path, like=like), str(path), str(stack_nc), "[x]", "x[0]")


def test_different_crs(tmp_path, stack_nc):
    f = formats.write_crs(make_fire().drop_vars("spatial_ref"), "EPSG:3413")
    path = write(f, tmp_path / "fire.nc")
    like = formats.open_dataset(stack_nc)
    expect_error(lambda: formats.read_fire(path, like=like), str(path), str(stack_nc), "CRS", "EPSG:3413")


def test_missing_crs(tmp_path):
    ds = make_stack().drop_vars("spatial_ref")
    for v in ds.data_vars:
        ds[v].attrs.pop("grid_mapping", None)
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "no CRS", "spatial_ref")


def test_all_nan_predictor(tmp_path):
    ds = make_stack()
    ds["soil_ph"] = ds["soil_ph"] * np.nan
    path = write(ds, tmp_path / "stack.zarr")
    expect_error(lambda: formats.read_predictors(path), str(path), "[soil_ph]", "entirely NaN")


def test_all_nan_time_step(tmp_path):
    ds = make_stack()
    ds["vpd"][1] = np.nan
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "[vpd]", "time step 1 (2015-07-01)")


def test_categorical_without_flag_meanings(tmp_path):
    ds = make_stack()
    del ds["veg_type"].attrs["flag_meanings"]
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "[veg_type]", "flag_meanings")


def test_unknown_category_code(tmp_path):
    ds = make_stack()
    ds["veg_type"][2, 3] = 99
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "[veg_type]", "99", "index y=2, x=3")


def test_month_stored(tmp_path):
    ds = make_stack()
    ds["month"] = ds["time"].dt.month
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "[month]", "derived")


def test_missing_predictors_listed(tmp_path):
    path = write(make_stack().drop_vars(["co2", "cti"]), tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "co2", "cti")


def test_static_predictor_as_time_series_refused(tmp_path):
    # a (time,) series is broadcast for a time-varying predictor (tests/test_predictor_set.py),
    # never for a static one
    ds = make_stack()
    ds["cti"] = ("time", np.array([4.0, 5.0, 6.0]))
    path = write(ds, tmp_path / "stack.nc")
    expect_error(lambda: formats.read_predictors(path), str(path), "[cti]", "('time',)", "static predictor")


def test_non_monthly_time(tmp_path):
    ds = make_fire().assign_coords(time=pd.date_range("2015-06-01", periods=3, freq="D"))
    path = write(ds, tmp_path / "fire.nc")
    expect_error(lambda: formats.read_fire(path), str(path), "[time]", "time step 1 (2015-06-02)")
    dup = make_fire().assign_coords(time=TIME[[0, 1, 1]])
    path = write(dup, tmp_path / "fire_dup.nc")
    expect_error(lambda: formats.read_fire(path), str(path), "[time]", "duplicate", "time step 2 (2015-07-01)")


def test_non_regular_x(tmp_path):
    ds = make_zones().assign_coords(x=[-50e3, -25e3, 0.0, 30e3, 50e3])
    path = write(ds, tmp_path / "zones.nc")
    expect_error(lambda: formats.read_zones(path), str(path), "[x]", "not regularly spaced")


def test_zone_out_of_range(tmp_path):
    ds = make_zones()
    ds["permafrost"][1, 2] = 1.5
    path = write(ds, tmp_path / "zones.nc")
    expect_error(lambda: formats.read_zones(path), str(path), "[permafrost]", "1 value(s)", "1.5", "index y=1, x=2")


def test_biome_without_tundra(tmp_path):
    ds = make_zones()
    ds["biome"].attrs["flag_meanings"] = "boreal arctic"
    path = write(ds, tmp_path / "zones.nc")
    expect_error(lambda: formats.read_zones(path), str(path), "[biome]", "tundra")


def test_negative_fire_emissions(tmp_path):
    ds = make_fire()
    ds["fire_emissions"][2, 0, 1] = -1.0
    path = write(ds, tmp_path / "fire.zarr")
    expect_error(lambda: formats.read_fire(path), str(path), "[fire_emissions]", "time=2015-08-01")


def test_truncated_netcdf(tmp_path):
    path = write(make_stack(), tmp_path / "stack.nc")
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    expect_error(lambda: formats.read_predictors(path), str(path), "truncated")


def test_reference_without_product(tmp_path):
    ds = make_reference()
    del ds.attrs["product"]
    path = write(ds, tmp_path / "ref.nc")
    expect_error(lambda: formats.read_reference(path), str(path), "[product]")


def test_reference_in_abzflux_cf_form_is_read(tmp_path):
    """A product written as abzflux writes its maps (formats.md §6: units g m-2 with cell_methods
    time: sum, the same numbers) is accepted; g m-2 without the monthly sum is not a flux."""
    ds = make_reference()
    ds["nee"].attrs.update(units="g m-2", cell_methods="time: sum")
    r = formats.read_reference(write(ds, tmp_path / "cf.nc"))
    np.testing.assert_array_equal(r.nee.values, ds.nee.values)
    ds["nee"].attrs.pop("cell_methods")
    path = write(ds, tmp_path / "amount.nc")
    expect_error(lambda: formats.read_reference(path), str(path), "[nee]", "'g m-2'", "g C m-2 month-1")


def test_units_spellings():
    """Units attributes are compared by meaning: common spellings of the contract's units pass,
    other units (a daily or annual flux, kg, degC for K) differ."""
    pu = formats.parse_units
    same = ["g C m-2 month-1", "gC m-2 month-1", "g C m^-2 month^-1", "gC/m2/month", "g C m**-2 mon-1"]
    assert all(pu(u) == pu(same[0]) for u in same)
    for other in ("g C m-2 d-1", "kg C m-2 month-1", "g m-2 month-1", "g C m-2 yr-1", "umol m-2 s-1"):
        assert pu(other) != pu(same[0]), other
    assert pu("m3 m-3") == pu("m**3 m**-3") == pu("1") == pu("") == {}
    assert pu("degC") == pu("°C") == pu("degrees C") != pu("K")
    assert pu("%") == pu("percent") != pu("1")
    assert pu("no such unit!") is None
