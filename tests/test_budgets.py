"""Tests of zone budgets (abzflux.budgets) against sums computed by hand, cell by cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import budgets

# 3 x 4 grid, 1000 m spacing (cell area 1e6 m2 = 1 km2 when taken from the spacing).
X = np.array([0.0, 1000.0, 2000.0, 3000.0])
Y = np.array([2000.0, 1000.0, 0.0])  # descending, as in the domain grid
LAND = np.array(
    [
        [1.0, 0.5, 0.0, 0.25],
        [0.75, 1.0, 1.0, 0.0],
        [0.2, 0.0, 1.0, 0.6],
    ]
)  # sum 6.3
BIOME = np.array(
    [  # 1 boreal, 2 tundra; 0 outside (only where land is 0)
        [1, 1, 0, 2],
        [1, 2, 2, 0],
        [1, 0, 2, 2],
    ]
)
REGION = np.array(
    [  # 1 alaska, 2 canada, 3 europe, 4 siberia
        [1, 1, 0, 2],
        [3, 3, 4, 0],
        [4, 0, 4, 2],
    ]
)
PERMAFROST = np.array(
    [
        [0, 1, 0, 1],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
    ]
)
PERMAFROST_FRAC = np.array(
    [
        [0.0, 0.4, 0.9, 1.0],
        [0.1, 0.5, 0.75, 0.3],
        [0.0, 0.2, 1.0, 0.6],
    ]
)
CELL_AREA = np.array(
    [  # m2, deliberately different from the 1e6 m2 the spacing gives
        [1.0e6, 1.1e6, 1.2e6, 1.3e6],
        [0.9e6, 1.0e6, 1.5e6, 2.0e6],
        [0.8e6, 1.0e6, 1.25e6, 0.5e6],
    ]
)

ZONES = ("domain", "boreal", "tundra", "alaska", "canada", "europe", "siberia", "permafrost")
# zone_weights also gives biome/region, north_america and eurasia (tested in test_zonal.py)
N_ZONES = len(ZONES) + 8 + 2


def make_zones(cell_area: bool = False, permafrost=PERMAFROST, land=LAND) -> xr.Dataset:
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), np.asarray(land, dtype=np.float32)),
            "biome": (("y", "x"), BIOME.astype(np.int8), {"flag_values": [1, 2], "flag_meanings": "boreal tundra"}),
            "region": (
                ("y", "x"),
                REGION.astype(np.int8),
                {"flag_values": [1, 2, 3, 4], "flag_meanings": "alaska canada europe siberia"},
            ),
            "permafrost": (("y", "x"), np.asarray(permafrost, dtype=np.float32)),
        },
        coords={"y": Y, "x": X},
    )
    if cell_area:
        ds["cell_area"] = (("y", "x"), CELL_AREA)
    return ds


def member(zone: str, i: int, j: int, permafrost=PERMAFROST) -> float:
    """Membership of cell (i, j) in a zone, written out case by case."""
    if zone == "domain":
        return 1.0
    if zone == "boreal":
        return 1.0 if BIOME[i, j] == 1 else 0.0
    if zone == "tundra":
        return 1.0 if BIOME[i, j] == 2 else 0.0
    regions = {"alaska": 1, "canada": 2, "europe": 3, "siberia": 4}
    if zone in regions:
        return 1.0 if REGION[i, j] == regions[zone] else 0.0
    if zone == "permafrost":
        return float(permafrost[i, j])
    raise KeyError(zone)


def hand_budget(field2d, zone, cell_area: bool, permafrost=PERMAFROST):
    """(Tg C, coverage) of one month's 2-D flux field, by explicit loops over cells."""
    total_g = 0.0
    area_valid = 0.0
    area_all = 0.0
    for i in range(len(Y)):
        for j in range(len(X)):
            a = CELL_AREA[i, j] if cell_area else 1000.0 * 1000.0
            w = a * float(np.float32(LAND[i, j])) * member(zone, i, j, permafrost)
            area_all += w
            f = field2d[i, j]
            if np.isnan(f):
                continue
            total_g += f * w
            area_valid += w
    return total_g / 1e12, (area_valid / area_all if area_all > 0 else 0.0)


