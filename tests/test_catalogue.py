"""The bad-input catalogue: malformed inputs, each stopped up front with one clear error.

Every case mutates one input of a small valid twin (the site table, the predictor stack, the
zones, fire, reference or truth file, or the config), runs the real command
(``abzflux run CONFIG --out RUN``) and checks that

- the exit code is 2 (the CLI's code for an input error) and no Python traceback is shown;
- the message names the file, the column or variable, where (row, site, time step, cell) and
  what was expected (the substrings below);
- nothing was written: the run directory does not exist afterwards (abzflux writes no log file;
  the log goes to the terminal).

The catalogue doubles as documentation: ``python tests/test_catalogue.py`` prints the markdown
table of docs/errors.md (case, what is wrong, the error message) from real runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from prepare_world import GRID as PREP_GRID
from prepare_world import latlon_nc
from typer.testing import CliRunner

from abzflux.cli import app
from abzflux.formats import write_crs
from abzflux.twin import make_twin

from conftest import TINY

# A tiny twin: 300-km grid (27 x 30 cells), two years, 30 sites; validation takes about a second.
INPUTS = ("sites", "predictors", "zones", "fire", "truth")


class Work:
    """One case's working directory: a config pointing at the valid twin's files, with the
    mutated input copied or rewritten into the case directory."""

    def __init__(self, twin: Path, root: Path):
        self.twin, self.root = twin, root
        self.inputs = {
            "sites": twin / "sites.csv",
            "predictors": twin / "predictors.zarr",
            "zones": twin / "zones.nc",
            "fire": twin / "fire.zarr",
            "truth": twin / "truth.nc",
            "references": [twin / "ref_inversion.nc"],
        }
        self.sections = {"run": ["seed = 448", 'years = "2019-2020"']}
        self.config = root / "config.toml"
        self.args: list | None = None  # override of the command line

    # -- writing the config
    def write_config(self) -> Path:
        lines = ["[inputs]"]
        for k, v in self.inputs.items():
            if isinstance(v, list):
                lines.append(f"{k} = [{', '.join(json.dumps(str(p)) for p in v)}]")
            elif v is not None:
                lines.append(f"{k} = {json.dumps(str(v))}")
        for sec, body in self.sections.items():
            lines += ["", f"[{sec}]", *body]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    # -- mutating inputs
    def table(self) -> pd.DataFrame:
        """The site table as text (every cell a string, as in the file)."""
        return pd.read_csv(self.twin / "sites.csv", dtype=str, keep_default_na=False)

    def put_table(self, df: pd.DataFrame, name: str = "sites.csv") -> Path:
        p = self.root / name
        if name.endswith(".parquet"):
            df.to_parquet(p, index=False)
        else:
            df.to_csv(p, index=False)
        self.inputs["sites"] = p
        return p

    def grid(self, key: str) -> xr.Dataset:
        src = self.inputs[key] if key != "references" else self.inputs["references"][0]
        if str(src).endswith(".zarr"):
            return xr.open_zarr(src, consolidated=False).load()
        with xr.open_dataset(src) as ds:
            return ds.load()

    def put_grid(self, key: str, ds: xr.Dataset, name: str | None = None) -> Path:
        name = (
            name
            or {
                "predictors": "predictors.nc",
                "zones": "zones.nc",
                "fire": "fire.nc",
                "truth": "truth.nc",
                "references": "ref.nc",
            }[key]
        )
        p = self.root / name
        if name.endswith(".zarr"):
            ds.to_zarr(p)
        else:
            ds.to_netcdf(p, engine="h5netcdf")
        if key == "references":
            self.inputs["references"] = [p]
        else:
            self.inputs[key] = p
        return p

    def copy(self, key: str) -> Path:
        src = self.inputs[key]
        dst = self.root / src.name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        self.inputs[key] = dst
        return dst


def _set(df, row, col, value):
    """Set a cell of the text table; ``row`` is the 1-based data row of the file."""
    df.loc[row - 1, col] = value
    return df


def _retime(ds: xr.Dataset, values) -> xr.Dataset:
    ds = ds.assign_coords(time=np.asarray(values, dtype="datetime64[ns]"))
    ds.time.encoding = {"units": "days since 2019-01-01", "calendar": "proleptic_gregorian"}
    return ds


def _zarr_attrs(store: Path, var: str, **attrs) -> None:
    meta = store / var / "zarr.json"
    d = json.loads(meta.read_text())
    for k, v in attrs.items():
        if v is None:
            d["attributes"].pop(k, None)
        else:
            d["attributes"][k] = v
    meta.write_text(json.dumps(d))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    id: str
    what: str  # the malformation, in words (docs/errors.md)
    mutate: object  # callable(Work)
    expect: tuple  # substrings of the error message


def m_config_missing(w):
    w.args = ["run", str(w.root / "nope.toml"), "--out", str(w.root / "run")]


def m_config_bad_toml(w):
    w.write_config()
    w.config.write_text(w.config.read_text() + "\n[forest\nn_estimators = 5\n")


def m_unknown_key(w):
    w.sections["run"].append("seeds = 3")


def m_unknown_section(w):
    w.sections["forests"] = ["n_estimators = 10"]


def m_path_missing(w):
    w.inputs["zones"] = w.root / "zones_v2.nc"


def m_wrong_type(w):
    w.sections["forest"] = ['n_estimators = "many"']


def m_years_reversed(w):
    w.sections["run"][1] = 'years = "2020-2019"'


def m_years_outside(w):
    w.sections["run"][1] = 'years = "2018-2020"'


def m_fire_month_13(w):
    w.sections["fire"] = ["months = [6, 13]"]


def m_fire_target_outside(w):
    w.sections["fire"] = ["target_year = 2021"]


def m_coarse_bad(w):
    # a valid fine set; the coarse set's "predictors" is a zones file: nothing may run at all
    w.sections["coarse"] = [
        f"predictors = {json.dumps(str(w.twin / 'zones.nc'))}",
        f"zones = {json.dumps(str(w.twin / 'zones.nc'))}",
    ]


def m_sites_empty(w):
    (w.root / "sites.csv").write_bytes(b"")
    w.inputs["sites"] = w.root / "sites.csv"


def m_sites_header_only(w):
    w.put_table(w.table().iloc[:0])


def m_sites_no_lat(w):
    w.put_table(w.table().drop(columns=["lat"]))


def m_sites_text_in_gpp(w):
    w.put_table(_set(w.table(), 5, "gpp", "n/a?"))


def m_sites_month_13(w):
    w.put_table(_set(w.table(), 5, "month", "13"))


def m_sites_year_range(w):
    w.put_table(_set(w.table(), 5, "year", "2190"))


def m_sites_duplicate(w):
    df = w.table()
    w.put_table(pd.concat([df.iloc[:5], df.iloc[[4]], df.iloc[5:]], ignore_index=True))


def m_sites_negative_gpp(w):
    df = w.table()
    df["gpp"] = [f"-{v}" if v and v != "0.0" else v for v in df.gpp]  # uptake-negative sign convention
    w.put_table(df)


def m_sites_umol(w):
    df = w.table()
    for c in ("gpp", "reco", "nee"):
        df[c] = pd.to_numeric(df[c]) / 31.5
    w.put_table(df)


def m_sites_annual(w):
    df = w.table()
    for c in ("gpp", "reco", "nee"):
        df[c] = pd.to_numeric(df[c]) * 12
    w.put_table(df)


def m_sites_swapped(w):
    df = w.table()
    df["lat"], df["lon"] = df["lon"].copy(), df["lat"].copy()
    w.put_table(df)


def m_sites_outside(w):
    df = w.table()
    df.loc[df.site_id == "TW001", "lat"] = "30.0"
    w.put_table(df)


def m_sites_missing_lon(w):
    w.put_table(_set(w.table(), 5, "lon", ""))


def m_sites_lon_360(w):
    df = w.table()
    lon = pd.to_numeric(df.lon)
    df["lon"] = np.where(lon < 0, lon + 360, lon)
    w.put_table(df)


def m_sites_two_locations(w):
    w.put_table(_set(w.table(), 5, "lat", "59.5"))


def m_sites_only_nee(w):
    w.put_table(w.table().drop(columns=["gpp", "reco"]))


def m_sites_unknown_method(w):
    w.put_table(_set(w.table(), 5, "method", "tower"))


def m_sites_parquet_truncated(w):
    df = w.table()
    p = w.put_table(df.assign(lat=pd.to_numeric(df.lat), lon=pd.to_numeric(df.lon)), "sites.parquet")
    _truncate(p)


def m_pred_missing_var(w):
    w.put_grid("predictors", w.grid("predictors").drop_vars("vpd"))


def m_pred_units_attr(w):
    ds = w.grid("predictors")
    ds["soil_temp"].attrs["units"] = "m s-1"
    w.put_grid("predictors", ds)


def m_pred_units_converted(w):
    ds = w.grid("predictors")
    ds["soil_temp"].attrs["units"] = "degC"  # kelvin values labelled degC: converted (+273.15), then out of range
    w.put_grid("predictors", ds)


def m_pred_annual_missing_year(w):
    ds = w.grid("predictors")
    years = ds.time.dt.year.values
    first = ds["tree_pct"].isel(time=np.nonzero(years == years[0])[0]).mean("time")
    ds = ds.drop_vars("tree_pct").assign_coords(year=[int(years[0])])
    ds["tree_pct"] = first.expand_dims(year=ds.year).assign_attrs(units="%")  # one year's layer only
    w.put_grid("predictors", ds)


def m_predictor_set_unknown(w):
    w.sections["predictors"] = ['drop = ["nvdi"]']


def m_pred_units_values(w):
    ds = w.grid("predictors")
    ds["soil_temp"] = ds["soil_temp"] - 273.15  # converted to degC, attribute still K
    ds["soil_temp"].attrs["units"] = "K"
    w.put_grid("predictors", ds)


def m_pred_scale(w):
    ds = w.grid("predictors")
    ds["ndvi"] = (ds["ndvi"] * 10000).assign_attrs(ds["ndvi"].attrs)  # raw MODIS integers
    w.put_grid("predictors", ds)


def m_pred_nan_layer(w):
    ds = w.grid("predictors")
    ds["cti"] = ds["cti"] * np.nan
    w.put_grid("predictors", ds)


def m_pred_nan_step(w):
    ds = w.grid("predictors")
    ds["srad"][5] = np.nan
    w.put_grid("predictors", ds)


def m_pred_no_flags(w):
    store = w.copy("predictors")
    _zarr_attrs(store, "veg_type", flag_meanings=None)


def m_pred_unlisted_code(w):
    ds = w.grid("predictors")
    v = ds["veg_type"].values
    iy, ix = np.argwhere(np.isfinite(v))[0]
    v[iy, ix] = 99
    w.put_grid("predictors", ds)


def m_pred_duplicate_month(w):
    ds = w.grid("predictors")
    t = ds.time.values.copy()
    t[6] = t[5]
    w.put_grid("predictors", _retime(ds, t))


def m_pred_time_order(w):
    ds = w.grid("predictors")
    t = ds.time.values.copy()
    t[[6, 7]] = t[[7, 6]]
    w.put_grid("predictors", _retime(ds, t))


def m_pred_mid_month(w):
    ds = w.grid("predictors")
    w.put_grid("predictors", _retime(ds, ds.time.values + np.timedelta64(14, "D")))


def m_pred_shuffled_y(w):
    ds = w.grid("predictors")
    y = ds.y.values.copy()
    y[[3, 4]] = y[[4, 3]]
    w.put_grid("predictors", ds.assign_coords(y=y))


def m_pred_no_crs(w):
    ds = w.grid("predictors").drop_vars("spatial_ref")
    for v in ds.data_vars:
        ds[v].attrs.pop("grid_mapping", None)
    w.put_grid("predictors", ds)


def m_pred_geographic(w):
    w.put_grid("predictors", write_crs(w.grid("predictors"), "EPSG:4326"))


def m_pred_text_dtype(w):
    ds = w.grid("predictors")
    ds["cti"] = ds["cti"].astype(str)
    w.put_grid("predictors", ds)


def m_pred_series(w):
    ds = w.grid("predictors")
    # a (time,) series is broadcast for a time-varying predictor (co2), never for a static one
    ds["cti"] = ds["srad"].mean(("y", "x")).assign_attrs(units="1")
    w.put_grid("predictors", ds)


def m_pred_month_stored(w):
    ds = w.grid("predictors")
    w.put_grid("predictors", ds.assign(month=("time", ds.time.dt.month.values)))


def m_pred_nc_truncated(w):
    _truncate(w.put_grid("predictors", w.grid("predictors")))


def m_pred_zarr_no_meta(w):
    store = w.copy("predictors")
    (store / "srad" / "zarr.json").unlink()


def m_pred_zarr_bad_metadata(w):
    store = w.copy("predictors")
    _truncate(store / "srad" / "zarr.json")


def m_pred_zarr_no_time(w):
    store = w.copy("predictors")
    shutil.rmtree(store / "time")


def m_pred_zarr_corrupt_chunk(w):
    store = w.copy("predictors")
    _truncate(store / "srad" / "c" / "1" / "0" / "0")  # 2020 (a year per chunk)


def m_pred_zarr_lost_chunk(w):
    store = w.copy("predictors")
    (store / "srad" / "c" / "1" / "0" / "0").unlink()  # 2020 (a year per chunk)


def m_zones_offset(w):
    ds = w.grid("zones")
    w.put_grid("zones", ds.assign_coords(x=ds.x + 0.5 * float(ds.x[1] - ds.x[0])))


def m_zones_crs(w):
    w.put_grid("zones", write_crs(w.grid("zones"), "EPSG:3413"))


def m_zones_shape(w):
    w.put_grid("zones", w.grid("zones").isel(x=slice(0, -1)))


def m_zones_percent(w):
    ds = w.grid("zones")
    ds["land_fraction"] = ds["land_fraction"] * 100
    w.put_grid("zones", ds)


def m_zones_biome_names(w):
    ds = w.grid("zones")
    ds["biome"].attrs["flag_meanings"] = "boreal arctic"
    w.put_grid("zones", ds)


def m_zones_empty(w):
    (w.root / "zones.nc").write_bytes(b"")
    w.inputs["zones"] = w.root / "zones.nc"


def m_zones_area_units(w):
    ds = w.grid("zones")
    ds["cell_area"] = (ds["cell_area"] / 1e6).assign_attrs(units="km2")
    w.put_grid("zones", ds)


def m_fire_negative(w):
    ds = w.grid("fire")
    ds["fire_emissions"] = -ds["fire_emissions"]  # emissions as a negative (atmosphere-gain) flux
    ds["fire_emissions"].attrs["units"] = "g C m-2 month-1"
    w.put_grid("fire", ds)


def m_fire_units(w):
    store = w.copy("fire")
    _zarr_attrs(store, "fire_emissions", units="kg C m-2 month-1")


def m_fire_percent(w):
    ds = w.grid("fire")
    ds["burned_fraction"] = (ds["burned_fraction"] * 100).assign_attrs(units="1")
    w.put_grid("fire", ds)


def m_fire_lost_chunk(w):
    store = w.copy("fire")
    (store / "fire_emissions" / "c" / "1" / "0" / "0").unlink()  # 2020


def m_ref_no_product(w):
    ds = w.grid("references")
    del ds.attrs["product"]
    w.put_grid("references", ds)


def m_ref_units(w):
    ds = w.grid("references")
    ds["nee"] = (ds["nee"] / 30.4).assign_attrs(units="g C m-2 d-1")
    w.put_grid("references", ds)


def m_ref_years(w):
    ds = w.grid("references")
    w.put_grid("references", _retime(ds, pd.DatetimeIndex(ds.time.values) - pd.DateOffset(years=30)))


def m_ref_truncated(w):
    src = w.inputs["references"][0]
    dst = w.root / src.name
    shutil.copy(src, dst)
    _truncate(dst, 0.3)
    w.inputs["references"] = [dst]


def m_truth_missing_var(w):
    w.put_grid("truth", w.grid("truth").drop_vars("reco"))


def m_config_mtry_100(w):
    w.sections["forest"] = ["mtry = 100"]


def m_config_seed_negative(w):
    w.sections["run"][0] = "seed = -1"


def m_config_zero_trees(w):
    w.sections["forest"] = ["n_estimators = 0"]


def m_config_nan_threshold(w):
    w.sections["budgets"] = ["source_threshold = nan"]


def m_config_mtry_grid(w):
    w.sections["forest"] = ["mtry_grid = [2, 16]", 'bootstrap_mtry = "retune"']


def m_config_fire_year(w):
    w.sections["fire"] = ["first_year = 1066"]


def m_config_clusters(w):
    w.sections["compare"] = ["n_clusters = 500", "cluster_sample = 200"]


def m_sites_id_case(w):
    df = w.table()
    df.loc[(df.site_id == "TW002").to_numpy().nonzero()[0][2:], "site_id"] = "tw002"
    w.put_table(df)


def m_sites_veg_code(w):
    w.put_table(w.table().assign(veg_type="30").pipe(_set, 5, "veg_type", "7"))


def m_pred_inf(w):
    ds = w.grid("predictors")
    v = ds["cti"].values
    iy, ix = np.argwhere(np.isfinite(v))[3]
    v[iy, ix] = np.inf
    w.put_grid("predictors", ds)


def m_pred_veg_vocabulary(w):
    ds = w.grid("predictors")
    v = ds["veg_type"].values
    iy, ix = np.argwhere(np.isfinite(v))[0]
    v[iy, ix] = 99
    a = ds["veg_type"].attrs
    a["flag_values"] = np.append(np.asarray(a["flag_values"]), 99).astype(np.int16)
    a["flag_meanings"] += " lichen_heath"
    w.put_grid("predictors", ds)


def m_pred_flag_text(w):
    ds = w.grid("predictors")
    ds["veg_type"].attrs["flag_values"] = ds["veg_type"].attrs["flag_meanings"]
    w.put_grid("predictors", ds)


def _land_cell(w):
    lf = w.grid("zones")["land_fraction"].values
    return tuple(np.argwhere(lf > 0)[2])


def m_zones_biome_nan(w):
    ds = w.grid("zones")
    ds["biome"].values[_land_cell(w)] = np.nan
    w.put_grid("zones", ds)


def m_zones_area_nan(w):
    ds = w.grid("zones")
    ds["cell_area"].values[_land_cell(w)] = np.nan
    w.put_grid("zones", ds)


def m_zones_area_ha(w):
    ds = w.grid("zones")
    ds["cell_area"] = (ds["cell_area"] / 1e4).assign_attrs(units="m2")  # hectares, labelled m2
    w.put_grid("zones", ds)


def m_zones_not_equal_area(w):
    # the whole grid in polar stereographic (EPSG:3413), zones without cell_area
    w.put_grid("predictors", write_crs(w.grid("predictors"), "EPSG:3413"))
    w.put_grid("zones", write_crs(w.grid("zones").drop_vars("cell_area"), "EPSG:3413"))
    w.inputs.update(fire=None, truth=None, references=[])


def m_zones_km_coordinates(w):
    # x/y written in km under a CRS in metres: cell_area (m2) is 1e6 times the spacing's area
    zones = w.grid("zones")
    pred = w.grid("predictors")
    for key, ds in (("zones", zones), ("predictors", pred)):
        w.put_grid(key, ds.assign_coords(x=ds.x / 1000, y=ds.y / 1000))
    w.inputs.update(fire=None, truth=None, references=[])
    w.put_table(w.table().assign(lat="89.99999", lon="0.0"))  # within 150 m of the pole: inside the grid


def m_fire_inf(w):
    ds = w.grid("fire")
    ds["fire_emissions"].values[(3,) + _land_cell(w)] = np.inf
    w.put_grid("fire", ds)


def m_fire_nan_land(w):
    ds = w.grid("fire")
    ds["burned_fraction"].values[(3,) + _land_cell(w)] = np.nan
    w.put_grid("fire", ds)


# -- abzflux prepare: a recipe over small raw sources (tests/prepare_world.py)
def _prepare(w, layer: str, **kw) -> None:
    """Write raw/ and recipe.toml into the case directory and run ``abzflux prepare`` into ``run``."""
    raw = w.root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    recipe = w.root / "recipe.toml"
    recipe.write_text(PREP_GRID + '[time]\nyears = "2019"\n\n' + layer)
    w.args = ["--quiet", "prepare", str(recipe), "--out", str(w.root / "run")]


PREP_MONTHS = pd.date_range("2019-01-01", periods=12, freq="MS")


def m_prepare_missing_file(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad_*.nc"]\n')


def m_prepare_unknown_crs(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\n')
    xr.Dataset(
        {"srad": (("time", "y", "x"), np.full((12, 3, 4), 100.0), {"units": "W m-2"})},
        coords={"time": PREP_MONTHS, "y": [3e5, 2e5, 1e5], "x": [0.0, 1e5, 2e5, 3e5]},
    ).to_netcdf(w.root / "raw" / "srad.nc")


def m_prepare_no_overlap(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\n')
    latlon_nc(
        w.root / "raw" / "srad.nc", res=1.0, lat_range=(-60.0, -30.0), units="W m-2", times=PREP_MONTHS, name="srad"
    )


def m_prepare_units(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\n')
    latlon_nc(w.root / "raw" / "srad.nc", res=2.0, units="kg m-2", times=PREP_MONTHS, name="srad")


def m_prepare_time_step(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\nfrequency = "monthly"\n')
    days = pd.date_range("2019-01-01", "2019-12-31")
    latlon_nc(w.root / "raw" / "srad.nc", res=2.0, units="W m-2", times=days, name="srad", step=0.0)


def m_prepare_missing_months(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\n')
    latlon_nc(w.root / "raw" / "srad.nc", res=2.0, units="W m-2", times=PREP_MONTHS[:6], name="srad")


def m_prepare_corrupt(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\n')
    p = latlon_nc(w.root / "raw" / "srad.nc", res=2.0, units="W m-2", times=PREP_MONTHS, name="srad")
    _truncate(p, 0.3)


def m_prepare_recipe_key(w):
    _prepare(w, '[predictors.srad]\nfiles = ["raw/srad.nc"]\nscale = 0.1\n')
    latlon_nc(w.root / "raw" / "srad.nc", res=2.0, units="W m-2", times=PREP_MONTHS, name="srad")


CASES = [
    # config
    Case(
        "config-missing",
        "the config file does not exist",
        m_config_missing,
        ("nope.toml", "config file does not exist"),
    ),
    Case("config-bad-toml", "the config is not valid TOML", m_config_bad_toml, ("config.toml", "not valid TOML")),
    Case(
        "config-unknown-key",
        "unknown key (typo `seeds`)",
        m_unknown_key,
        ("config.toml", "[run.seeds]", "unknown key 'seeds'", "expected one of"),
    ),
    Case(
        "config-unknown-section",
        "unknown section `[forests]`",
        m_unknown_section,
        ("config.toml", "unknown section [forests]"),
    ),
    Case(
        "config-path-missing",
        "an input path that does not exist",
        m_path_missing,
        ("config.toml", "[inputs.zones]", "input path does not exist", "zones_v2.nc"),
    ),
    Case(
        "config-wrong-type",
        "a string where an integer is expected",
        m_wrong_type,
        ("[forest.n_estimators]", "expected an integer, got 'many'"),
    ),
    Case(
        "config-years-reversed",
        "run.years first after last",
        m_years_reversed,
        ("[run.years]", "first year 2020 after last year 2019"),
    ),
    Case(
        "config-years-outside",
        "run.years outside the predictor stack",
        m_years_outside,
        ("predictors.zarr", "[time]", "12 month(s) of 2018-2020 missing", "2018-01"),
    ),
    Case(
        "config-fire-month-13",
        "fire.months holds month 13",
        m_fire_month_13,
        ("[fire.months]", "invalid month list [6, 13]", "1-12"),
    ),
    Case(
        "config-target-year",
        "fire.target_year outside the run's years",
        m_fire_target_outside,
        ("config.toml", "[fire.target_year]", "target year 2021 is outside the run's years 2019-2020"),
    ),
    Case(
        "config-mtry-100",
        "forest.mtry larger than the 17 predictors",
        m_config_mtry_100,
        ("config.toml", "[forest.mtry]", "mtry 100 is more than the 17 predictors", "1..17"),
    ),
    Case(
        "config-seed-negative",
        "run.seed negative",
        m_config_seed_negative,
        ("config.toml", "[run.seed]", "seed -1 is out of range", "0..4294967295"),
    ),
    Case(
        "config-zero-trees",
        "forest.n_estimators = 0",
        m_config_zero_trees,
        ("[forest.n_estimators]", "0 is out of range", "an integer >= 1"),
    ),
    Case(
        "config-nan-threshold",
        "budgets.source_threshold = nan",
        m_config_nan_threshold,
        ("[budgets.source_threshold]", "nan is not a finite number"),
    ),
    Case(
        "config-mtry-grid",
        "forest.mtry_grid beyond the bootstrap forests' 15 predictors (retune)",
        m_config_mtry_grid,
        ("[forest.mtry_grid]", "invalid mtry grid [2, 16]", "1..15"),
    ),
    Case(
        "config-fire-year",
        "fire.first_year 1066",
        m_config_fire_year,
        ("[fire.first_year]", "year 1066 is out of range", "1900..2100"),
    ),
    Case(
        "config-clusters",
        "compare.n_clusters more than compare.cluster_sample",
        m_config_clusters,
        ("[compare.n_clusters]", "n_clusters 500 is more than cluster_sample 200"),
    ),
    Case(
        "coarse-set-bad",
        "the coarse model set's predictors are a zones file (the fine set is valid)",
        m_coarse_bad,
        ("zones.nc", "missing required variable(s): srad"),
    ),
    # site table
    Case("sites-empty", "site table: empty file (0 bytes)", m_sites_empty, ("sites.csv", "the file is empty")),
    Case("sites-header-only", "site table: header but no rows", m_sites_header_only, ("sites.csv", "no data rows")),
    Case(
        "sites-missing-column",
        "site table: `lat` column missing",
        m_sites_no_lat,
        ("sites.csv", "[lat]", "missing required column(s): lat"),
    ),
    Case(
        "sites-text-in-number",
        "site table: text in the numeric `gpp` column",
        m_sites_text_in_gpp,
        ("sites.csv", "[gpp]", "non-numeric", "row 5 (site TW002): 'n/a?'"),
    ),
    Case(
        "sites-month-13",
        "site table: month 13",
        m_sites_month_13,
        ("sites.csv", "[month]", "row 5 (site TW002): 13", "integers in 1..12"),
    ),
    Case(
        "sites-year-range",
        "site table: year 2190",
        m_sites_year_range,
        ("sites.csv", "[year]", "row 5 (site TW002): 2190", "1900..2100"),
    ),
    Case(
        "sites-duplicate-month",
        "site table: a site-month twice",
        m_sites_duplicate,
        ("sites.csv", "duplicate site-month", "site TW002 2019-07 (rows 5, 6)"),
    ),
    Case(
        "sites-gpp-sign",
        "site table: GPP negative (uptake-negative sign convention)",
        m_sites_negative_gpp,
        ("sites.csv", "[gpp]", "negative value(s)", "row 3 (site TW002)", "gpp >= 0"),
    ),
    Case(
        "sites-umol",
        "site table: fluxes in µmol m-2 s-1",
        m_sites_umol,
        ("sites.csv", "[gpp]", "look like µmol m-2 s-1"),
    ),
    Case(
        "sites-annual",
        "site table: fluxes in g C m-2 yr-1",
        m_sites_annual,
        ("sites.csv", "[gpp]", "implausible monthly flux", "g C m-2 yr-1"),
    ),
    Case(
        "sites-lat-lon-swapped",
        "site table: lat and lon swapped",
        m_sites_swapped,
        ("sites.csv", "[lat]", "out of range", "row 3 (site TW002): -119.452", "-90..90"),
    ),
    Case(
        "sites-outside-grid",
        "site table: a site south of the grid",
        m_sites_outside,
        (
            "sites.csv",
            "[lat/lon]",
            "1 of 30 site(s) fall outside the grid",
            "site TW001 (lat 30, lon 18.1762)",
            "grid extent",
        ),
    ),
    Case(
        "sites-missing-lon",
        "site table: empty `lon`",
        m_sites_missing_lon,
        ("sites.csv", "[lon]", "missing value(s) at row 5 (site TW002)"),
    ),
    Case(
        "sites-lon-0-360",
        "site table: longitudes 0-360",
        m_sites_lon_360,
        ("sites.csv", "[lon]", "out of range", "lon - 360"),
    ),
    Case(
        "sites-two-locations",
        "site table: one site at two locations",
        m_sites_two_locations,
        ("sites.csv", "[lat, lon]", "several locations", "site TW002", "at row 5"),
    ),
    Case(
        "sites-only-nee",
        "site table: no gpp or reco column",
        m_sites_only_nee,
        ("sites.csv", "[gpp]", "only 0 site(s) have gpp values", "at least 3 sites per flux"),
    ),
    Case(
        "sites-unknown-method",
        "site table: method 'tower'",
        m_sites_unknown_method,
        ("sites.csv", "[method]", "row 5 (site TW002): 'tower'", "EC or chamber"),
    ),
    Case(
        "sites-id-case",
        "site table: one site spelled 'TW002' and 'tw002'",
        m_sites_id_case,
        ("sites.csv", "[site_id]", "differ only by case", "'TW002' (row 3) and 'tw002' (row 5)"),
    ),
    Case(
        "sites-veg-code",
        "site table: a veg_type column with code 7 (not a class of the paper)",
        m_sites_veg_code,
        ("sites.csv", "[veg_type]", "outside the paper's classes", "row 5 (site TW002): 7"),
    ),
    Case(
        "sites-parquet-truncated",
        "site table: truncated Parquet file",
        m_sites_parquet_truncated,
        ("sites.parquet", "cannot be read as Parquet"),
    ),
    # predictor stack
    Case(
        "pred-missing-variable",
        "predictors: `vpd` missing",
        m_pred_missing_var,
        ("predictors.nc", "[vpd]", "missing required variable(s): vpd"),
    ),
    Case(
        "pred-units-attribute",
        "predictors: soil_temp units 'm s-1' (not convertible to K)",
        m_pred_units_attr,
        ("predictors.nc", "[soil_temp]", "units attribute is 'm s-1'", "expected units 'K' or units convertible"),
    ),
    Case(
        "pred-units-converted-out-of-range",
        "predictors: soil_temp values in K, attribute degC (converted, then out of range)",
        m_pred_units_converted,
        ("predictors.nc", "[soil_temp]", "out of range", "180..340 K"),
    ),
    Case(
        "pred-annual-missing-year",
        "predictors: tree_pct as annual layers, the second year missing",
        m_pred_annual_missing_year,
        ("predictors.nc", "[tree_pct]", "no layer for year(s) [2020]", "one layer for every year"),
    ),
    Case(
        "config-predictor-unknown",
        "config: [predictors] drop names an unknown predictor",
        m_predictor_set_unknown,
        ("config.toml", "[predictors.drop]", "unknown predictor(s) ['nvdi']"),
    ),
    Case(
        "pred-units-values",
        "predictors: soil_temp values in degC, attribute K",
        m_pred_units_values,
        ("predictors.nc", "[soil_temp]", "out of range", "cell (time=2019-01-01", "180..340 K"),
    ),
    Case(
        "pred-scale-factor",
        "predictors: NDVI x 10000 (raw integers)",
        m_pred_scale,
        ("predictors.nc", "[ndvi]", "out of range", "expected values in -1..1 (values outside"),
    ),
    Case(
        "pred-nan-layer", "predictors: a NaN-only layer", m_pred_nan_layer, ("predictors.nc", "[cti]", "entirely NaN")
    ),
    Case(
        "pred-nan-month",
        "predictors: a NaN-only month",
        m_pred_nan_step,
        ("predictors.nc", "[srad]", "NaN in 1 time step(s)", "time step 5 (2019-06-01)"),
    ),
    Case(
        "pred-categorical-no-meanings",
        "predictors: veg_type without flag_meanings",
        m_pred_no_flags,
        ("predictors.zarr", "[veg_type]", "lacks flag_meanings"),
    ),
    Case(
        "pred-unlisted-code",
        "predictors: veg_type code 99",
        m_pred_unlisted_code,
        ("predictors.nc", "[veg_type]", "codes not listed in flag_values (first: 99)", "cell (y="),
    ),
    Case(
        "pred-inf",
        "predictors: inf in `cti` (a predictor without a physical range)",
        m_pred_inf,
        ("predictors.nc", "[cti]", "out of range (first: inf)", "finite values"),
    ),
    Case(
        "pred-veg-vocabulary",
        "predictors: veg_type code 99, listed in flag_values, not a class of the paper",
        m_pred_veg_vocabulary,
        ("predictors.nc", "[veg_type]", "outside the paper's classes (first: 99, 'lichen_heath')", "ESA CCI + CAVM"),
    ),
    Case(
        "pred-flag-values-names",
        "predictors: veg_type flag_values holding the names",
        m_pred_flag_text,
        ("predictors.nc", "[veg_type]", "flag_values 'graminoid_tundra", "are not numbers"),
    ),
    Case(
        "pred-duplicate-month",
        "predictors: a month twice in `time`",
        m_pred_duplicate_month,
        ("predictors.nc", "[time]", "duplicate month", "time step 6 (2019-06-01)"),
    ),
    Case(
        "pred-time-order",
        "predictors: `time` not monotonic",
        m_pred_time_order,
        ("predictors.nc", "[time]", "not strictly increasing", "time step 7 (2019-07-01)"),
    ),
    Case(
        "pred-mid-month",
        "predictors: mid-month timestamps",
        m_pred_mid_month,
        ("predictors.nc", "[time]", "not monthly first-of-month", "time step 0 (2019-01-15)"),
    ),
    Case(
        "pred-shuffled-y",
        "predictors: shuffled `y` coordinate",
        m_pred_shuffled_y,
        ("predictors.nc", "[y]", "not strictly monotonic", "y[3]..y[4]"),
    ),
    Case("pred-no-crs", "predictors: no CRS", m_pred_no_crs, ("predictors.nc", "[spatial_ref]", "no CRS")),
    Case(
        "pred-geographic-crs",
        "predictors: geographic CRS on a y/x grid",
        m_pred_geographic,
        ("predictors.nc", "[spatial_ref]", "geographic", "projected equal-area CRS"),
    ),
    Case(
        "pred-text-dtype",
        "predictors: `cti` stored as text",
        m_pred_text_dtype,
        ("predictors.nc", "[cti]", "not numeric"),
    ),
    Case(
        "pred-time-series",
        "predictors: static cti as a (time,) series",
        m_pred_series,
        ("predictors.nc", "[cti]", "('time',)", "a static predictor"),
    ),
    Case(
        "pred-month-stored",
        "predictors: a stored `month` variable",
        m_pred_month_stored,
        ("predictors.nc", "[month]", "stores a `month` variable"),
    ),
    Case(
        "pred-netcdf-truncated",
        "predictors: truncated NetCDF",
        m_pred_nc_truncated,
        ("predictors.nc", "cannot be read as NetCDF", "truncated"),
    ),
    Case(
        "pred-zarr-no-metadata",
        "predictors: Zarr array metadata deleted",
        m_pred_zarr_no_meta,
        ("predictors.zarr", "[srad]", "Zarr store is incomplete", "no metadata"),
    ),
    Case(
        "pred-zarr-bad-metadata",
        "predictors: truncated Zarr array metadata",
        m_pred_zarr_bad_metadata,
        ("predictors.zarr", "[srad]", "cannot be read as a Zarr store", "JSONDecodeError"),
    ),
    Case(
        "pred-zarr-no-time",
        "predictors: the Zarr `time` array deleted",
        m_pred_zarr_no_time,
        ("predictors.zarr", "[time]", "dimension `time` has no coordinate values"),
    ),
    Case(
        "pred-zarr-corrupt-chunk",
        "predictors: a truncated Zarr chunk",
        m_pred_zarr_corrupt_chunk,
        ("predictors.zarr", "the data values cannot be read"),
    ),
    Case(
        "pred-zarr-lost-chunk",
        "predictors: a deleted Zarr chunk (a year reads as NaN)",
        m_pred_zarr_lost_chunk,
        ("predictors.zarr", "[srad]", "NaN in 12 time step(s)", "time step 12 (2020-01-01)"),
    ),
    # zones
    Case(
        "zones-grid-offset",
        "zones: grid shifted by half a cell",
        m_zones_offset,
        ("zones.nc", "[x]", "grid does not match", "predictors.zarr", "x[0]"),
    ),
    Case(
        "zones-crs",
        "zones: another CRS (EPSG:3413)",
        m_zones_crs,
        ("zones.nc", "[spatial_ref]", "CRS", "3413", "same CRS as"),
    ),
    Case(
        "zones-shape", "zones: one column fewer", m_zones_shape, ("zones.nc", "[x]", "`x` has 29 cells here and 30 in")
    ),
    Case(
        "zones-land-percent",
        "zones: land_fraction in % (0-100)",
        m_zones_percent,
        ("zones.nc", "[land_fraction]", "out of range", "values in 0-1"),
    ),
    Case(
        "zones-biome-meanings",
        "zones: biome flag_meanings without 'tundra'",
        m_zones_biome_names,
        ("zones.nc", "[biome]", "lack tundra"),
    ),
    Case("zones-empty", "zones: empty file (0 bytes)", m_zones_empty, ("zones.nc", "cannot be read as NetCDF")),
    Case(
        "zones-area-units",
        "zones: cell_area in km2",
        m_zones_area_units,
        ("zones.nc", "[cell_area]", "units attribute is 'km2'", "expected units 'm2'"),
    ),
    Case(
        "zones-biome-nan",
        "zones: a land cell without a biome code",
        m_zones_biome_nan,
        ("zones.nc", "[biome]", "1 land cell(s) (land_fraction > 0) have no biome (NaN)", "cell (y="),
    ),
    Case(
        "zones-area-nan",
        "zones: a land cell without cell_area",
        m_zones_area_nan,
        ("zones.nc", "[cell_area]", "have no cell_area (NaN)", "cell (y="),
    ),
    Case(
        "zones-area-hectares",
        "zones: cell_area in hectares, units 'm2'",
        m_zones_area_ha,
        ("zones.nc", "[cell_area]", "out of range (first: 9e+06)", "within a factor 4 of the grid spacing", "9e+10 m2"),
    ),
    Case(
        "zones-not-equal-area",
        "zones: no cell_area on a polar stereographic grid (EPSG:3413)",
        m_zones_not_equal_area,
        ("zones.nc", "[cell_area]", "not an equal-area projection", "Polar Stereographic", "equal-area CRS"),
    ),
    Case(
        "zones-km-coordinates",
        "zones and predictors: x/y in km under a CRS in metres",
        m_zones_km_coordinates,
        ("zones.nc", "[cell_area]", "out of range (first: 9e+10)", "|dx * dy| = 90000 m2"),
    ),
    # fire
    Case(
        "fire-sign",
        "fire: emissions negative",
        m_fire_negative,
        ("fire.nc", "[fire_emissions]", "out of range", "cell (time=", ">= 0"),
    ),
    Case(
        "fire-units",
        "fire: emissions in kg C m-2 month-1",
        m_fire_units,
        ("fire.zarr", "[fire_emissions]", "units attribute is 'kg C m-2 month-1'", "expected units 'g C m-2 month-1'"),
    ),
    Case(
        "fire-burned-percent",
        "fire: burned_fraction in %",
        m_fire_percent,
        ("fire.nc", "[burned_fraction]", "out of range", "values in 0-1"),
    ),
    Case(
        "fire-zarr-lost-chunk",
        "fire: a deleted Zarr chunk (a year reads as NaN)",
        m_fire_lost_chunk,
        ("fire.zarr", "[fire_emissions]", "NaN in 12 time step(s)", "time step 12 (2020-01-01)"),
    ),
    Case(
        "fire-inf",
        "fire: an infinite emission",
        m_fire_inf,
        ("fire.nc", "[fire_emissions]", "out of range (first: inf)", "finite values >= 0"),
    ),
    Case(
        "fire-nan-on-land",
        "fire: burned_fraction NaN on a land cell",
        m_fire_nan_land,
        ("fire.nc", "[burned_fraction]", "NaN on land cells", "time=2019-04", "0 where nothing burned"),
    ),
    # abzflux prepare (raw products -> contract files; the --out directory is not created)
    Case(
        "prepare-missing-file",
        "prepare: a recipe's file pattern matches no file",
        m_prepare_missing_file,
        ("raw/srad_*.nc", "[predictors.srad.files]", "file not found", "source files"),
    ),
    Case(
        "prepare-unknown-crs",
        "prepare: a NetCDF on x/y without a grid mapping (and no recipe `crs`)",
        m_prepare_unknown_crs,
        ("srad.nc", "[srad]", "unknown CRS", "or the recipe's `crs`"),
    ),
    Case(
        "prepare-no-overlap",
        "prepare: a source in the southern hemisphere",
        m_prepare_no_overlap,
        ("srad.nc", "[srad]", "no overlap with the target grid", "data covering part of the target grid"),
    ),
    Case(
        "prepare-units",
        "prepare: radiation in kg m-2",
        m_prepare_units,
        ("srad.nc", "[srad]", "units 'kg m-2' cannot be converted to 'W m-2'"),
    ),
    Case(
        "prepare-time-step",
        "prepare: a daily file declared monthly",
        m_prepare_time_step,
        ("srad.nc", "[srad]", "wrong time step: the data are daily", "monthly steps"),
    ),
    Case(
        "prepare-missing-months",
        "prepare: a monthly source with half of the recipe's year",
        m_prepare_missing_months,
        ("srad.nc", "[srad]", "6 month(s) of the recipe's years missing", "2019-07", "every month"),
    ),
    Case(
        "prepare-corrupt",
        "prepare: a truncated NetCDF source",
        m_prepare_corrupt,
        ("srad.nc", "[srad]", "cannot be read as NetCDF"),
    ),
    Case(
        "prepare-recipe-key",
        "prepare: an unknown recipe key (`scale` for `scale_factor`)",
        m_prepare_recipe_key,
        ("recipe.toml", "[predictors.srad.scale]", "unknown key 'scale'", "scale_factor"),
    ),
    # reference products and truth
    Case(
        "ref-no-product",
        "reference: no `product` attribute",
        m_ref_no_product,
        ("ref.nc", "[product]", "global attribute `product` is missing"),
    ),
    Case(
        "ref-units",
        "reference: NEE in g C m-2 d-1",
        m_ref_units,
        ("ref.nc", "[nee]", "units attribute is 'g C m-2 d-1'"),
    ),
    Case(
        "ref-years",
        "reference: no year in common with the run",
        m_ref_years,
        ("ref.nc", "[time]", "no complete calendar year", "2019-2020"),
    ),
    Case(
        "ref-truncated",
        "reference: truncated NetCDF",
        m_ref_truncated,
        ("ref_inversion.nc", "cannot be read as NetCDF"),
    ),
    Case(
        "truth-missing-variable",
        "truth: `reco` missing",
        m_truth_missing_var,
        ("truth.nc", "[reco]", "missing required variable(s): reco"),
    ),
]


def run_case(case: Case, twin: Path, root: Path):
    """Apply the case's mutation and run ``abzflux run``; returns (result, run directory)."""
    root.mkdir(parents=True, exist_ok=True)
    w = Work(twin, root)
    case.mutate(w)
    if not w.config.exists():
        w.write_config()
    run_dir = root / "run"
    args = w.args or ["run", str(w.config), "--out", str(run_dir), "--quiet", "--no-report"]
    return CliRunner().invoke(app, args), run_dir


