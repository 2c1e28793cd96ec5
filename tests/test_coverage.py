"""Coverage: a shrunken upscaling domain or a short fire record is measured, warned about or
refused, and recorded (docs/budgets.md "Coverage", docs/fire.md "Fire years")."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from abzflux import budgets
from abzflux import coverage as C
from abzflux.cli import app
from abzflux.config import load_config
from abzflux.errors import InputError
from abzflux.predictors import VEG_RECODE
from abzflux.runner import run_study, validate_study


# ------------------------------------------------------------------------ a hand-computed grid
def small_zones() -> xr.Dataset:
    """3 x 4 cells of 1 km x 1 km (cell area from the spacing = 1 km2). Land fractions:

        1.0  0.5  0.0  0.25
        0.75 1.0  1.0  0.0
        0.0  0.2  1.0  0.6

    biome 1 (boreal) in the left two columns, 2 (tundra) in the right two; region 1 (alaska) in
    row 0, 2 (canada) in row 1, 3 (europe) in row 2; permafrost everywhere."""
    land = np.array([[1.0, 0.5, 0.0, 0.25], [0.75, 1.0, 1.0, 0.0], [0.0, 0.2, 1.0, 0.6]])
    biome = np.array([[1, 1, 2, 2]] * 3, float)
    region = np.array([[1] * 4, [2] * 4, [3] * 4], float)
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), land),
            "biome": (("y", "x"), biome),
            "region": (("y", "x"), region),
            "permafrost": (("y", "x"), np.ones((3, 4))),
        },
        coords={"y": [2500.0, 1500.0, 500.0], "x": [500.0, 1500.0, 2500.0, 3500.0]},
    )
    ds.biome.attrs.update(flag_values=[1, 2], flag_meanings="boreal tundra")
    ds.region.attrs.update(flag_values=[1, 2, 3, 4], flag_meanings="alaska canada europe siberia")
    return ds


def small_layers():
    times = pd.date_range("2019-01-01", periods=3, freq="MS")
    a = np.ones((3, 3, 4))
    a[1, 1, 1] = np.nan  # Feb: a land cell of boreal canada (1.0 km2)
    a[1, 0, 2] = np.nan  # Feb: a water cell (land 0): not a loss
    a[2, 2, 3] = np.inf  # Mar: tundra europe (0.6 km2); inf is not finite either
    b = np.ones((3, 4))
    b[0, 3] = np.nan  # static: tundra alaska (0.25 km2), every month
    coords = {"y": [2500.0, 1500.0, 500.0], "x": [500.0, 1500.0, 2500.0, 3500.0]}
    return {
        "a": xr.DataArray(a, dims=("time", "y", "x"), coords={"time": times, **coords}),
        "b": xr.DataArray(b, dims=("y", "x"), coords=coords),
    }


def test_monthly_coverage_hand_computed():
    m = C.monthly_coverage(small_layers(), small_zones())
    r = m.set_index(["zone", "month"])
    # domain land = 6.3 km2; Jan loses b's 0.25, Feb 0.25 + 1.0, Mar 0.25 + 0.6
    assert r.loc[("domain", 1), "land_km2"] == pytest.approx(6.3)
    for month, lost, names in ((1, 0.25, "b"), (2, 1.25, "a;b"), (3, 0.85, "a;b")):
        assert r.loc[("domain", month), "predicted_km2"] == pytest.approx(6.3 - lost)
        assert r.loc[("domain", month), "share_lost"] == pytest.approx(lost / 6.3)
        assert r.loc[("domain", month), "variables"] == names  # most area first
    # canada = 0.75 + 1.0 + 1.0 = 2.75 km2; loses 1.0 in Feb only
    assert r.loc[("canada", 1), "share_lost"] == 0.0 and r.loc[("canada", 1), "variables"] == ""
    assert r.loc[("canada", 2), "predicted_km2"] == pytest.approx(1.75)
    assert r.loc[("canada", 2), "share_lost"] == pytest.approx(1.0 / 2.75)
    # tundra = 0.25 + 1.0 + 1.0 + 0.6 = 2.85; boreal/alaska = 1.5 (nothing lost)
    assert r.loc[("tundra", 3), "share_lost"] == pytest.approx(0.85 / 2.85)
    assert (m[m.zone == "boreal/alaska"].share_lost == 0).all()
    # a zone without land (siberia) loses nothing
    assert (m[m.zone == "siberia"].land_km2 == 0).all() and (m[m.zone == "siberia"].share_lost == 0).all()
    a = C.annual_coverage(m).set_index("zone")
    assert a.loc["domain", "worst_month"] == "2019-02"
    assert a.loc["domain", "predicted_km2"] == pytest.approx(6.3 - 1.25)
    assert a.loc["domain", "variables"] == "a;b"
    assert a.loc["tundra", "worst_month"] == "2019-03"  # 0.85 of 2.85 beats 0.25 in Jan and Feb


def test_coverage_is_banded_and_weights_reused_identically():
    z, layers = small_zones(), small_layers()
    whole = C.monthly_coverage(layers, z)
    banded = C.monthly_coverage(layers, z, band=1)
    shared = C.monthly_coverage(layers, z, weights=C.zone_weight_bands(z, band=2))
    for other in (banded, shared):
        pd.testing.assert_frame_equal(whole, other, check_exact=False, rtol=1e-12)


def test_check_coverage_thresholds(caplog):
    a = C.annual_coverage(C.monthly_coverage(small_layers(), small_zones()))
    # worst zone-year: tundra/alaska (its one land cell, 0.25 km2, has no b) in 2019
    with pytest.raises(InputError) as e:
        C.check_coverage(a, 0.001, 0.05, "stack.zarr")
    msg = str(e.value)
    assert msg.startswith(
        "stack.zarr: [b] b not finite on land: 100.00% of zone tundra/alaska's land in 2019 "
        "has no predictors (0 of 0.25 km2 with predictors in 2019-01)"
    )
    # 16 zone-years above 0.05 (every zone with lost land), the first named
    n = int((a.share_lost > 0.05).sum())
    assert f"zone tundra/alaska, year 2019 (and {n - 1} more zone-year(s) above 0.05)" in msg
    assert "budgets.coverage_stop (now 0.05; 1 never stops)" in msg
    # tundra alone: March loses 0.6 (a) + 0.25 (b) of 2.85 km2 = 29.82 %: stops at 0.25, not at 0.3
    t = a[a.zone == "tundra"]
    with pytest.raises(
        InputError,
        match=r"^stack.zarr: \[a;b\] a;b not finite on land: 29.82% of zone tundra's "
        r"land in 2019 has no predictors \(2 of 2.85 km2 with predictors in 2019-03\)",
    ):
        C.check_coverage(t, 0.001, 0.25, "stack.zarr")
    C.check_coverage(t, 0.001, 0.3, "stack.zarr")
    with caplog.at_level(logging.WARNING, logger="abzflux.coverage"):
        C.check_coverage(a, 0.001, 1.0, "stack.zarr")  # 1 never stops: a warning only
    assert f"{int((a.share_lost > 0.001).sum())} zone-year(s) lose more than 0.001" in caplog.text
    assert "tundra/alaska" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="abzflux.coverage"):
        C.check_coverage(a, 1.0, 1.0, "stack.zarr")
    assert caplog.text == ""


def test_fire_period_rule():
    t = pd.date_range("2002-01-01", "2020-12-01", freq="MS")
    assert C.check_fire_years(t, None, 2001, 2020, "f.nc") == (2002, 2020)  # a later start: the fire period
    assert C.check_fire_years(t, 2005, 2001, 2020, "f.nc") == (2005, 2020)
    gap = t[(t.year != 2010)]
    with pytest.raises(InputError, match=r"12 month\(s\) of the fire period 2002-2020 missing .* at 2010-01"):
        C.check_fire_years(gap, None, 2001, 2020, "f.nc")
    assert C.check_fire_years(gap, 2011, 2001, 2020, "f.nc") == (2011, 2020)  # first_year past the gap
    with pytest.raises(InputError, match="2020-01"):  # the record ends before the run
        C.check_fire_years(t[t.year < 2020], None, 2001, 2020, "f.nc")
    with pytest.raises(InputError, match="the fire period starts in 2021, after the run's last year 2020"):
        C.check_fire_years(pd.date_range("2021-01-01", periods=24, freq="MS"), None, 2001, 2020, "f.nc")


def test_years_note():
    p = pd.DataFrame(
        {"flux": ["nee", "fire", "nee_fire"], "first_year": [2001, 2002, 2002], "last_year": [2020, 2020, 2020]}
    )
    assert C.years_note(p, 2001, 2020) == (
        "Means over other years than 2001–2020: fire 2002–2020, "
        "nee_fire 2002–2020 (fire and NEE + fire: the fire period, docs/fire.md)."
    )
    assert C.years_note(p[p.flux == "nee"], 2001, 2020) == ""


# ------------------------------------------------------------------------ the twin
@pytest.fixture(scope="module")
def twin(tiny_twin) -> Path:
    """The shared tiny twin (read-only: mutations are written to each test's own directory)."""
    return tiny_twin


def alaska_half(twin: Path) -> np.ndarray:
    """The western third of Alaska's land cells (by x, then y; a cell mask)."""
    z = xr.open_dataset(twin / "zones.nc").load()
    ak = (z.region.values == 1) & (z.land_fraction.values > 0)
    iy, ix = np.nonzero(ak)
    order = np.lexsort((iy, ix))[: (len(iy) + 2) // 3]
    out = np.zeros(ak.shape, bool)
    out[iy[order], ix[order]] = True
    return out


def write_config(root: Path, twin: Path, predictors=None, fire=None, extra: str = "") -> Path:
    p = root / "config.toml"
    p.write_text(f"""[inputs]
sites = "{twin / "sites.csv"}"
predictors = "{predictors or twin / "predictors.zarr"}"
zones = "{twin / "zones.nc"}"
fire = "{fire or twin / "fire.zarr"}"

[run]
seed = 448
years = "2019-2020"
{extra}""")
    return p


def nan_predictors(twin: Path, root: Path, months=("2020-06", "2020-07", "2020-08")) -> Path:
    """The twin's stack with NDVI NaN over the western half of Alaska in ``months``."""
    ds = xr.open_zarr(twin / "predictors.zarr", consolidated=False).load()
    cells = alaska_half(twin)
    t = pd.DatetimeIndex(ds.time.values).strftime("%Y-%m")
    nd = ds.ndvi.values.copy()
    for m in months:
        nd[np.nonzero(t == m)[0][0]][cells] = np.nan  # a view of that month: set in place
    ds["ndvi"] = (ds.ndvi.dims, nd, ds.ndvi.attrs)
    p = root / "predictors.zarr"
    ds.to_zarr(p, consolidated=False)
    return p


def expected_shares(twin: Path, cells: np.ndarray, predictors: Path | None = None) -> pd.Series:
    """Per zone: area of ``cells`` / zone area, from the zones' own weights (hand rule)."""
    z = xr.open_dataset(twin / "zones.nc").load()
    veg = xr.open_zarr(predictors or twin / "predictors.zarr", consolidated=False).veg_type.load()
    veg = veg.where(~veg.isin(list(VEG_RECODE)), next(iter(VEG_RECODE.values())))
    w = budgets.zone_weights(z, veg.values)
    lost = w.where(xr.DataArray(cells, dims=("y", "x")), 0.0).sum(("y", "x"))
    tot = w.sum(("y", "x"))
    return (lost / tot.where(tot > 0)).fillna(0.0).to_series()


@pytest.mark.slow  # builds a twin
def test_validate_stops_on_a_shrunken_domain_naming_variable_zone_year_share(twin, tmp_path):
    pred = nan_predictors(twin, tmp_path)
    cfg = write_config(tmp_path, twin, predictors=pred)
    share = expected_shares(twin, alaska_half(twin))
    assert 0.05 < share["alaska"] < 1 and share["domain"] < 0.05
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "Traceback" not in out
    m = re.search(r"\[ndvi\] ndvi not finite on land: ([0-9.]+)% of zone (\S+)'s land in 2020", out)
    assert m, out
    zone = m.group(2)
    assert share[zone] == pytest.approx(share.max(), abs=1e-9)  # the worst zone (first of equals)
    assert m.group(1) == f"{100 * share[zone]:.2f}"
    assert f"zone {zone}, year 2020" in out and str(pred) in out


@pytest.mark.slow  # builds a twin
def test_validate_warns_below_the_stop_threshold_and_names_the_zone(twin, tmp_path, caplog):
    pred = nan_predictors(twin, tmp_path)
    cfg = write_config(tmp_path, twin, predictors=pred, extra="\n[budgets]\ncoverage_stop = 1.0\n")
    with caplog.at_level(logging.WARNING, logger="abzflux.coverage"):
        validate_study(load_config(cfg))
    share = expected_shares(twin, alaska_half(twin))
    n = int((share > 0.001).sum())  # each such zone loses it in 2020 only
    assert f"{n} zone-year(s) lose more than 0.001 of their land to missing predictors" in caplog.text
    assert "variable(s) ndvi" in caplog.text
    # a threshold above the worst share: silent
    caplog.clear()
    cfg = write_config(tmp_path, twin, predictors=pred, extra="\n[budgets]\ncoverage_warn = 1.0\ncoverage_stop = 1.0\n")
    with caplog.at_level(logging.WARNING, logger="abzflux.coverage"):
        validate_study(load_config(cfg))
    assert "coverage" not in caplog.text


@pytest.mark.slow  # builds a twin
def test_validate_stops_on_nan_vegetation_type_on_land(twin, tmp_path):
    """A NaN vegetation class is not predicted either (the forests split on veg_type)."""
    ds = xr.open_zarr(twin / "predictors.zarr", consolidated=False).load()
    v = ds.veg_type.values.copy()
    v[alaska_half(twin)] = np.nan
    ds["veg_type"] = (ds.veg_type.dims, v, ds.veg_type.attrs)
    ds.to_zarr(tmp_path / "predictors.zarr", consolidated=False)
    with pytest.raises(InputError) as e:
        validate_study(
            load_config(write_config(tmp_path, twin, predictors=tmp_path / "predictors.zarr")),
        )
    # the NaN cells leave the vegetation x region zones: those are measured without them
    share = expected_shares(twin, alaska_half(twin), tmp_path / "predictors.zarr")
    msg = str(e.value)
    m = re.search(r"\[veg_type\] veg_type not finite on land: ([0-9.]+)% of zone (\S+)'s land in 2019 ", msg)
    assert m, msg  # both years lose the same: the first is named
    assert m.group(1) == f"{100 * share.max():.2f}" and share[m.group(2)] == pytest.approx(share.max(), abs=1e-9)


@pytest.mark.slow  # builds a twin
def test_coverage_config_keys_are_checked(twin, tmp_path):
    cfg = write_config(tmp_path, twin, extra="\n[budgets]\ncoverage_stop = 1.5\n")
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 2 and "[budgets.coverage_stop] 1.5 is out of range" in " ".join(r.output.split())


def drop_fire_months(twin: Path, root: Path, keep) -> Path:
    ds = xr.open_zarr(twin / "fire.zarr", consolidated=False).load()
    t = pd.DatetimeIndex(ds.time.values)
    ds = ds.isel(time=np.nonzero(keep(t))[0])
    for v in ds.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
    p = root / "fire.zarr"
    ds.to_zarr(p, consolidated=False)
    return p


@pytest.mark.slow  # builds a twin
def test_validate_stops_on_a_fire_file_with_a_missing_year_inside_the_fire_period(twin, tmp_path):
    fire = drop_fire_months(twin, tmp_path, lambda t: t.year != 2020)  # the record ends a year early
    cfg = write_config(tmp_path, twin, fire=fire)
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in out
    assert "[time] 12 month(s) of the fire period 2019-2020 missing from the fire file" in out
    assert "at 2020-01, 2020-02" in out


FAST = """
[forest]
n_estimators = 10
mtry = 5
cv = false
importance_repeats = 0
pdp_points = 3
pdp_rows = 50
n_bootstrap = 0

[budgets]
coverage_stop = 1.0
"""


@pytest.fixture(scope="module")
def short_run(twin, tmp_path_factory):
    """A run on the twin with NDVI NaN over western Alaska in June-August 2020 and a fire file
    that starts in 2020 (the fire period is 2020-2020 of the run's 2019-2020)."""
    root = tmp_path_factory.mktemp("short")
    pred = nan_predictors(twin, root)
    fire = drop_fire_months(twin, root, lambda t: t.year == 2020)
    cfg = write_config(root, twin, predictors=pred, fire=fire, extra=FAST)
    run_study(load_config(cfg), root / "run")
    return root / "run"


@pytest.mark.slow  # builds a twin
def test_coverage_csv_is_what_the_budgets_summed(short_run, twin):
    cov = pd.read_csv(short_run / "budgets" / "coverage.csv", keep_default_na=False)
    assert list(cov.columns) == list(C.COLUMNS)
    up = xr.open_zarr(short_run / "upscaled.zarr", consolidated=False).load()
    z = xr.open_dataset(twin / "zones.nc").load()
    veg = xr.open_zarr(twin / "predictors.zarr", consolidated=False).veg_type.load()
    veg = veg.where(~veg.isin(list(VEG_RECODE)), next(iter(VEG_RECODE.values())))
    w = budgets.zone_weights(z, veg.values)
    wv = w.values.reshape(w.sizes["zone"], -1)
    ok = (np.isfinite(up.gpp.values) & np.isfinite(up.reco.values) & np.isfinite(up.nee.values)).reshape(24, -1)
    pred = ok.astype(float) @ wv.T / 1e6  # (month, zone) km2 predicted
    land = wv.sum(1) / 1e6
    c = cov.set_index(["zone", "year"])
    for zi, zone in enumerate(w.zone.values):
        for yi, year in enumerate((2019, 2020)):
            want = pred[12 * yi : 12 * yi + 12, zi].min()
            assert c.loc[(zone, year), "land_km2"] == pytest.approx(land[zi], rel=1e-9)
            assert c.loc[(zone, year), "predicted_km2"] == pytest.approx(want, rel=1e-9, abs=1e-6)
    # the monthly table: each month's predicted area; the annual row is the worst month's
    mon = pd.read_csv(short_run / "budgets" / "coverage_monthly.csv", keep_default_na=False)
    mo = mon.set_index(["zone", "year", "month"])
    for zi, zone in enumerate(w.zone.values[:12]):
        for k in range(24):
            assert mo.loc[(zone, 2019 + k // 12, k % 12 + 1), "predicted_km2"] == pytest.approx(
                pred[k, zi], rel=1e-9, abs=1e-6
            )
    assert mon.groupby(["zone", "year"], sort=False).predicted_km2.min().to_numpy() == pytest.approx(
        cov.predicted_km2.to_numpy(), rel=1e-12
    )
    # the NaN'd NDVI: western Alaska is not predicted in summer 2020 (and is in 2019)
    cells = alaska_half(twin)
    lost = (wv[list(w.zone.values).index("alaska")] * cells.ravel()).sum() / 1e6
    ak = c.loc[("alaska", 2020)]
    assert ak.land_km2 - ak.predicted_km2 >= lost * (1 - 1e-9)
    assert ak.worst_month in ("2020-06", "2020-07", "2020-08")
    assert c.loc[("alaska", 2019), "predicted_km2"] - ak.predicted_km2 == pytest.approx(lost, rel=1e-6)
    # the budgets sum exactly the area left: coverage in budgets_annual.csv agrees
    ann = pd.read_csv(short_run / "budgets_annual.csv")
    a = ann[(ann.zone == "alaska") & (ann.flux == "gpp") & (ann.year == 2020)].iloc[0]
    assert a.coverage == pytest.approx(ak.predicted_km2 / ak.land_km2, rel=1e-6)


@pytest.mark.slow  # builds a twin
def test_summary_lists_the_zone_years_and_the_fire_years(short_run):
    md = (short_run / "summary.md").read_text()
    s = json.loads((short_run / "summary.json").read_text())
    cov = pd.read_csv(short_run / "budgets" / "coverage.csv", keep_default_na=False)
    bad = cov[cov.share_lost > 0.001]
    assert "## Coverage" in md and f"**{len(bad)} zone-year(s) lose more than 0.001 of their land**" in md
    r = bad.set_index("zone").loc["alaska"]
    assert f"| alaska | 2020 | {r.land_km2:,.0f} | {r.predicted_km2:,.0f} | {r.share_lost:.2%} |" in md
    assert s["coverage"]["full_coverage"] is False and len(s["coverage"]["above_warn"]) == len(bad)
    # fire starts in 2020: the fire and NEE + fire means are over 2020 only, and say so
    assert "Means over other years than 2019–2020: fire 2020–2020, nee_fire 2020–2020" in md
    period = pd.read_csv(short_run / "budgets" / "period.csv")
    for flux in ("fire", "nee_fire"):
        p = period[(period.flux == flux) & (period.season == "annual")]
        assert (p.first_year == 2020).all() and (p.n_years == 1).all()
    assert (period[(period.flux == "nee") & (period.season == "annual")].first_year == 2019).all()
    assert "fire 2020–2020" in (short_run / "budgets" / "table1.md").read_text()


@pytest.mark.slow  # builds a twin
def test_report_shows_the_coverage(short_run):
    from abzflux.report import RunData, coverage_items

    items = coverage_items(RunData(short_run))
    assert len(items) == 1 and "alaska" in items[0].table_html and "lose more than 0.001" in items[0].caption


@pytest.mark.slow  # builds a twin
def test_full_coverage_is_stated_in_the_summary_and_the_report(twin, tmp_path):
    from abzflux.context import Context
    from abzflux.report import RunData, coverage_items
    from abzflux.steps.summary import coverage_summary

    run = tmp_path / "run"
    (run / "budgets").mkdir(parents=True)
    cov = pd.DataFrame(
        {
            "zone": ["domain", "domain", "alaska", "alaska"],
            "year": [2019, 2020, 2019, 2020],
            "land_km2": [100.0, 100.0, 10.0, 10.0],
            "predicted_km2": [100.0, 100.0, 10.0, 10.0],
            "share_lost": [0.0, 0.0, 0.0, 0.0],
            "worst_month": ["2019-01", "2020-01", "2019-01", "2020-01"],
            "variables": ["", "", "", ""],
        }
    )
    cov.to_csv(run / "budgets" / "coverage.csv", index=False)
    ctx = Context(cfg=load_config(write_config(tmp_path, twin)), out=run)
    period = pd.DataFrame(
        {"zone": ["domain"] * 2, "flux": ["nee", "fire"], "first_year": [2019] * 2, "last_year": [2020] * 2}
    )
    lines, out = coverage_summary(ctx, period)
    assert lines == [
        "## Coverage",
        "",
        (
            "Full coverage: the upscaling predicted every zone's land in every month "
            "of 2019–2020 (budgets/coverage.csv)."
        ),
    ]
    assert out["full_coverage"] is True and out["max_share_lost"] == 0.0 and out["above_warn"] == []
    # a loss below budgets.coverage_warn is still full coverage, with the largest loss stated
    cov.loc[3, ["predicted_km2", "share_lost", "variables"]] = [9.995, 0.0005, "ndvi"]
    cov.to_csv(run / "budgets" / "coverage.csv", index=False)
    lines, out = coverage_summary(ctx, period)
    assert lines[2] == (
        "Full coverage: the upscaling predicted every zone's land in every month of 2019–2020 "
        "(largest loss 0.050%, below budgets.coverage_warn = 0.001) (budgets/coverage.csv)."
    )
    (run / "budgets_annual.csv").write_text("zone,flux,year,tg_c\ndomain,nee,2019,1\ndomain,nee,2020,1\n")
    items = coverage_items(RunData(run))
    assert items[0].caption.startswith("Full coverage") and "largest loss 0.050%" in items[0].caption
