"""Validate means runnable (issue 19): inputs that `abzflux validate` accepts run through the
first stages of a study (sites -> forest -> bootstrap -> upscale), and inputs it refuses get one
line and exit code 2.

The cases below are inputs the contract allows but the run once mishandled (dimension orders,
CF string ``flag_values``, a CRS in kilometres, NetCDF-3, a ``noleap`` calendar, a site on a cell
without land); each is run through the first stages with tiny forests on the 300-km twin of
tests/test_catalogue.py and compared with the same run on the canonical inputs. The property
test at the end generates mutations (dimension transposes, codes outside the vocabulary, NaN and
inf, config values at and past their bounds, string flag_values, unit changes) from a fixed
seed and checks the implication for each. The catalogue's cases (all refused) are checked the
same way by test_catalogue.test_bad_input (`run` makes validate's checks first).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_catalogue import Work, error_text
from typer.testing import CliRunner

from abzflux import steps
from abzflux.checks import check_inputs
from abzflux.cli import app
from abzflux.config import load_config
from abzflux.context import Context
from abzflux.formats import open_grid, read_zones, spacing_area_m2, write_crs

# Every test here runs stages on a built twin (make test-fast skips them).
pytestmark = pytest.mark.slow

TINY_FOREST = ["n_estimators = 3", "mtry = 3", "cv = false", "n_bootstrap = 2"]
LAEA_KM = "+proj=laea +lat_0=90 +lon_0=0 +datum=WGS84 +units=km +no_defs"


@pytest.fixture(scope="module")
def twin(tiny_twin):
    """The shared tiny twin (read-only: mutations are written to each test's own directory)."""
    return tiny_twin


def new_work(twin: Path, root: Path) -> Work:
    root.mkdir(parents=True, exist_ok=True)
    w = Work(twin, root)
    w.sections["forest"] = list(TINY_FOREST)
    return w


def validate(w: Work):
    if not w.config.exists():
        w.write_config()
    return CliRunner().invoke(app, ["validate", str(w.config)])


def first_stages(w: Work) -> Path:
    """Run sites -> forest -> bootstrap -> upscale of the work's config; returns the run dir."""
    cfg = load_config(w.config)
    out = w.root / "run"
    out.mkdir()
    ctx = Context(cfg=cfg, out=out)
    try:
        check_inputs(ctx)
        for stage in (steps.sites, steps.forest, steps.bootstrap, steps.upscale):
            stage.run(ctx)
    finally:
        ctx.close()
    return out


def nc(ds: xr.Dataset) -> xr.Dataset:
    """A loaded dataset ready to be written to NetCDF (Zarr encodings dropped)."""
    for v in ds.variables.values():
        v.encoding = {}
    return ds


@pytest.fixture(scope="module")
def canonical_run(twin, tmp_path_factory):
    w = new_work(twin, tmp_path_factory.mktemp("canonical"))
    assert validate(w).exit_code == 0
    return first_stages(w)


def upscaled(run: Path) -> xr.Dataset:
    return xr.open_zarr(run / "upscaled.zarr", consolidated=False).load()


def members(run: Path) -> pd.DataFrame:
    return (
        pd.read_parquet(run / "budgets_members_monthly.parquet")
        .sort_values(["flux", "member", "time", "zone"])
        .reset_index(drop=True)
    )


def test_transposed_dimensions_run_through_upscale(twin, tmp_path, canonical_run):
    """(time, x, y) predictors and (x, y) zones: the docs allow any order; the upscaling once
    crashed with an IndexError after the forests were fitted. The run now gives the canonical
    run's maps and zone sums exactly."""
    w = new_work(twin, tmp_path)
    w.put_grid("predictors", nc(w.grid("predictors")).transpose("time", "x", "y"))
    w.put_grid("zones", nc(w.grid("zones")).transpose("x", "y"))
    assert w.grid("predictors")["srad"].dims == ("time", "x", "y")  # as written
    r = validate(w)
    assert r.exit_code == 0, r.output
    run = first_stages(w)
    a, b = upscaled(run), upscaled(canonical_run)
    for v in ("gpp", "reco", "nee", "gpp_sd"):
        assert a[v].dims == ("time", "y", "x")
        np.testing.assert_array_equal(a[v].values, b[v].values)
    pd.testing.assert_frame_equal(members(run), members(canonical_run))


def test_string_flag_values_run(twin, tmp_path, canonical_run):
    """flag_values written as a CF space-separated string ("1 2") are parsed as the codes, in
    the readers and in the zone sums (budgets once crashed on int('1 2'))."""
    w = new_work(twin, tmp_path)
    z, p = nc(w.grid("zones")), nc(w.grid("predictors"))
    for ds, names in ((z, ("biome", "region")), (p, ("veg_type",))):
        for n in names:
            ds[n].attrs["flag_values"] = " ".join(str(int(c)) for c in np.asarray(ds[n].attrs["flag_values"]))
    w.put_grid("zones", z)
    w.put_grid("predictors", p)
    assert isinstance(w.grid("zones")["biome"].attrs["flag_values"], str)
    r = validate(w)
    assert r.exit_code == 0, r.output
    run = first_stages(w)
    pd.testing.assert_frame_equal(members(run), members(canonical_run))


def _no_area(w: Work, km: bool) -> None:
    z, p = nc(w.grid("zones")).drop_vars("cell_area"), nc(w.grid("predictors"))
    if km:
        z = write_crs(z.assign_coords(x=z.x / 1000, y=z.y / 1000), LAEA_KM)
        p = write_crs(p.assign_coords(x=p.x / 1000, y=p.y / 1000), LAEA_KM)
    w.put_grid("zones", z)
    w.put_grid("predictors", p)
    w.inputs.update(fire=None, truth=None, references=[])


def test_laea_in_km_gives_the_areas_and_budgets_of_metres(twin, tmp_path):
    """A LAEA grid in kilometres without cell_area: each 300-km cell is 9e10 m2 (once 9e4,
    every budget 1e6 too small). The same grid in metres gives the same areas and zone sums."""
    runs = {}
    for km in (False, True):
        w = new_work(twin, tmp_path / ("km" if km else "m"))
        _no_area(w, km)
        zones = read_zones(w.inputs["zones"])
        assert zones["cell_area"].attrs["source"] == "grid spacing"
        np.testing.assert_allclose(zones["cell_area"].values, 300e3**2)
        assert spacing_area_m2(zones) == pytest.approx(9e10)
        assert validate(w).exit_code == 0
        runs[km] = members(first_stages(w))
    m, k = runs[False], runs[True]
    assert m.tg_c.abs().max() > 1.0  # Tg C: a real budget, not 1e-6 of one
    np.testing.assert_allclose(k.tg_c.to_numpy(), m.tg_c.to_numpy(), rtol=1e-9, atol=0)


def test_netcdf3_predictors_run(twin, tmp_path, canonical_run):
    """A NetCDF-3 (64-bit offset) stack written with scipy: read by the netCDF4/scipy engines."""
    w = new_work(twin, tmp_path)
    p = nc(w.grid("predictors"))
    for n, v in p.data_vars.items():
        if v.dtype.itemsize == 8 and v.dtype.kind in "iu" or v.dtype.kind == "u":
            p[n] = v.astype(np.int32 if v.dtype.kind in "iu" else v.dtype)
    path = w.root / "pred3.nc"
    p.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
    assert path.read_bytes()[:4] == b"CDF\x02"
    w.inputs["predictors"] = path
    r = validate(w)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(upscaled(first_stages(w))["gpp"].values, upscaled(canonical_run)["gpp"].values)


def test_noleap_calendar_runs(twin, tmp_path, canonical_run):
    """A stack whose time axis uses the noleap calendar (decoded to cftime): its monthly dates
    are the same months, so the run is the canonical one."""
    w = new_work(twin, tmp_path)
    p = nc(w.grid("predictors"))
    p.time.encoding = {"units": "days since 2019-01-01", "calendar": "noleap"}
    w.put_grid("predictors", p)
    raw = xr.open_dataset(w.inputs["predictors"], engine="h5netcdf")
    assert raw.time.values.dtype == object and raw.time.values[0].calendar == "noleap"
    r = validate(w)
    assert r.exit_code == 0, r.output
    assert open_grid(w.inputs["predictors"]).time.dtype.kind == "M"
    np.testing.assert_array_equal(upscaled(first_stages(w))["gpp"].values, upscaled(canonical_run)["gpp"].values)


def test_site_without_land_is_dropped_with_a_warning(twin, tmp_path, caplog):
    """Documented rule (docs/formats.md §1): a site whose cell has no land is dropped from the
    training table, with a warning that names it and counts its site-months."""
    w = new_work(twin, tmp_path)
    z = xr.open_dataset(w.inputs["zones"]).load()
    df = w.table()
    site = df.site_id.iloc[0]
    pred = w.grid("predictors")
    from abzflux.formats import cell_index

    iy, ix = cell_index(pred, df.lat.astype(float).to_numpy(), df.lon.astype(float).to_numpy())
    z["land_fraction"].values[iy[0], ix[0]] = 0.0
    w.put_grid("zones", nc(z))
    gone = sorted(set(df.site_id[(iy == iy[0]) & (ix == ix[0])]))  # every site of that cell
    r = validate(w)
    assert r.exit_code == 0, r.output
    n = int(df.site_id.isin(gone).sum())
    assert "WARNING" in r.output
    assert (
        f"{len(gone)} site(s) fall in grid cells without land (land_fraction 0): {', '.join(gone)}; "
        f"their {n} site-month(s) are dropped"
    ) in error_text(r)
    cfg = load_config(w.config)
    out = w.root / "run"
    out.mkdir()
    ctx = Context(cfg=cfg, out=out)
    with caplog.at_level(logging.WARNING, logger="abzflux.steps.sites"):
        steps.sites.run(ctx)
    table = pd.read_parquet(out / "sites.parquet")
    assert site in gone and not set(gone) & set(table.site_id)
    assert table.site_id.nunique() == df.site_id.nunique() - len(gone)
    assert "without land" in caplog.text


# ------------------------------------------------------------------------------ the property
def _mut_transpose(w, rng):
    key = rng.choice(["predictors", "zones"])
    ds = nc(w.grid(key))
    order = {"predictors": ("time", "y", "x"), "zones": ("y", "x")}[key]
    perm = tuple(rng.sample(order, len(order)))
    w.put_grid(key, ds.transpose(*perm) if len(perm) == 3 else ds.transpose(*perm, ...))
    return f"{key} transposed to {perm}"


def _mut_veg_code(w, rng):
    ds = nc(w.grid("predictors"))
    code = rng.choice([2, 7, 99, 200, 1, 21])  # 1 (recoded) and 21 are the paper's
    v = ds["veg_type"].values
    iy, ix = np.argwhere(np.isfinite(v))[rng.randrange(20)]
    v[iy, ix] = code
    if rng.random() < 0.5:
        fv = np.asarray(ds["veg_type"].attrs["flag_values"])
        if code not in fv:
            ds["veg_type"].attrs["flag_values"] = np.append(fv, code).astype(np.int16)
            ds["veg_type"].attrs["flag_meanings"] += " extra"
    w.put_grid("predictors", ds)
    return f"veg_type code {code}"


def _mut_zone_code(w, rng):
    ds = nc(w.grid("zones"))
    var, code = rng.choice([("biome", 3), ("region", 0), ("region", 4), ("biome", 2)])
    lf = ds["land_fraction"].values
    iy, ix = np.argwhere(lf > 0)[rng.randrange(10)]
    ds[var].values[iy, ix] = code
    w.put_grid("zones", ds)
    return f"{var} code {code}"


def _mut_inject(w, rng):
    key = rng.choice(["predictors", "predictors", "fire", "zones"])
    ds = nc(w.grid(key))
    var = rng.choice([v for v in ds.data_vars if v not in ("spatial_ref",)])
    a = ds[var].values
    if not np.issubdtype(a.dtype, np.floating):
        ds[var] = ds[var].astype(np.float32)
        a = ds[var].values
    value = rng.choice([np.nan, np.inf, -np.inf])
    idx = tuple(rng.randrange(n) for n in a.shape)
    a[idx] = value
    w.put_grid(key, ds)
    return f"{key}.{var}{idx} = {value}"


CONFIG_BOUNDS = [
    ("forest", "mtry", [1, 17, 18, 0]),
    ("run", "seed", [0, 2**32 - 1, 2**32, -1]),
    ("forest", "n_estimators", [1, 0]),
    ("forest", "nodesize", [1, 400, 0]),
    ("forest", "n_bootstrap", [0, 1, -1]),
    ("run", "tile", [8, 7, 1000]),
    ("forest", "mtry_grid", ["[1, 17]", "[0, 3]", "[3, 18]"]),
    ("budgets", "decade_length", [1, 0]),
    ("budgets", "source_threshold", ["inf", "-5.0"]),
    ("fire", "alpha", ["0.0", "0.5", "1.0"]),
    ("fire", "first_year", [2019, 2021, 1899]),
    ("compare", "n_clusters", [1, 0]),
    ("uncertainty", "block_km", ["0.0", "nan", "500.0"]),
    ("uncertainty", "method", ['"sites"', '"blocks"', '"row"']),
]


def _mut_config(w, rng):
    sec, key, values = rng.choice(CONFIG_BOUNDS)
    value = rng.choice(values)
    body = [line for line in w.sections.get(sec, []) if not line.startswith(f"{key} =")]
    if sec == "forest" and key in ("mtry", "mtry_grid"):
        body = [line for line in body if not line.startswith("mtry")] + (["cv = true"] if key == "mtry_grid" else [])
        body = [line for line in body if line != "cv = false" or key == "mtry"]
    w.sections[sec] = body + [f"{key} = {value}"]
    return f"{sec}.{key} = {value}"


def _mut_flag_string(w, rng):
    key, var = rng.choice([("zones", "biome"), ("zones", "region"), ("predictors", "veg_type")])
    ds = nc(w.grid(key))
    fv = np.asarray(ds[var].attrs["flag_values"])
    sep = rng.choice([" ", ", "])
    ds[var].attrs["flag_values"] = sep.join(str(int(c)) for c in fv)
    w.put_grid(key, ds)
    return f"{key}.{var} flag_values {ds[var].attrs['flag_values']!r}"


def _mut_units(w, rng):
    kind = rng.choice(["km-crs", "area-km2", "area-x1e6", "no-area"])
    if kind == "km-crs":
        _no_area(w, km=True)
    elif kind == "no-area":
        _no_area(w, km=False)
    else:
        z = nc(w.grid("zones"))
        z["cell_area"] = (z["cell_area"] * (1e-6 if kind == "area-km2" else 1e6)).assign_attrs(units="m2")
        w.put_grid("zones", z)
    return kind


def _mut_sites(w, rng):
    df = w.table()
    kind = rng.choice(["case", "off-land", "veg-column"])
    sid = rng.choice(sorted(set(df.site_id)))
    if kind == "case":
        rows = (df.site_id == sid).to_numpy().nonzero()[0]
        df.loc[rows[-1:], "site_id"] = sid.lower()
    elif kind == "veg-column":
        df["veg_type"] = str(rng.choice([21, 30, 5]))
    else:  # a site in the ocean at the pole: inside the grid, no land
        df.loc[df.site_id == sid, ["lat", "lon"]] = ["89.99", "0.0"]
    w.put_table(df)
    return f"sites {kind} {sid}"


def _mut_format(w, rng):
    p = nc(w.grid("predictors"))
    if rng.random() < 0.5:
        p.time.encoding = {"units": "days since 2019-01-01", "calendar": rng.choice(["noleap", "360_day", "all_leap"])}
        w.put_grid("predictors", p)
        return f"calendar {p.time.encoding['calendar']}"
    path = w.root / "pred3.nc"
    p.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
    w.inputs["predictors"] = path
    return "NetCDF-3"


MUTATIONS = [
    _mut_transpose,
    _mut_veg_code,
    _mut_zone_code,
    _mut_inject,
    _mut_config,
    _mut_config,
    _mut_flag_string,
    _mut_units,
    _mut_sites,
    _mut_format,
]
N_EXAMPLES = 12  # about a minute on an idle 2-core machine


def test_validate_passing_implies_the_first_stages_run(twin, tmp_path):
    """For generated mutations (fixed seed): validate exits 0 and the first stages run, or
    validate exits 2 with one line and no traceback. Nothing else."""
    rng = random.Random(19)
    seen = {"ok": [], "refused": []}
    for i in range(N_EXAMPLES):
        w = new_work(twin, tmp_path / f"m{i:02d}")
        muts = rng.sample(MUTATIONS, rng.choice([1, 1, 2]))
        what = "; ".join(m(w, rng) for m in muts)
        r = validate(w)
        text = error_text(r)
        assert "Traceback" not in r.output, (what, r.output)
        if r.exit_code == 0:
            try:
                first_stages(w)
            except Exception as exc:  # noqa: BLE001 - any failure here is the one this test exists to catch
                raise AssertionError(
                    f"validate passed but the run failed: {what}: {type(exc).__name__}: {exc}"
                ) from exc
            seen["ok"].append(what)
        else:
            assert r.exit_code == 2, (what, r.exit_code, r.output, r.exception)
            assert text.startswith("error: ") and len(r.output.strip().splitlines()) == 1, (what, r.output)
            seen["refused"].append(what)
    assert seen["ok"] and seen["refused"], seen  # both sides of the implication were exercised