def error_text(result) -> str:
    return " ".join(result.output.split())  # rich may wrap long lines


@pytest.mark.slow  # builds a twin, runs the CLI
def test_the_valid_twin_runs_validation(tiny_twin):
    """The catalogue's base inputs are valid: every failure below is the mutation's."""
    r = CliRunner().invoke(app, ["validate", str(tiny_twin / "config.toml")])
    assert r.exit_code == 0, r.output
    assert "ok" in r.output


def test_catalogue_has_distinct_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_docs_list_every_case():
    """docs/errors.md is this catalogue's output: every case, with the expected message parts."""
    doc = MARKER_LINE.split(DOC.read_text(), 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines() if line.startswith("| `")}
    assert set(rows) == {c.id for c in CASES}
    for c in CASES:
        for part in c.expect:
            assert part.replace("|", "\\|") in rows[c.id], (c.id, part)


@pytest.mark.slow  # each case runs the CLI on a twin
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tiny_twin, tmp_path):
    result, run_dir = run_case(case, tiny_twin, tmp_path / case.id)
    text = error_text(result)
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in result.output
    assert text.startswith("error: "), text
    assert len(result.output.strip().splitlines()) == 1, result.output  # one message, no warnings
    for s in case.expect:
        assert s in text, f"{s!r} not in {text!r}"
    # nothing written: no run directory at all (abzflux logs to the terminal, not to a file)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


