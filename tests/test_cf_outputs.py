"""Outputs that open cleanly in the ecosystem's tools (docs/formats.md "CF metadata of the
outputs"): consolidated Zarr stores that ``xr.open_zarr`` opens without a warning, UDUNITS / pint
units on every variable (no "C" read as coulomb), calendar-month time bounds, and a NetCDF export
that the IOOS compliance-checker's CF suite passes without errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import trends as trends_mod
from abzflux import upscale as up
from abzflux.formats import TIME_BOUNDS, month_bounds
from abzflux.vocab import CF_FLUX_CELL_METHODS, CF_FLUX_UNITS, FLUX_UNITS

ZARR_OUTPUTS = (
    "upscaled.zarr",
    "trends/trend_maps.zarr",
    "compare/extrapolation.zarr",
    "compare/product_maps.zarr",
    "uncertainty/extrapolation_sd.zarr",
)
NETCDF_OUTPUTS = ("fire/burned_cells.nc",)
FLUX_MAPS = ("gpp", "reco", "nee", "nee_derived", "gpp_sd", "reco_sd", "nee_sd", "nee_derived_sd")


def _outputs(run: Path) -> list[Path]:
    return [run / p for p in ZARR_OUTPUTS + NETCDF_OUTPUTS if (run / p).exists()]


def _open(p: Path) -> xr.Dataset:
    return xr.open_zarr(p) if p.suffix == ".zarr" else xr.open_dataset(p, engine="h5netcdf")


# ------------------------------------------------------------------------------ pure helpers


def test_month_bounds_are_calendar_months_whatever_the_day():
    times = pd.DatetimeIndex(["2020-01-01", "2020-02-15", "2019-12-31T12:00", "2021-02-28"])
    b = pd.DataFrame(month_bounds(times).values, columns=["start", "end"])
    assert list(b.start.astype(str)) == ["2020-01-01", "2020-02-01", "2019-12-01", "2021-02-01"]
    assert list(b.end.astype(str)) == ["2020-02-01", "2020-03-01", "2020-01-01", "2021-03-01"]
    # the cells' lengths: 31, 29 (leap year), 31 and 28 days, not UDUNITS' fixed 30.44-day month
    assert list((b.end - b.start).dt.days) == [31, 29, 31, 28]


def test_export_time_encoding_is_32_bit_hours_or_double_days():
    assert up._time_encoding(pd.date_range("2001-01-01", periods=3, freq="MS").values) == {
        "units": "hours since 1970-01-01",
        "calendar": "proleptic_gregorian",
        "dtype": "int32",
    }
    odd = pd.DatetimeIndex(["2001-01-15T12:30"]).values  # not a whole hour: int32 hours would lose it
    assert up._time_encoding(odd)["dtype"] == "float64"


def test_trend_slope_units_are_udunits_strings():
    assert trends_mod.per_step_units("g m-2", "year") == "g m-2 yr-1"
    assert trends_mod.per_step_units("degC", "year") == "degC yr-1"
    assert trends_mod.per_step_units("1", "year") == "yr-1"
    assert trends_mod.per_step_units("g m-2", "step") == "g m-2 per step"  # an index: words, as before


# ------------------------------------------------------------------------------ a run's outputs


def test_every_store_is_consolidated_and_opens_without_a_warning(study_run):
    import zarr

    run, _ = study_run
    stores = [run / p for p in ZARR_OUTPUTS if (run / p).exists()]
    assert {"upscaled.zarr", "trends/trend_maps.zarr"} <= {str(p.relative_to(run)) for p in stores}
    for p in stores:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # before: "Failed to open Zarr store with consolidated metadata"
            ds = xr.open_zarr(p)
            assert zarr.open_consolidated(str(p), mode="r") is not None
        assert len(ds.data_vars) > 0, p


def test_every_output_variable_has_parseable_units_and_no_coulomb(study_run):
    from cf_xarray.units import units as ureg  # pint with UDUNITS spellings (units.py's registry)

    run, _ = study_run
    seen = 0
    for p in _outputs(run):
        ds = _open(p)
        for name, da in ds.variables.items():
            u = da.attrs.get("units")
            if u is None or name == "time":
                continue
            parsed = ureg.Unit(u)  # raises on a string pint cannot read ("per year (g C ...)")
            # "g C m-2 month-1" parses too, as gram-coulomb: no output unit may carry a current
            assert "[current]" not in parsed.dimensionality, (p.name, name, u)
            seen += 1
    assert seen > 50  # the trend maps alone have hundreds


def test_flux_maps_are_amounts_per_calendar_month(study_run):
    from cf_xarray.units import units as ureg

    run, _ = study_run
    ds = xr.open_zarr(run / "upscaled.zarr")
    for v in FLUX_MAPS:
        a = ds[v].attrs
        assert a["units"] == CF_FLUX_UNITS == "g m-2" and a["cell_methods"] == CF_FLUX_CELL_METHODS
        assert a["carbon_units"] == FLUX_UNITS and "carbon" in a["long_name"]
        assert ureg.Unit(a["units"]).dimensionality == ureg.Unit("kg m-2").dimensionality  # mass per area
        assert "units_metadata" not in a  # CF: only for temperatures
    assert ds.gpp.attrs["ancillary_variables"] == "gpp_sd"
    assert ds.time.attrs["bounds"] == TIME_BOUNDS and ds.time.attrs["standard_name"] == "time"
    b = ds[TIME_BOUNDS].values
    t = pd.DatetimeIndex(ds.time.values)
    assert (b[:, 0] <= t.values).all() and (t.values < b[:, 1]).all()
    assert (b[1:, 0] == b[:-1, 1]).all()  # contiguous months
    days = (pd.DatetimeIndex(b[:, 1]) - pd.DatetimeIndex(b[:, 0])).days
    assert set(days) == {28, 29, 30, 31} and days[t.year == 2004][1] == 29  # 2004 is a leap year


def _cf_check(path: Path, tmp: Path, version: str = "1.8") -> dict:
    """The compliance-checker's CF suite on ``path``: its JSON result for ``cf:<version>``."""
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    out = tmp / f"cc_{path.stem}_{version}.json"
    ComplianceChecker.run_checker(
        str(path), [f"cf:{version}"], 0, "normal", output_filename=str(out), output_format="json"
    )
    return json.loads(out.read_text())[f"cf:{version}"]