def make_fluxes(times, seed=0, nan_cells=()) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (len(times), len(Y), len(X))
    gpp = rng.uniform(0, 200, shape)
    reco = rng.uniform(0, 150, shape)
    nee = reco - gpp
    for t, i, j in nan_cells:
        gpp[t, i, j] = np.nan
        nee[t, i, j] = np.nan
    return xr.Dataset(
        {"gpp": (("time", "y", "x"), gpp), "reco": (("time", "y", "x"), reco), "nee": (("time", "y", "x"), nee)},
        coords={"time": times, "y": Y, "x": X},
    )


TIMES_2Y = pd.date_range("2001-01-01", periods=24, freq="MS")


def row(df, **kw):
    sel = df
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected one row for {kw}, got {len(sel)}"
    return sel.iloc[0]


# ------------------------------------------------------------------------------------ areas


def test_zone_areas_from_grid_spacing():
    """No cell_area: every cell is 1000 m x 1000 m = 1 km2, so areas are sums of land_fraction."""
    areas = budgets.zone_areas_km2(make_zones(cell_area=False))
    expected = {
        "domain": 6.3,
        "boreal": 1.0 + 0.5 + 0.75 + 0.2,  # 2.45
        "tundra": 0.25 + 1.0 + 1.0 + 1.0 + 0.6,  # 3.85
        "alaska": 1.0 + 0.5,
        "canada": 0.25 + 0.6,
        "europe": 0.75 + 1.0,
        "siberia": 1.0 + 0.2 + 1.0,
        "permafrost": 0.5 + 0.25 + 1.0 + 1.0 + 1.0 + 0.6,  # 4.35
    }
    assert set(ZONES) <= set(areas.index) and len(areas) == N_ZONES
    for zone, km2 in expected.items():
        assert areas[zone] == pytest.approx(km2, rel=1e-6), zone


def test_zone_areas_use_cell_area_when_present():
    areas = budgets.zone_areas_km2(make_zones(cell_area=True))
    # domain: sum(land * cell_area) / 1e6, written out
    domain = (
        1.0 * 1.0 + 0.5 * 1.1 + 0.25 * 1.3 + 0.75 * 0.9 + 1.0 * 1.0 + 1.0 * 1.5 + 0.2 * 0.8 + 1.0 * 1.25 + 0.6 * 0.5
    )
    assert areas["domain"] == pytest.approx(domain, rel=1e-6)
    assert areas["boreal"] == pytest.approx(1.0 * 1.0 + 0.5 * 1.1 + 0.75 * 0.9 + 0.2 * 0.8, rel=1e-6)
    assert areas["siberia"] == pytest.approx(1.0 * 1.5 + 0.2 * 0.8 + 1.0 * 1.25, rel=1e-6)
    assert areas["domain"] != pytest.approx(6.3, rel=1e-3)  # not the spacing-based area


def test_zone_areas_fractional_permafrost():
    areas = budgets.zone_areas_km2(make_zones(permafrost=PERMAFROST_FRAC))
    expected = sum(
        float(np.float32(LAND[i, j])) * float(np.float32(PERMAFROST_FRAC[i, j])) for i in range(3) for j in range(4)
    )
    # written out: 0.5*0.4 + 0.25*1 + 0.75*0.1 + 1*0.5 + 1*0.75 + 0.2*0 + 1*1 + 0.6*0.6
    assert expected == pytest.approx(0.2 + 0.25 + 0.075 + 0.5 + 0.75 + 1.0 + 0.36, rel=1e-6)
    assert areas["permafrost"] == pytest.approx(expected, rel=1e-6)


def test_zone_names_come_from_flag_attributes():
    """flag_meanings, not the default order, name the codes."""
    z = make_zones()
    z["biome"].attrs = {"flag_values": [1, 2], "flag_meanings": "tundra boreal"}
    areas = budgets.zone_areas_km2(z)
    assert areas["tundra"] == pytest.approx(2.45, rel=1e-6)  # code 1 cells
    assert areas["boreal"] == pytest.approx(3.85, rel=1e-6)


def test_default_zone_names_without_flag_attributes():
    z = make_zones()
    z["biome"].attrs = {}
    z["region"].attrs = {}
    areas = budgets.zone_areas_km2(z)
    assert areas["boreal"] == pytest.approx(2.45, rel=1e-6)
    assert areas["europe"] == pytest.approx(1.75, rel=1e-6)


# ---------------------------------------------------------------------------------- monthly


