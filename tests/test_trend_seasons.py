"""Seasonal and monthly budget trends, driver trends and per-pixel fire trends (issue 23 item 5),
on hand-built series whose trends are known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import budgets as B
from abzflux import trends as T

YEARS = np.arange(2001, 2021)
K = np.arange(YEARS.size, dtype=float)  # 0..19
ALT = np.where(np.arange(YEARS.size) % 2 == 0, 1.0, -1.0)  # a zero-trend wiggle (exact Sen slope 0)
OPTIONS = [("zhang", False), ("zhang", True), ("yuepilon", False), ("yuepilon", True)]


def _monthly_budget() -> pd.DataFrame:
    """Domain NEE (Tg C month-1): each JJA month falls by 1.5 a year (the sink grows in summer),
    every other month only wiggles (+-0.3 around 4): JJA trend -4.5, non-summer 0, annual -4.5."""
    rows = []
    for k, y in enumerate(YEARS):
        for m in range(1, 13):
            v = -10.0 - 1.5 * k + 0.2 * ALT[k] if m in (6, 7, 8) else 4.0 + 0.3 * ALT[k]
            rows.append({"zone": "domain", "flux": "nee", "year": int(y), "month": m, "tg_c": v})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("method,preserve", OPTIONS)
def test_seasonal_budget_trends_hand_case(method, preserve):
    mon = _monthly_budget()
    seas = B.seasonal_from_monthly(mon)
    t = T.seasonal_budget_trends(seas, mon, method, preserve).set_index("season")
    assert list(t.index) == [*T.BUDGET_SEASONS, *T.MONTHS]  # seasons in order, then the months
    assert t.loc["jja", "slope"] == pytest.approx(-4.5, abs=1e-12)  # 3 months x -1.5
    assert t.loc["nonsummer", "slope"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["nonsummer_crossyear", "slope"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["nonsummer_crossyear", "first_year"] == 2002 and t.loc["nonsummer_crossyear", "n_years"] == 19
    # annual = JJA + non-summer, and the annual row is budget_trends' row
    assert t.loc["annual", "slope"] == pytest.approx(t.loc["jja", "slope"] + t.loc["nonsummer", "slope"], abs=1e-12)
    ann = B.annual_from_monthly(mon.assign(coverage=1.0))
    ref = T.budget_trends(ann, method, preserve).iloc[0]
    for c in ("slope", "p", "tau", "lbound", "ubound"):
        assert t.loc["annual", c] == pytest.approx(ref[c], rel=1e-12, nan_ok=True)
    for m in ("m06", "m07", "m08"):
        assert t.loc[m, "slope"] == pytest.approx(-1.5, abs=1e-12) and t.loc[m, "significant"]
    for m in ("m01", "m05", "m09", "m12"):
        assert t.loc[m, "slope"] == pytest.approx(0.0, abs=1e-12) and not t.loc[m, "significant"]
    assert t.loc["jja", "p"] < 1e-3 and t.loc["nonsummer", "p"] > 0.5
    assert (t.units == "Tg C yr-2").all()


@pytest.mark.parametrize("method,preserve", OPTIONS)
def test_series_trends_equal_trend_series_per_group(method, preserve):
    """The grouped, vectorised fits are trend_series' fits, series by series (gaps, other years)."""
    rng = np.random.default_rng(3)
    rows = []
    for g, years in enumerate((YEARS, YEARS[1:], np.delete(YEARS, [4, 9]))):
        for z in ("a", "b"):
            v = rng.normal(size=years.size).cumsum() + 0.3 * (years - years[0])
            rows += [{"zone": z, "g": g, "year": int(y), "value": float(x)} for y, x in zip(years, v)]
    long = pd.DataFrame(rows)
    got = T.series_trends(long, ["zone", "g"], method, preserve)
    assert len(got) == 6
    for _, r in got.iterrows():
        s = long[(long.zone == r.zone) & (long.g == r.g)]
        ref = T.trend_series(s.value, s.year, method, preserve_range_for_sig_test=preserve)
        for c in ("first_year", "last_year", "n_years", "slope", "p", "tau", "lbound", "ubound", "significant"):
            assert r[c] == pytest.approx(ref[c], rel=1e-12, nan_ok=True), c