@pytest.mark.slow  # builds a twin, runs the CLI
def test_validate_gives_the_same_error(tiny_twin, tmp_path):
    """`abzflux validate` makes the same checks as `run` (the same code: three cases suffice)."""
    for cid in ("sites-month-13", "fire-units", "coarse-set-bad"):
        case = next(c for c in CASES if c.id == cid)
        ran, _ = run_case(case, tiny_twin, tmp_path / cid)
        checked = CliRunner().invoke(app, ["validate", str(tmp_path / cid / "config.toml")])
        assert checked.exit_code == 2
        assert error_text(checked) == error_text(ran)


def _markdown(twin: Path, work: Path) -> str:
    lines = ["| case | input problem | error (`abzflux run`, exit code 2) |", "|---|---|---|"]
    for case in CASES:
        result, _ = run_case(case, twin, work / case.id)
        msg = error_text(result).removeprefix("error: ")
        for p in (str(work / case.id) + os.sep, str(twin) + os.sep):
            msg = msg.replace(p, "")
        msg = msg.replace("|", "\\|")
        lines.append(f"| `{case.id}` | {case.what} | {msg} |")
    return "\n".join(lines)


HEADER = """# Bad-input catalogue

Every row is a malformed input that `abzflux run CONFIG --out RUN` (and `abzflux validate
CONFIG`, which makes the same checks) stops before anything is written: the exit code is 2,
the message below is the only output (no traceback), and the run directory is not created.
Each case changes one input of a small valid twin (300-km grid, 2019-2020, 30 sites). The
message format is `<file>: [<column or variable>] <problem> at <where>; expected <what>`
([formats.md](formats.md#validation-errors)); paths are shown relative to the case's directory.
The `prepare-*` rows run `abzflux prepare RECIPE --out RUN` instead, on a recipe over small raw
sources ([prepare_core.md](prepare_core.md)); `RUN` is not created either.

The cases are the data of `tests/test_catalogue.py`, which runs them in CI and asserts on
the file, the column or variable, the row, site, time step or cell and the expectation. The
table is its output: `python tests/test_catalogue.py` rewrites it in place, up to the line
`<!-- end of generated catalogue -->`, and keeps everything after that line as it is.

"""
DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
#: Everything after this line of docs/errors.md is hand-written and kept by the generator.
END_MARKER = "<!-- end of generated catalogue -->"
MARKER_LINE = re.compile(r"^" + re.escape(END_MARKER) + r"[ \t]*$", re.MULTILINE)  # the marker as a line of its own