def test_constant_flux_literal_value():
    """100 g C m-2 every month on 6.3 km2 of land: 6.3e6 m2 * 100 g / 1e12 = 6.3e-4 Tg C."""
    times = pd.date_range("2001-01-01", periods=12, freq="MS")
    flux = xr.Dataset({"gpp": (("time", "y", "x"), np.full((12, 3, 4), 100.0))}, coords={"time": times, "y": Y, "x": X})
    mon = budgets.monthly_budgets(flux, make_zones())
    dom = mon[mon.zone == "domain"]
    assert len(dom) == 12
    np.testing.assert_allclose(dom.tg_c, 6.3e-4, rtol=1e-6)
    np.testing.assert_allclose(dom.coverage, 1.0)
    ann = budgets.annual_from_monthly(mon)
    assert row(ann, zone="domain", flux="gpp", year=2001).tg_c == pytest.approx(12 * 6.3e-4, rel=1e-6)


@pytest.mark.parametrize("cell_area", [False, True])
def test_monthly_budgets_match_hand_sums(cell_area):
    nan_cells = [(0, 0, 0), (3, 1, 2), (3, 2, 3), (7, 0, 2)]  # (0, 2) has land 0: no coverage loss
    fl = make_fluxes(TIMES_2Y, seed=1, nan_cells=nan_cells)
    mon = budgets.monthly_budgets(fl, make_zones(cell_area=cell_area))
    assert len(mon) == 3 * N_ZONES * 24
    assert set(mon.columns) >= {"zone", "time", "year", "month", "flux", "tg_c", "coverage"}
    for flux in ("gpp", "reco", "nee"):
        for t, ts in enumerate(TIMES_2Y):
            for zone in ZONES:
                tg, cov = hand_budget(fl[flux].values[t], zone, cell_area)
                r = row(mon, zone=zone, flux=flux, time=ts)
                assert r.year == ts.year and r.month == ts.month
                assert r.tg_c == pytest.approx(tg, rel=1e-9, abs=1e-15), (flux, ts, zone)
                assert r.coverage == pytest.approx(cov, rel=1e-9), (flux, ts, zone)


def test_nan_cell_contributes_nothing_and_reduces_coverage():
    times = pd.date_range("2001-01-01", periods=2, freq="MS")
    f = np.full((2, 3, 4), 10.0)
    f[1, 1, 2] = np.nan  # land 1.0, tundra, siberia, permafrost
    flux = xr.Dataset({"nee": (("time", "y", "x"), f)}, coords={"time": times, "y": Y, "x": X})
    mon = budgets.monthly_budgets(flux, make_zones())
    jan = mon[mon.month == 1].set_index("zone")
    feb = mon[mon.month == 2].set_index("zone")
    assert jan.loc["domain", "tg_c"] == pytest.approx(10 * 6.3e6 / 1e12, rel=1e-6)
    assert feb.loc["domain", "tg_c"] == pytest.approx(10 * 5.3e6 / 1e12, rel=1e-6)
    assert feb.loc["domain", "coverage"] == pytest.approx(5.3 / 6.3, rel=1e-6)
    assert feb.loc["tundra", "coverage"] == pytest.approx(2.85 / 3.85, rel=1e-6)
    assert feb.loc["siberia", "coverage"] == pytest.approx(1.2 / 2.2, rel=1e-6)
    assert feb.loc["permafrost", "coverage"] == pytest.approx(3.35 / 4.35, rel=1e-6)
    # zones without the NaN cell are untouched
    for zone in ("boreal", "alaska", "canada", "europe"):
        assert feb.loc[zone, "coverage"] == 1.0
        assert feb.loc[zone, "tg_c"] == pytest.approx(jan.loc[zone, "tg_c"], rel=1e-12)


def test_nan_on_non_land_cell_keeps_full_coverage():
    times = pd.date_range("2001-01-01", periods=1, freq="MS")
    f = np.full((1, 3, 4), 10.0)
    f[0, 0, 2] = np.nan  # land fraction 0
    flux = xr.Dataset({"nee": (("time", "y", "x"), f)}, coords={"time": times, "y": Y, "x": X})
    mon = budgets.monthly_budgets(flux, make_zones()).set_index("zone")
    assert mon.loc["domain", "coverage"] == 1.0
    assert mon.loc["domain", "tg_c"] == pytest.approx(6.3e-5, rel=1e-6)