def test_series_trends_refuses_duplicate_years():
    long = pd.DataFrame({"zone": ["a"] * 5, "year": [1, 2, 2, 3, 4], "value": [1.0, 2, 3, 4, 5]})
    with pytest.raises(ValueError, match="more than one value"):
        T.series_trends(long, ["zone"])


# ------------------------------------------------------------------------------------ drivers
def _zones() -> xr.Dataset:
    """3 x 4 cells: boreal (top two rows) and tundra (bottom row), unequal land and cell areas."""
    y, x = np.array([3.0, 2.0, 1.0]), np.arange(4.0)
    lf = np.array([[1.0, 0.5, 1.0, 0.0], [1.0, 1.0, 0.25, 1.0], [1.0, 0.5, 1.0, 1.0]])
    area = np.array([[1.0, 2.0, 1.0, 1.0], [3.0, 1.0, 1.0, 2.0], [1.0, 1.0, 2.0, 4.0]]) * 1e6
    biome = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]], dtype=float)
    region = np.array([[1, 1, 3, 3], [1, 1, 4, 4], [2, 2, 4, 4]], dtype=float)
    return xr.Dataset(
        {
            "land_fraction": (("y", "x"), lf),
            "cell_area": (("y", "x"), area),
            "biome": (("y", "x"), biome),
            "region": (("y", "x"), region),
            "permafrost": (("y", "x"), np.zeros((3, 4))),
        },
        coords={"y": y, "x": x},
    )


def _drivers(zones: xr.Dataset) -> tuple[xr.Dataset, np.ndarray]:
    """``lst`` warms by a cell-specific slope in every month (plus a seasonal cycle); ``ndvi`` rises
    by 0.01 a year in JJA only. One tundra cell is missing (no value: outside the mean)."""
    time = pd.date_range("2001-01-01", periods=12 * YEARS.size, freq="MS")
    kk = np.repeat(K, 12)[:, None, None]
    alt = np.repeat(ALT, 12)[:, None, None]
    month = time.month.to_numpy()[:, None, None]
    slope = np.array([[0.1, 0.2, 0.3, 0.4], [0.05, 0.15, 0.25, 0.35], [0.5, 0.6, 0.7, 0.8]])
    lst = 2.0 + slope[None] * kk + 10.0 * np.sin(month / 12 * 2 * np.pi) + 0.01 * alt + 0 * np.arange(4)
    lst[:, 2, 3] = np.nan
    ndvi = 0.3 + 0.01 * kk * np.isin(month, [6, 7, 8]) + 0.001 * alt + np.zeros((1, 3, 4))
    ds = xr.Dataset(
        {"lst": (("time", "y", "x"), lst, {"units": "degC"}), "ndvi": (("time", "y", "x"), ndvi, {"units": "1"})},
        coords={"time": time, "y": zones.y, "x": zones.x},
    )
    return ds, slope