def hand_written_tail(text: str | None) -> str | None:
    """What follows the marker line in ``text`` (None without one)."""
    m = MARKER_LINE.search(text or "")
    return None if m is None else text[m.end() :]


def render_doc(table: str, old: str | None) -> str:
    """The new docs/errors.md: the header, the generated ``table``, the end marker, then whatever
    followed the marker in the ``old`` text (nothing when there was no marker)."""
    tail = hand_written_tail(old)
    tail = "\n" if tail is None else tail
    return HEADER + table.rstrip("\n") + "\n\n" + END_MARKER + tail


def test_generator_keeps_the_hand_written_sections():
    old = HEADER + "| old table |\n\n" + END_MARKER + "\n\n## Run-directory errors\n\n| hand | written |\n"
    new = render_doc("| case | a |\n|---|---|\n| `x` | y |", old)
    assert new.endswith(END_MARKER + "\n\n## Run-directory errors\n\n| hand | written |\n")
    assert "| `x` | y |" in new and "old table" not in new
    assert render_doc("| t |", render_doc("| t |", None)) == render_doc("| t |", None)  # idempotent
    assert len(MARKER_LINE.findall(render_doc("| t |", None))) == 1
    assert END_MARKER in HEADER  # named in the header's text, but not as a line of its own


if __name__ == "__main__":  # python tests/test_catalogue.py  (rewrites the table of docs/errors.md)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        twin = Path(d) / "twin"
        make_twin(twin, TINY)
        table = _markdown(twin, Path(d) / "cases")
    old = DOC.read_text() if DOC.exists() else None
    DOC.write_text(render_doc(table, old))
    print(f"{DOC}: {len(CASES)} cases", file=sys.stderr)