def test_empty_zone_has_zero_budget_and_zero_coverage():
    z = make_zones()
    z["region"] = z["region"].where(z["region"] != 2, 1)  # no canada cells left
    flux = make_fluxes(pd.date_range("2001-01-01", periods=3, freq="MS"))
    mon = budgets.monthly_budgets(flux, z)
    can = mon[mon.zone == "canada"]
    assert len(can) == 9
    assert (can.tg_c == 0).all() and (can.coverage == 0).all()


def test_fractional_permafrost_weights():
    fl = make_fluxes(TIMES_2Y[:12], seed=2, nan_cells=[(5, 1, 1)])
    mon = budgets.monthly_budgets(fl, make_zones(cell_area=True, permafrost=PERMAFROST_FRAC))
    pf = mon[(mon.zone == "permafrost") & (mon.flux == "nee")].sort_values("time")
    for t in range(12):
        tg, cov = hand_budget(fl.nee.values[t], "permafrost", True, permafrost=PERMAFROST_FRAC)
        assert pf.tg_c.iloc[t] == pytest.approx(tg, rel=1e-6)
        assert pf.coverage.iloc[t] == pytest.approx(cov, rel=1e-6)
    assert pf.coverage.iloc[5] < 1.0


@pytest.mark.parametrize("cell_area", [False, True])
def test_biomes_and_regions_sum_to_domain(cell_area):
    fl = make_fluxes(TIMES_2Y, seed=3, nan_cells=[(2, 2, 0)])
    mon = budgets.monthly_budgets(fl, make_zones(cell_area=cell_area))
    wide = mon.pivot_table(index=["flux", "time"], columns="zone", values="tg_c")
    np.testing.assert_allclose(wide.boreal + wide.tundra, wide.domain, rtol=1e-12)
    np.testing.assert_allclose(wide.alaska + wide.canada + wide.europe + wide.siberia, wide.domain, rtol=1e-12)
    assert (wide.domain.abs() > 0).all()


def test_chunked_flux_gives_the_same_budgets():
    pytest.importorskip("dask")
    fl = make_fluxes(TIMES_2Y, seed=4, nan_cells=[(10, 0, 1)])
    ref = budgets.monthly_budgets(fl, make_zones())
    chunked = budgets.monthly_budgets(fl.chunk({"time": 5}), make_zones())
    key = ["flux", "zone", "time"]
    a = ref.sort_values(key).reset_index(drop=True)
    b = chunked.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)


# ----------------------------------------------------------------------------------- annual


def test_annual_is_sum_of_twelve_months():
    fl = make_fluxes(TIMES_2Y, seed=5, nan_cells=[(14, 1, 0)])
    z = make_zones(cell_area=True)
    ann = budgets.annual_from_monthly(budgets.monthly_budgets(fl, z))
    assert sorted(ann.year.unique()) == [2001, 2002]
    for flux in ("gpp", "nee"):
        for zone in ZONES:
            for k, year in enumerate((2001, 2002)):
                tg = 0.0
                covs = []
                for t in range(12 * k, 12 * k + 12):
                    m_tg, m_cov = hand_budget(fl[flux].values[t], zone, True)
                    tg += m_tg
                    covs.append(m_cov)
                r = row(ann, zone=zone, flux=flux, year=year)
                assert r.tg_c == pytest.approx(tg, rel=1e-9, abs=1e-15)
                assert r.coverage == pytest.approx(min(covs), rel=1e-9)  # worst month
    # month 14 (Mar 2002) lost cell (1, 0) for gpp: 2002 coverage below 1, 2001 complete
    assert row(ann, zone="domain", flux="gpp", year=2002).coverage == pytest.approx(1 - 0.75 * 0.9 / 6.76, rel=1e-6)
    assert row(ann, zone="domain", flux="gpp", year=2001).coverage == 1.0


@pytest.mark.parametrize(
    "start,periods,years",
    [
        ("2001-01-01", 27, [2001, 2002]),  # trailing Jan-Mar 2003 dropped
        ("2001-07-01", 30, [2002, 2003]),  # leading Jul-Dec 2001 dropped
        ("2001-02-01", 11, []),  # no complete year
    ],
)
def test_incomplete_years_are_dropped(start, periods, years):
    times = pd.date_range(start, periods=periods, freq="MS")
    ann = budgets.annual_from_monthly(budgets.monthly_budgets(make_fluxes(times), make_zones()))
    assert sorted(ann.year.unique().tolist()) == years
    assert "n_months" not in ann.columns