@pytest.mark.parametrize("method,preserve", [("zhang", False), ("yuepilon", True)])
def test_driver_trends_zone_means_hand_case(method, preserve):
    zones = _zones()
    drv, slope = _drivers(zones)
    mon = B.monthly_budgets(drv, zones)
    means = T.driver_zone_means(mon, B.zone_areas_m2(zones), B.TG)
    w = (zones.land_fraction * zones.cell_area).values
    valid = np.isfinite(drv.lst.isel(time=0).values)
    # the land-area-weighted mean over the cells with a value, by hand
    m0 = means[(means.zone == "tundra") & (means.driver == "lst") & (means.year == 2001) & (means.month == 1)]
    wt = np.where(valid & (zones.biome.values == 2), w, 0.0)
    assert float(m0.value.iloc[0]) == pytest.approx(float(np.nansum(wt * drv.lst.isel(time=0).values) / wt.sum()))
    t = T.driver_trends(T.driver_season_means(means), method, preserve, {"lst": "degC", "ndvi": "1"})
    t = t.set_index(["zone", "driver", "season"])
    for zone, sel in (("domain", np.ones((3, 4), bool)), ("boreal", zones.biome.values == 1)):
        ws = np.where(valid & sel, w, 0.0)
        expect = float((ws * slope).sum() / ws.sum())
        for season in ("annual", "jja", "nonsummer", "mam", "son", "djf", "m01", "m07"):
            assert t.loc[(zone, "lst", season), "slope"] == pytest.approx(expect, rel=1e-9), (zone, season)
    assert t.loc[("domain", "lst", "djf"), "first_year"] == 2002  # December from the previous year
    assert t.loc[("domain", "ndvi", "jja"), "slope"] == pytest.approx(0.01, rel=1e-9)
    assert t.loc[("domain", "ndvi", "annual"), "slope"] == pytest.approx(0.01 * 3 / 12, rel=1e-9)
    for season in ("nonsummer", "mam", "son", "djf", "m05", "m09"):
        assert t.loc[("domain", "ndvi", season), "slope"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc[("domain", "ndvi", "m07"), "significant"] and not t.loc[("domain", "ndvi", "m09"), "significant"]
    assert t.loc[("domain", "lst", "annual"), "units"] == "degC yr-1"
    # a zone with no land has no mean and no trend
    assert means[means.zone == "tundra/europe"].value.isna().all()
    assert "tundra/europe" not in set(t.index.get_level_values("zone"))


def test_period_series_mean_nonsummer_is_the_nine_month_mean():
    zones = _zones()
    drv, _ = _drivers(zones)
    per = T.period_series(drv.ndvi, how="mean")
    v = drv.ndvi.isel(y=0, x=0).values.reshape(YEARS.size, 12)
    assert np.allclose(per["nonsummer"].isel(y=0, x=0).values, v[:, [0, 1, 2, 3, 4, 8, 9, 10, 11]].mean(1))
    assert np.allclose(per["jja"].isel(y=0, x=0).values, v[:, 5:8].mean(1))


# ---------------------------------------------------------------------------------------- fire
def _fire_case():
    """2 x 2 cells over 2001-2020: (0,0) burns more every year (annual fire 2k + 1 + alt, in
    July), (0,1) never burns, (1,0) burns in two years only, (1,1) is ocean (no NEE). Annual
    NEE falls by 1 a year everywhere (-k + 0.5 alt, all in July)."""
    time = pd.date_range("2001-01-01", periods=12 * YEARS.size, freq="MS")
    july = np.asarray(time.month == 7)
    kk = np.repeat(K, 12)
    alt = np.repeat(ALT, 12)
    nee = np.zeros((time.size, 2, 2))
    nee[july] = (-kk + 0.5 * alt)[july][:, None, None]
    nee[:, 1, 1] = np.nan
    fire = np.zeros((time.size, 2, 2))
    fire[july, 0, 0] = (2 * kk + 1 + alt)[july]
    fire[july & (np.repeat(YEARS, 12) == 2005), 1, 0] = 3.0
    fire[july & (np.repeat(YEARS, 12) == 2012), 1, 0] = 4.0
    fire[july, 1, 1] = 5.0  # fire input over the sea: no NEE there, no trend either
    coords = {"time": time, "y": [1.0, 0.0], "x": [0.0, 1.0]}
    return (
        xr.DataArray(nee, dims=("time", "y", "x"), coords=coords),
        xr.Dataset({"fire_emissions": (("time", "y", "x"), fire)}, coords=coords),
    )


@pytest.mark.parametrize("method,preserve", OPTIONS)
def test_fire_trend_maps_hand_case(method, preserve):
    nee, fire = _fire_case()
    # the fire years (2002-2020, as fire.first_year = 2002): NEE's 2001 is not used
    maps = T.fire_trend_maps(nee, fire.sel(time=slice("2002-01-01", None)), method, preserve)
    f, nf = maps["fire_annual_slope"].values, maps["nee_fire_annual_slope"].values
    assert f[0, 0] == pytest.approx(2.0, abs=1e-12)
    assert nf[0, 0] == pytest.approx(1.0, abs=1e-12)  # -1 (NEE) + 2 (fire)
    assert np.isnan(f[0, 1]) and nf[0, 1] == pytest.approx(-1.0, abs=1e-12)  # no fire: NEE's trend
    assert np.isnan(f[1, 0])  # fire in two years: no trend (zyp: fewer than 3 non-zero values)
    assert np.isnan(f[1, 1]) and np.isnan(nf[1, 1])  # no NEE: no cell
    y = 2 * K[1:] + 1 + ALT[1:]
    ref = T.zyp_trend(y, method=method, preserve_range_for_sig_test=preserve)
    assert maps["fire_annual_p"].values[0, 0] == pytest.approx(ref["sig"], rel=1e-12)
    assert maps["fire_annual_tau"].values[0, 0] == pytest.approx(ref["tau"], rel=1e-12)
    assert maps["fire_annual_slope"].attrs["first_year"] == 2002
    zones = xr.Dataset(
        {"land_fraction": (("y", "x"), np.ones((2, 2))), "cell_area": (("y", "x"), np.ones((2, 2)))},
        coords={"y": [1.0, 0.0], "x": [0.0, 1.0]},
    )
    ds = xr.Dataset(maps).assign(nee_annual_slope=maps["nee_fire_annual_slope"] * 0 + 1)
    sh = T.fire_area_shares(ds, zones).set_index("quantity").area_share
    assert sh["fire_increasing"] == pytest.approx(1 / 3)  # 1 of the 3 land cells
    assert sh["fire_decreasing"] == 0.0


def test_fire_trend_maps_need_shared_years():
    nee, fire = _fire_case()
    with pytest.raises(ValueError, match="no complete year"):
        T.fire_trend_maps(nee.sel(time=slice(None, "2010-12-01")), fire.sel(time=slice("2011-01-01", None)))


# ------------------------------------------------------------------------------- the study run
def test_report_trend_tables_come_from_the_run(study_run):
    """The report's season, month and driver trend tables and the fire trend map show the run's
    numbers (slope, * where p < 0.05)."""
    from abzflux import report as R

    run = study_run[0]
    rd = R.RunData(run)
    items = {i.id: i for i in R.trend_season_tables(rd)}
    assert set(items) == {"budget_trends_seasons", "budget_trends_months", "driver_trends"}
    st = pd.read_csv(run / "trends" / "seasonal_budget_trends.csv").set_index(["zone", "flux", "season"])
    for season in ("annual", "jja", "nonsummer"):
        r = st.loc[("domain", "nee", season)]
        assert f">{r.slope:.3g}{'*' if r.p < 0.05 else ''}<" in items["budget_trends_seasons"].table_html
    r = st.loc[("tundra", "gpp", "m07")]
    assert f">{r.slope:.3g}{'*' if r.p < 0.05 else ''}<" in items["budget_trends_months"].table_html
    dt = pd.read_csv(run / "trends" / "driver_trends.csv").set_index(["zone", "driver", "season"])
    r = dt.loc[("boreal", "lst", "son")]
    assert f">{r.slope:.3g}{'*' if r.p < 0.05 else ''}<" in items["driver_trends"].table_html
    (fire,) = R.fig_fire_trend(rd)
    R.plt.close(fire.fig)
    maps = xr.open_zarr(run / "trends" / "trend_maps.zarr", consolidated=False)
    assert f"{int(np.isfinite(maps.fire_annual_slope.values).sum())} cells have one" in fire.caption
