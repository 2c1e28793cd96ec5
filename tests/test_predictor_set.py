"""The declared predictor set (abzflux.predictors.PredictorSet, the config's [predictors] and
[sites] sections), the stack read through it (renaming, unit conversion, annual / static /
series layers repeated or broadcast), and the sensitivity runs (abzflux.sensitivity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import cv as cv_mod
from abzflux import formats, predictors
from abzflux.config import load_config
from abzflux.errors import ConfigError, InputError
from abzflux.predictors import PAPER, select_sites
from abzflux.steps import lineage

CRS = "EPSG:6931"
X = np.array([-50e3, -25e3, 0.0, 25e3, 50e3])
Y = np.array([37.5e3, 12.5e3, -12.5e3, -37.5e3])
TIME = pd.date_range("2019-11-01", periods=4, freq="MS")  # Nov 2019 .. Feb 2020: two years


def expect_error(fn, *parts, cls=InputError):
    with pytest.raises(cls) as info:
        fn()
    for part in parts:
        assert str(part) in str(info.value), f"{part!r} not in message: {info.value}"
    return info.value


def make_stack(seed: int = 0) -> xr.Dataset:
    """Every paper stack variable, (time, y, x) or (y, x), in the contract units."""
    rng = np.random.default_rng(seed)
    data = {}
    for p in PAPER.read:
        shape = (len(TIME), len(Y), len(X)) if p.time_varying else (len(Y), len(X))
        dims = ("time", "y", "x") if p.time_varying else ("y", "x")
        if p.categorical:
            codes = np.array(sorted(predictors.VEG_CLASSES))
            vals = rng.choice(codes, size=shape).astype("int16")
            attrs = {
                "flag_values": codes.astype("int16"),
                "flag_meanings": " ".join(predictors.VEG_CLASSES[c] for c in codes),
            }
        else:
            lo, hi = p.range or (0.0, 20.0)
            vals = (lo + (hi - lo) * rng.uniform(0.2, 0.8, size=shape)).astype(np.float32)
            attrs = {"units": p.units}
        data[p.name] = xr.Variable(dims, vals, attrs)
    return formats.write_crs(xr.Dataset(data, coords={"time": TIME, "y": Y, "x": X}), CRS)


def write(ds: xr.Dataset, path: Path) -> Path:
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def config_with(tmp_path: Path, stack: Path, extra: str) -> Path:
    """A config naming ``stack`` (sites and zones are placeholders: only the predictor set is read)."""
    (tmp_path / "sites.csv").write_text("site_id,lat,lon,year,month,nee\n")
    (tmp_path / "zones.nc").write_text("")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[inputs]\nsites = "sites.csv"\npredictors = "{stack}"\nzones = "zones.nc"\n\n{extra}')
    return cfg


# --------------------------------------------------------------------------- the paper's set


def test_paper_set_is_the_default():
    assert len(PAPER) == 17 and PAPER.names[0] == "month"
    assert PAPER.categorical == ("month", "veg_type") == PAPER.bootstrap_drop
    assert len(PAPER.bootstrap_names) == 15 and "veg_type" not in PAPER.bootstrap_names
    assert PAPER.also_read == ()  # veg_type is a model predictor
    assert predictors.PREDICTOR_NAMES == PAPER.names
    assert cv_mod.mtry_grid(len(PAPER)) == [2, 9, 17]


def test_config_without_predictors_section_gives_the_paper_set(tmp_path):
    cfg = load_config(config_with(tmp_path, write(make_stack(), tmp_path / "s.nc"), ""))
    assert cfg.predictor_set() == PAPER
    assert cfg.to_dict()["predictors"] == {"use": None, "drop": None, "declare": {}}


# --------------------------------------------------------------------------- renaming


def test_renamed_stack_variable_is_accepted(tmp_path):
    src = make_stack().rename({"soil_moisture": "soil_moist"})
    stack = write(src, tmp_path / "s.nc")
    # undeclared: refused, naming the missing variable and what the file has
    expect_error(lambda: formats.read_predictors(stack), "soil_moisture", "soil_moist")
    cfg = load_config(config_with(tmp_path, stack, '[predictors.soil_moisture]\nsource = "soil_moist"\n'))
    pset = cfg.predictor_set()
    assert pset.by_name["soil_moisture"].stack_name == "soil_moist" and pset.names == PAPER.names
    ds = formats.read_predictors(stack, predictor_set=pset)
    assert "soil_moisture" in ds and "soil_moist" not in ds
    np.testing.assert_array_equal(ds["soil_moisture"].values, src["soil_moist"].values)


def test_renamed_variable_errors_name_the_stack_variable(tmp_path):
    src = make_stack().rename({"soil_moisture": "soil_moist"})
    src["soil_moist"][1, 2, 3] = 1.5  # m3 m-3 > 1
    stack = write(src, tmp_path / "s.nc")
    pset = load_config(
        config_with(tmp_path, stack, '[predictors.soil_moisture]\nsource = "soil_moist"\n')
    ).predictor_set()
    expect_error(
        lambda: formats.read_predictors(stack, predictor_set=pset),
        "[soil_moist]",
        "out of range",
        "0..1 m3 m-3",
    )


# --------------------------------------------------------------------------- units


def test_convertible_units_are_converted(tmp_path):
    src = make_stack()
    src["snow_cover"] = (src["snow_cover"] / 100.0).assign_attrs(units="1")  # a 0-1 fraction
    src["soil_temp"] = (src["soil_temp"] - 273.15).assign_attrs(units="degC")
    src["vpd"] = (src["vpd"] * 1000.0).assign_attrs(units="Pa")
    stack = write(src, tmp_path / "s.nc")
    ds = formats.read_predictors(stack)
    want = make_stack()
    for v, tol in (("snow_cover", 1e-4), ("soil_temp", 1e-3), ("vpd", 1e-6)):
        np.testing.assert_allclose(ds[v].values, want[v].values, rtol=0, atol=tol * float(np.abs(want[v]).max()))
        assert ds[v].attrs["units"] == PAPER.by_name[v].units
    assert ds["snow_cover"].attrs["units_converted_from"] == "1"
    # a given cell: 0.35 (fraction) -> 35 %; 2.0 degC -> 275.15 K
    src2 = make_stack()
    src2["snow_cover"] = xr.full_like(src2["snow_cover"], 0.35).assign_attrs(units="1")
    src2["soil_temp"] = xr.full_like(src2["soil_temp"], 2.0).assign_attrs(units="degC")
    ds2 = formats.read_predictors(write(src2, tmp_path / "s2.nc"))
    assert float(ds2["snow_cover"][2, 1, 3]) == pytest.approx(35.0, abs=1e-4)
    assert float(ds2["soil_temp"][0, 0, 0]) == pytest.approx(275.15, abs=1e-4)
    assert ds2["snow_cover"].chunks is not None  # still lazy


def test_unconvertible_units_are_refused(tmp_path):
    src = make_stack()
    src["soil_temp"].attrs["units"] = "m s-1"
    stack = write(src, tmp_path / "s.nc")
    expect_error(
        lambda: formats.read_predictors(stack),
        str(stack),
        "[soil_temp]",
        "units attribute is 'm s-1'",
        "convert the values",
    )


def test_range_is_checked_after_conversion(tmp_path):
    src = make_stack()
    # degC values labelled K: convertible units, but the values are not kelvin
    src["soil_temp"] = (src["soil_temp"] - 273.15).assign_attrs(units="K")
    stack = write(src, tmp_path / "s.nc")
    expect_error(lambda: formats.read_predictors(stack), "[soil_temp]", "out of range", "180..340 K")


def test_declared_units_are_the_contract(tmp_path):
    # a declaration in degC: a K stack is converted to it, and the range follows the declaration
    src = make_stack()
    stack = write(src, tmp_path / "s.nc")
    extra = '[predictors.soil_temp]\nunits = "degC"\nrange = [-90, 70]\n'
    ds = formats.read_predictors(stack, predictor_set=load_config(config_with(tmp_path, stack, extra)).predictor_set())
    np.testing.assert_allclose(ds["soil_temp"].values, src["soil_temp"].values - 273.15, atol=1e-3)


# --------------------------------------------------------------------------- annual, static, series


def test_annual_and_static_layers_are_repeated_over_the_months(tmp_path, caplog):
    src = make_stack()
    rng = np.random.default_rng(1)
    annual = rng.uniform(10, 90, size=(2, len(Y), len(X))).astype(np.float32)  # 2019, 2020
    static = rng.uniform(0, 50, size=(len(Y), len(X))).astype(np.float32)
    src = src.drop_vars(["tree_pct", "nonveg_pct"])
    src["tree_pct"] = xr.Variable(("year", "y", "x"), annual, {"units": "%"})
    src = src.assign_coords(year=[2019, 2020])
    src["nonveg_pct"] = xr.Variable(("y", "x"), static, {"units": "%"})
    stack = write(src, tmp_path / "s.nc")
    with caplog.at_level("INFO", logger="abzflux"):
        ds = formats.read_predictors(stack)
    assert ds["tree_pct"].dims == ("time", "y", "x") and ds["nonveg_pct"].dims == ("time", "y", "x")
    # months Nov, Dec 2019 take the 2019 layer, Jan, Feb 2020 the 2020 layer
    for t, year_index in ((0, 0), (1, 0), (2, 1), (3, 1)):
        np.testing.assert_array_equal(ds["tree_pct"][t].values, annual[year_index])
        np.testing.assert_array_equal(ds["nonveg_pct"][t].values, static)
    assert "year" not in ds.coords
    assert "repeated over the months of its year" in caplog.text and "repeated over every month" in caplog.text


def test_annual_layer_as_dates_and_a_missing_year(tmp_path):
    src = make_stack().drop_vars("tree_pct")
    vals = np.stack([np.full((len(Y), len(X)), 20.0), np.full((len(Y), len(X)), 40.0)]).astype(np.float32)
    src["tree_pct"] = xr.Variable(("time_annual", "y", "x"), vals, {"units": "%"})
    src = src.assign_coords(time_annual=pd.to_datetime(["2019-01-01", "2020-01-01"]))
    ds = formats.read_predictors(write(src, tmp_path / "a.nc"))
    assert ds["tree_pct"].values[:, 0, 0].tolist() == [20.0, 20.0, 40.0, 40.0]
    one = src.isel(time_annual=[0])
    path = write(one, tmp_path / "b.nc")
    expect_error(lambda: formats.read_predictors(path), "[tree_pct]", "no layer for year(s) [2020]")


def test_co2_series_is_broadcast_over_the_grid(tmp_path):
    src = make_stack()
    series = np.array([410.0, 411.5, 412.25, 413.0])
    src["co2"] = xr.Variable(("time",), series, {"units": "ppm"})
    ds = formats.read_predictors(write(src, tmp_path / "s.nc"))
    assert ds["co2"].dims == ("time", "y", "x") and ds["co2"].chunks is not None
    for t in range(len(TIME)):
        assert np.all(ds["co2"][t].values == series[t])
    src["co2"] = (src["co2"] * 1e-6).assign_attrs(units="mol mol-1")  # converted too: 1 ppm = 1e-6 mol mol-1
    ds = formats.read_predictors(write(src, tmp_path / "t.nc"))
    np.testing.assert_allclose(ds["co2"][:, 3, 4].values, series, rtol=1e-12)


def test_tile_reads_match_the_lazy_view(tmp_path):
    """The upscaling workers read tiles through the same plans (formats.LayerPlan.tile)."""
    src = make_stack().drop_vars("tree_pct")
    src["tree_pct"] = xr.Variable(
        ("year", "y", "x"), np.arange(2 * 20, dtype=np.float32).reshape(2, 4, 5), {"units": "%"}
    )
    src = src.assign_coords(year=[2019, 2020])
    src["co2"] = xr.Variable(("time",), np.array([410.0, 411, 412, 413]), {"units": "ppm"})
    src["soil_temp"] = (src["soil_temp"] - 273.15).assign_attrs(units="degC")
    stack = write(src, tmp_path / "s.nc")
    view = formats.read_predictors(stack)
    raw = formats.open_grid(stack)
    plans = formats.plan_predictors(raw, PAPER, stack)
    tidx, ys, xs = np.array([1, 2, 3]), slice(1, 3), slice(2, 5)
    for name, plan in plans.items():
        a = plan.tile(raw, tidx, ys, xs)
        v = view[name]
        want = v.isel(time=tidx, y=ys, x=xs).values if "time" in v.dims else v.isel(y=ys, x=xs).values
        np.testing.assert_allclose(a, want, rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- the declared set


def test_dropped_factors_train_with_p_minus_2_and_their_mtry_grid(tmp_path):
    stack = write(make_stack(), tmp_path / "s.nc")
    pset = load_config(config_with(tmp_path, stack, '[predictors]\ndrop = ["month", "veg_type"]\n')).predictor_set()
    assert len(pset) == 15 and pset.categorical == () and pset.names == PAPER.bootstrap_names
    assert [p.name for p in pset.also_read] == ["veg_type"]  # still read: vegetation zones
    assert set(formats.read_predictors(stack, predictor_set=pset).data_vars) == set(PAPER.stack_variables)
    rng = np.random.default_rng(3)
    n = 120
    rows = pd.DataFrame({c: rng.uniform(0, 1, n) for c in PAPER.names})
    rows["month"] = rng.integers(1, 13, n)
    rows["veg_type"] = rng.choice([21, 33, 90], n)
    rows["nee"] = 10 * rows.srad - 5 * rows.vpd + rng.normal(0, 0.1, n)
    rows["site_id"] = [f"S{i % 6}" for i in range(n)]
    for col in ("year", "biome", "region", "method", "disturbance"):
        rows[col] = 0
    kw = dict(
        mtry=None, grid=None, n_estimators=10, nodesize=5, central="mean", cv=True, seed=1, forest_seed=2, dropped=[]
    )
    fit = cv_mod.fit_flux(rows, "nee", list(pset.names), categorical=pset.categorical, **kw)
    assert fit.model.feature_names_ == list(pset.names) and fit.model.levels_ == {}
    assert fit.info["mtry_grid"] == [2, 8, 15] == cv_mod.mtry_grid(15)
    full = cv_mod.fit_flux(rows, "nee", list(PAPER.names), categorical=PAPER.categorical, **kw)
    assert full.info["mtry_grid"] == [2, 9, 17] and set(full.model.levels_) == {"month", "veg_type"}
    # one continuous predictor dropped: p - 1 = 16, grid floor(seq(2, 16, length = 3)) = {2, 9, 16}
    one = load_config(config_with(tmp_path, stack, '[predictors]\ndrop = ["ndvi"]\n')).predictor_set()
    fit16 = cv_mod.fit_flux(rows, "nee", list(one.names), categorical=one.categorical, **kw)
    assert len(fit16.model.feature_names_) == 16 and "ndvi" not in fit16.model.feature_names_
    assert fit16.info["mtry_grid"] == [2, 9, 16] and set(fit16.model.levels_) == {"month", "veg_type"}


def test_use_orders_and_subsets_the_set(tmp_path):
    stack = write(make_stack(), tmp_path / "s.nc")
    pset = load_config(config_with(tmp_path, stack, '[predictors]\nuse = ["ndvi", "srad", "month"]\n')).predictor_set()
    assert pset.names == ("ndvi", "srad", "month") and pset.continuous == ("ndvi", "srad")
    ds = formats.read_predictors(stack, predictor_set=pset)
    assert set(ds.data_vars) == {"ndvi", "srad", "veg_type"}


def test_a_new_predictor(tmp_path):
    src = make_stack()
    src["precip"] = xr.Variable(("time", "y", "x"), np.full((4, 4, 5), 2.5, np.float32), {"units": "mm d-1"})
    stack = write(src, tmp_path / "s.nc")
    extra = (
        "[predictors.precip]\n"
        'units = "mm month-1"\nlong_name = "precipitation"\nkind = "monthly"\ncategorical = false\nrange = [0, 2000]\n'
    )
    # "mm d-1" to "mm month-1" needs the month's length: not one factor, refused clearly
    pset = load_config(config_with(tmp_path, stack, extra)).predictor_set()
    assert pset.names[-1] == "precip" and len(pset) == 18
    expect_error(lambda: formats.read_predictors(stack, predictor_set=pset), "[precip]", "mm d-1")
    src["precip"].attrs["units"] = "cm month-1"
    stack = write(src, tmp_path / "t.nc")
    ds = formats.read_predictors(stack, predictor_set=pset)
    np.testing.assert_allclose(ds["precip"].values, 25.0)
    assert cv_mod.mtry_grid(len(pset)) == [2, 10, 18]


@pytest.mark.parametrize(
    "extra, column, words",
    [
        ('[predictors]\ndrop = ["nvdi"]\n', "predictors.drop", "unknown predictor(s) ['nvdi']"),
        ('[predictors]\nuse = ["srad", "srad"]\n', "predictors.use", "repeated"),
        ('[predictors]\nkeep = ["srad"]\n', "predictors.keep", "unknown key"),
        ('[predictors.srad]\nunit = "W m-2"\n', "predictors.srad.unit", "unknown key"),
        ('[predictors.srad]\nkind = "hourly"\n', "predictors.srad.kind", "invalid kind"),
        ("[predictors.srad]\nrange = [5, 1]\n", "predictors.srad.range", "invalid range"),
        ('[predictors.srad]\nunits = "watts per bucket"\n', "predictors.srad.units", "cannot be read"),
        (
            '[predictors.precip]\nunits = "mm"\n',
            "predictors.precip",
            "lacks ['long_name', 'kind', 'categorical', 'range']",
        ),
        ('[predictors.cti]\nsource = "ndvi"\n', "predictors", "feed more than one predictor"),
        ('[predictors]\ndrop = ["month"]\n[forest]\nmtry = 17\n', "forest.mtry", "more than the 16 predictors"),
        ('[predictors]\nuse = ["month", "veg_type"]\n', "forest.n_bootstrap", "categorical"),
        ('[sites]\nmethod = ["tower"]\n', "sites.method", "unknown method"),
        ('[sites]\ndisturbance = "none"\n', "sites.disturbance", "list of names"),
    ],
)
def test_bad_declarations(tmp_path, extra, column, words):
    path = config_with(tmp_path, write(make_stack(), tmp_path / "s.nc"), extra)
    expect_error(lambda: load_config(path), str(path), f"[{column}]", words, cls=ConfigError)


def test_the_set_is_part_of_the_stage_fingerprints(tmp_path):
    keys = {name: k for name, (k, _) in lineage().items()}
    for stage in ("sites", "forest", "interpret", "bootstrap", "upscale", "budgets", "compare", "summary"):
        assert "predictors.drop" in keys[stage] and "sites.disturbance" in keys[stage], stage
    stack = write(make_stack(), tmp_path / "s.nc")
    a = load_config(config_with(tmp_path, stack, ""))
    b = load_config(config_with(tmp_path, stack, '[predictors]\ndrop = ["month"]\n'))
    assert a.to_dict()["predictors"] != b.to_dict()["predictors"]  # what the fingerprints hash (runner)
    assert b.to_dict()["predictors"]["drop"] == ["month"]


def test_site_filters():
    t = pd.DataFrame(
        {
            "site_id": ["A", "A", "B", "C", "D"],
            "disturbance": ["none", "none", "fire", "harvest", np.nan],
            "method": ["EC", "EC", "chamber", "EC", np.nan],
            "gpp": [1.0, np.nan, 1.0, 1.0, 1.0],
            "reco": [1.0, 1.0, 1.0, 1.0, 1.0],
            "nee": [0.0, 0.0, 0.0, 0.0, 0.0],
        }
    )
    from abzflux.config import SiteSettings

    assert select_sites(t, SiteSettings(), "x") is t
    assert select_sites(t, SiteSettings(disturbance=["none"]), "x").site_id.tolist() == ["A", "A", "D"]
    assert select_sites(t, SiteSettings(disturbance=["none", "fire"]), "x").site_id.tolist() == ["A", "A", "B", "D"]
    assert select_sites(t, SiteSettings(method=["EC"]), "x").site_id.tolist() == ["A", "A", "C"]
    assert select_sites(t, SiteSettings(all_fluxes=True), "x").site_id.tolist() == ["A", "B", "C", "D"]


# --------------------------------------------------------------------------- the twin


#: Small forests for the twin runs (every stage still runs).
FAST = (
    "[forest]\nn_estimators = 30\nmtry = 5\nn_bootstrap = 2\nimportance_repeats = 2\npdp_points = 5\npdp_rows = 100\n"
)


def _fast(twin: Path, out: Path, extra: str = "") -> Path:
    from conftest import absolute_config

    text = absolute_config((twin / "config.toml").read_text(), twin)
    text = text[: text.index("[forest]")] + FAST + extra
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(text)
    return out / "config.toml"


@pytest.mark.slow  # 30 s on 2 cores: three variants' leave-one-site-out CV
def test_sensitivity_on_the_tiny_twin(tiny_twin, tmp_path):
    from abzflux.sensitivity import run_sensitivity

    cfg = load_config(_fast(tiny_twin, tmp_path / "cfg"))
    out = tmp_path / "sens"
    t = run_sensitivity(cfg, out, ("configured", "no_factors", "undisturbed"))
    assert (out / "sensitivity.csv").exists() and (out / "no_factors" / "models" / "nee.npz").exists()
    assert list(t.variant.unique()) == ["configured", "no_factors", "undisturbed"] and len(t) == 9
    by = t.set_index(["variant", "flux"])
    assert by.loc[("configured", "nee"), "predictors"] == 17 and by.loc[("no_factors", "nee"), "predictors"] == 15
    assert by.loc[("undisturbed", "nee"), "rows"] < by.loc[("configured", "nee"), "rows"]
    assert by.loc[("no_factors", "nee"), "rows"] == by.loc[("configured", "nee"), "rows"]
    for f in ("gpp", "reco", "nee"):  # the variants' skill differs
        assert len({round(by.loc[(v, f), "rmse"], 6) for v in ("configured", "no_factors", "undisturbed")}) == 3
    assert t.r2.between(0, 1).all() and (t.rmse > 0).all()
    info = json.loads((out / "no_factors" / "models" / "forest.json").read_text())
    assert info["nee"]["mtry"] == 5
    # a directory abzflux did not write is refused; its own is rewritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    expect_error(lambda: run_sensitivity(cfg, other, ("configured",)), "did not write")
    assert (other / "notes.txt").read_text() == "mine"
    t2 = run_sensitivity(cfg, out, ("configured",))
    pd.testing.assert_frame_equal(t2, t[t.variant == "configured"].reset_index(drop=True), check_dtype=False)


@pytest.mark.slow
def test_declared_layouts_give_the_same_study(tiny_twin, tmp_path):
    """A stack stored another way (a renamed variable, cover fractions as annual layers, CO2 as a
    (time,) series) and declared so gives bit-identical outputs to the same values stored as
    the contract's (time, y, x) cubes; and a set without the factors runs every stage."""
    from abzflux.runner import run_study

    twin = tmp_path / "twin"
    shutil.copytree(tiny_twin, twin)
    pred = xr.open_zarr(tiny_twin / "predictors.zarr", consolidated=False).load()
    years = pd.DatetimeIndex(pred.time.values).year
    uniq = sorted(set(years))
    cover = ("tree_pct", "nontree_pct", "nonveg_pct")
    annual = {v: np.stack([pred[v].values[years == y].mean(0) for y in uniq]) for v in cover}
    co2 = np.nanmean(pred["co2"].values.reshape(len(years), -1), axis=1)
    cube = pred.copy()
    for v in cover:
        cube[v] = (("time", "y", "x"), annual[v][np.searchsorted(uniq, years)], pred[v].attrs)
    cube["co2"] = (("time", "y", "x"), np.broadcast_to(co2[:, None, None], pred["co2"].shape).copy(), pred["co2"].attrs)
    stored = pred.drop_vars([*cover, "co2"]).rename({"soil_moisture": "soil_moist"}).assign_coords(year=uniq)
    for v in cover:
        stored[v] = (("year", "y", "x"), annual[v], pred[v].attrs)
    stored["co2"] = (("time",), co2, pred["co2"].attrs)
    for ds in (cube, stored):
        for v in ds.variables:
            ds[v].encoding = {}
    cube.to_zarr(twin / "cube.zarr", mode="w", consolidated=False)
    stored.to_zarr(twin / "stored.zarr", mode="w", consolidated=False)
    cfg_text = (twin / "config.toml").read_text()
    cfg_text = cfg_text[: cfg_text.index("[forest]")] + FAST
    cfg_text = "\n".join(line for line in cfg_text.splitlines() if not line.startswith("references")) + "\n"
    (twin / "a.toml").write_text(cfg_text.replace('"predictors.zarr"', '"cube.zarr"'))
    (twin / "b.toml").write_text(
        cfg_text.replace('"predictors.zarr"', '"stored.zarr"') + '[predictors.soil_moisture]\nsource = "soil_moist"\n'
    )
    (twin / "c.toml").write_text(
        cfg_text.replace('"predictors.zarr"', '"stored.zarr"')
        + '[predictors]\ndrop = ["month", "veg_type"]\n[predictors.soil_moisture]\nsource = "soil_moist"\n'
    )
    ra = run_study(load_config(twin / "a.toml"), tmp_path / "run_a")
    rb = run_study(load_config(twin / "b.toml"), tmp_path / "run_b")
    assert {k: v["digest"] for k, v in ra["stages"].items()} == {k: v["digest"] for k, v in rb["stages"].items()}
    assert ra["output_digest"] == rb["output_digest"]
    rc = run_study(load_config(twin / "c.toml"), tmp_path / "run_c")
    assert rc["status"] == "complete" and rc["output_digest"] != rb["output_digest"]
    info = json.loads((tmp_path / "run_c" / "models" / "forest.json").read_text())
    assert info["nee"]["mtry"] == 5
    up = xr.open_zarr(tmp_path / "run_c" / "upscaled.zarr", consolidated=False)
    land = xr.open_dataset(twin / "zones.nc")["land_fraction"].fillna(0).values > 0
    assert np.isfinite(up["nee"].isel(time=6).values[land]).all()  # no vegetation factor: every land cell