def test_annual_budgets_density_is_budget_over_zone_area():
    z = make_zones(cell_area=True)
    ann = budgets.annual_budgets(make_fluxes(TIMES_2Y, seed=6), z)
    areas_m2 = budgets.zone_areas_km2(z) * 1e6
    assert len(ann) == 3 * N_ZONES * 2
    for r in ann.itertuples():
        if areas_m2[r.zone] == 0:  # an empty biome/region combination: no density
            assert r.tg_c == 0 and not np.isfinite(r.density_g_m2)
            continue
        assert r.density_g_m2 == pytest.approx(r.tg_c * 1e12 / areas_m2[r.zone], rel=1e-9)
    # a literal case: constant 10 g C m-2 month-1 is 120 g C m-2 yr-1 in every zone
    times = pd.date_range("2001-01-01", periods=12, freq="MS")
    const = xr.Dataset({"gpp": (("time", "y", "x"), np.full((12, 3, 4), 10.0))}, coords={"time": times, "y": Y, "x": X})
    dens = budgets.annual_budgets(const, z)
    dens = dens[dens.zone.map(areas_m2) > 0]
    np.testing.assert_allclose(dens.density_g_m2, 120.0, rtol=1e-9)


def test_scaling_flux_scales_budgets():
    fl = make_fluxes(TIMES_2Y, seed=7, nan_cells=[(1, 2, 2)])
    z = make_zones(cell_area=True)
    a = budgets.annual_budgets(fl, z)
    b = budgets.annual_budgets(fl * 2.5, z)
    np.testing.assert_allclose(b.tg_c, 2.5 * a.tg_c, rtol=1e-12)
    np.testing.assert_allclose(b.density_g_m2, 2.5 * a.density_g_m2, rtol=1e-12)
    np.testing.assert_array_equal(b.coverage, a.coverage)


def test_annual_budgets_with_fire():
    fl = make_fluxes(TIMES_2Y, seed=8, nan_cells=[(4, 1, 1)])
    ftimes = pd.date_range("2002-01-01", periods=24, freq="MS")  # 2002-2003: overlap is 2002
    rng = np.random.default_rng(9)
    fe = rng.uniform(0, 5, (24, 3, 4))
    fe[0, 2, 3] = np.nan
    fire = xr.Dataset({"fire_emissions": (("time", "y", "x"), fe)}, coords={"time": ftimes, "y": Y, "x": X})
    z = make_zones(cell_area=True)
    ann = budgets.annual_budgets(fl, z, fire=fire)
    assert set(ann.flux.unique()) == {"gpp", "reco", "nee", "fire", "nee_fire"}
    assert sorted(ann[ann.flux == "fire"].year.unique()) == [2002]
    assert sorted(ann[ann.flux == "nee_fire"].year.unique()) == [2002]
    assert sorted(ann[ann.flux == "nee"].year.unique()) == [2001, 2002]
    for zone in ZONES:
        nee = row(ann, zone=zone, flux="nee", year=2002)
        fr = row(ann, zone=zone, flux="fire", year=2002)
        nf = row(ann, zone=zone, flux="nee_fire", year=2002)
        assert nf.tg_c == nee.tg_c + fr.tg_c  # exactly
        assert nf.coverage == min(nee.coverage, fr.coverage)
        # fire row = hand sum of the 12 months of 2002
        tg = sum(hand_budget(fe[t], zone, True)[0] for t in range(12))
        assert fr.tg_c == pytest.approx(tg, rel=1e-9)
        area = budgets.zone_areas_km2(z)[zone] * 1e6
        assert nf.density_g_m2 == pytest.approx(nf.tg_c * 1e12 / area, rel=1e-9)
    # the NaN fire cell (2, 3) is canada/tundra/permafrost: coverage there is below 1
    assert row(ann, zone="canada", flux="fire", year=2002).coverage == pytest.approx(
        1.0 - 0.6 * 0.5 / (0.25 * 1.3 + 0.6 * 0.5), rel=1e-6
    )
    # without fire, no fire rows
    plain = budgets.annual_budgets(fl, z)
    assert set(plain.flux.unique()) == {"gpp", "reco", "nee"}
    key = ["flux", "zone", "year"]
    pd.testing.assert_frame_equal(
        plain.sort_values(key).reset_index(drop=True),
        ann[ann.flux.isin(["gpp", "reco", "nee"])].sort_values(key).reset_index(drop=True),
    )