def _failed(result: dict, priority: str = "high_priorities") -> list:
    return [(r["name"], r["msgs"]) for r in result[priority] if r["value"][0] < r["value"][1]]


def test_netcdf_export_passes_the_cf_checker(study_run, tmp_path):
    pytest.importorskip("compliance_checker", reason="the IOOS compliance-checker (dev extra) is not installed")
    from typer.testing import CliRunner

    from abzflux.cli import app

    from conftest import run_view

    run = run_view(study_run[0], tmp_path / "run")
    nc = tmp_path / "upscaled.nc"
    r = CliRunner().invoke(app, ["export", str(run), "--format", "netcdf", "--out", str(nc)])
    assert r.exit_code == 0, r.output
    res = _cf_check(nc, tmp_path)
    assert _failed(res) == [], _failed(res)  # no errors (the checker's high-priority failures)
    assert _failed(res, "medium_priorities") == []  # and no warnings
    assert res["scored_points"] == res["possible_points"]
    # the export holds the store's numbers and time bounds unchanged
    ds, ex = xr.open_zarr(run / "upscaled.zarr"), xr.open_dataset(nc, engine="h5netcdf")
    assert np.array_equal(ex.nee.values, ds.nee.values, equal_nan=True)
    assert np.array_equal(ex[TIME_BOUNDS].values, ds[TIME_BOUNDS].values)
    assert ex.gpp.attrs["units"] == "g m-2" and ex.gpp.attrs["carbon_units"] == "g C m-2 month-1"
    # control: the same data written with xarray's defaults (NaN fill on x/y, int64 time) fails
    plain = tmp_path / "plain.nc"
    ds[["nee"]].to_netcdf(plain, engine="h5netcdf")
    assert any("2.5.1" in name or "2.2" in name for name, _ in _failed(_cf_check(plain, tmp_path)))


def test_burned_cells_pass_the_cf_checker(study_run, tmp_path):
    pytest.importorskip("compliance_checker", reason="the IOOS compliance-checker (dev extra) is not installed")
    p = study_run[0] / "fire" / "burned_cells.nc"
    res = _cf_check(p, tmp_path)
    assert _failed(res) == [], _failed(res)
