"""Issue 23 item 4: one permafrost rule (``[budgets] permafrost``, ``permafrost_threshold``) for
the budgets, Table 1 (in situ too), source areas and the trend area shares; hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import budgets
from abzflux.config import BudgetSettings
from abzflux.trends import trend_area_shares

from test_budgets import CELL_AREA, LAND, PERMAFROST, PERMAFROST_FRAC, TIMES_2Y, hand_budget, make_fluxes, make_zones


def test_permafrost_weight_by_hand():
    p = np.array([0.0, 0.05, 0.5, 0.51, 1.0, np.nan])
    np.testing.assert_array_equal(budgets.permafrost_weight(p, "mask", 0.0), [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(budgets.permafrost_weight(p, "mask", 0.5), [0, 0, 0, 1, 1, 0])  # > 0.5
    np.testing.assert_array_equal(budgets.permafrost_weight(p, "weighted", 0.5), [0, 0.05, 0.5, 0.51, 1.0, 0])
    s = budgets.permafrost_weight(pd.Series(p, index=list("abcdef")), "mask", 0.0)
    assert isinstance(s, pd.Series) and list(s.index) == list("abcdef") and s.dtype == np.float64
    da = budgets.permafrost_weight(xr.DataArray(p.astype(np.float32), dims="x"), "weighted", 0.0)
    assert isinstance(da, xr.DataArray) and da.dtype == np.float64 and float(da[5]) == 0.0
    with pytest.raises(ValueError, match="one of \\['mask', 'weighted'\\]"):
        budgets.permafrost_weight(p, "probability", 0.0)


def test_the_default_is_the_paper_region_every_permafrost_class():
    b = BudgetSettings()
    assert (b.permafrost, b.permafrost_threshold) == ("mask", 0.0)
    # IPA extent classes as the prepare step writes them (isolated 0.05 ... continuous 0.95): all in
    ipa = np.array([0.05, 0.30, 0.70, 0.95, 0.0])
    np.testing.assert_array_equal(budgets.permafrost_weight(ipa, b.permafrost, b.permafrost_threshold), [1, 1, 1, 1, 0])


@pytest.mark.parametrize("rule,threshold", [("weighted", 0.0), ("mask", 0.0), ("mask", 0.5)])
def test_zone_budget_with_a_probability_map_by_hand(rule, threshold):
    z = budgets.permafrost_zones(make_zones(cell_area=True, permafrost=PERMAFROST_FRAC), rule, threshold)
    assert z["permafrost"].attrs["permafrost_rule"] == (
        "weighted" if rule == "weighted" else f"mask: value > {threshold:g}"
    )
    fl = make_fluxes(TIMES_2Y, seed=3, nan_cells=[(1, 1, 2)])
    mon = budgets.monthly_budgets(fl, z).set_index(["zone", "flux", "time"])
    frac32 = PERMAFROST_FRAC.astype(np.float32).astype(np.float64)
    member = frac32 if rule == "weighted" else (frac32 > threshold).astype(float)
    for t in (0, 1):
        for flux in ("gpp", "nee"):
            tg, cov = hand_budget(fl[flux].values[t], "permafrost", True, permafrost=member)
            r = mon.loc[("permafrost", flux, TIMES_2Y[t])]
            assert r.tg_c == pytest.approx(tg, rel=1e-9) and r.coverage == pytest.approx(cov, rel=1e-9)
    # the zone's land area, written out (km2; land x cell area x membership)
    area = budgets.zone_areas_m2(z)["permafrost"] / 1e6
    expected = {
        # 0.5*1.1*0.4 + 0.25*1.3*1 + 0.75*0.9*0.1 + 1*1*0.5 + 1*1.5*0.75 + 1*1.25*1 + 0.6*0.5*0.6
        ("weighted", 0.0): 0.22 + 0.325 + 0.0675 + 0.5 + 1.125 + 1.25 + 0.18,
        # every cell with a value > 0 (the 0.2 cell (2,1) has no land)
        ("mask", 0.0): 0.55 + 0.325 + 0.675 + 1.0 + 1.5 + 1.25 + 0.3,
        # > 0.5: (0,3) 1.0, (1,2) 0.75, (2,2) 1.0, (2,3) 0.6; (1,1) = 0.5 is out
        ("mask", 0.5): 0.325 + 1.5 + 1.25 + 0.3,
    }[(rule, threshold)]
    assert area == pytest.approx(expected, rel=1e-6)


def _sites(values: dict) -> pd.DataFrame:
    """One full year of constant monthly NEE per site: {site: (nee per month, permafrost value)}."""
    rows = [
        {"site_id": s, "year": 2005, "month": m, "nee": v, "biome": "tundra", "permafrost": p, "lat": 66.0}
        for s, (v, p) in values.items()
        for m in range(1, 13)
    ]
    return pd.DataFrame(rows).assign(gpp=np.nan, reco=np.nan)


PERIOD = pd.DataFrame(columns=["zone", "flux", "season", "tg_c", "density", "density_sd_years"])


def test_table1_in_situ_under_both_rules_by_hand():
    # annual NEE 12 * v: A 12 (p 1), B 0 (p 0), D 36 (p 0.2)
    sites = _sites({"A": (1.0, 1.0), "B": (0.0, 0.0), "D": (3.0, 0.2)})
    t = budgets.table1(sites, PERIOD, ("mask", 0.0)).set_index(["group", "flux", "season"])
    r = t.loc[("permafrost", "nee", "annual")]
    assert (r.insitu_sites, r.insitu_mean) == (2, 24.0) and r.insitu_sd == pytest.approx(np.std([12, 36], ddof=1))
    assert (
        t.loc[("non-permafrost", "nee", "annual")].insitu_mean == 0
        and t.loc[("non-permafrost", "nee", "annual")].insitu_sites == 1
    )
    t = budgets.table1(sites, PERIOD, ("mask", 0.5)).set_index(["group", "flux", "season"])
    assert t.loc[("permafrost", "nee", "annual")].insitu_mean == 12
    assert t.loc[("non-permafrost", "nee", "annual")].insitu_mean == 18  # (0 + 36) / 2
    t = budgets.table1(sites, PERIOD, ("weighted", 0.5)).set_index(["group", "flux", "season"])
    r = t.loc[("permafrost", "nee", "annual")]
    # weights A 1, D 0.2: mean (12 + 0.2 * 36) / 1.2 = 16; reliability-weighted variance
    # (1 * 4^2 + 0.2 * 20^2) / (1.2 - 1.04 / 1.2) = 96 / (1 / 3) = 288
    assert r.insitu_mean == pytest.approx(16.0, rel=1e-12) and r.insitu_sd == pytest.approx(np.sqrt(288), rel=1e-12)
    assert r.insitu_sites == 2
    r = t.loc[("non-permafrost", "nee", "annual")]  # weights B 1, D 0.8: 28.8 / 1.8 = 16
    assert r.insitu_mean == pytest.approx(16.0, rel=1e-12) and r.insitu_sites == 2
    assert t.loc[("all", "nee", "annual")].insitu_mean == 16  # (12 + 0 + 36) / 3: no weights


def _trend_ds(slope, p):
    dims = ("y", "x")
    return xr.Dataset(
        {
            "nee_annual_slope": (dims, slope),
            "nee_annual_p": (dims, p),
            "nee_trend_attribution": (dims, np.zeros(slope.shape, np.int8)),
        }
    )


SLOPE = np.array([[-1.0, -2.0, -1.0, 1.0], [-1.0, -1.0, 2.0, 1.0], [-1.0, 1.0, -3.0, -1.0]])
PVAL = np.array([[0.01, 0.01, 0.01, 0.01], [0.5, 0.01, 0.01, 0.01], [0.01, 0.01, 0.01, 0.2]])


def test_a_0_1_zonation_gives_identical_tables_under_both_rules():
    raw = make_zones(cell_area=True, permafrost=PERMAFROST)
    zm, zw = (budgets.permafrost_zones(raw, r, 0.5) for r in ("mask", "weighted"))
    xr.testing.assert_identical(budgets.zone_weights(zm), budgets.zone_weights(zw))
    fl = make_fluxes(TIMES_2Y, seed=4)
    pd.testing.assert_frame_equal(budgets.annual_budgets(fl, zm), budgets.annual_budgets(fl, zw))
    sites = _sites({"A": (1.0, 1.0), "B": (0.0, 0.0), "C": (2.0, 1.0), "D": (3.0, 0.0)})
    pd.testing.assert_frame_equal(
        budgets.table1(sites, PERIOD, ("mask", 0.5)), budgets.table1(sites, PERIOD, ("weighted", 0.5))
    )
    ds = _trend_ds(SLOPE, PVAL)
    pd.testing.assert_frame_equal(trend_area_shares(ds, zm), trend_area_shares(ds, zw))


def test_mask_rule_table1_trend_shares_and_budgets_agree_on_the_cells():
    rule = ("mask", 0.3)
    raw = make_zones(cell_area=True, permafrost=PERMAFROST_FRAC)
    z = budgets.permafrost_zones(raw, *rule)
    # the budgets' permafrost cells: a weight > 0 in the permafrost zone
    w = budgets.zone_weights(z).sel(zone="permafrost").values
    in_budget = w > 0
    land = LAND > 0
    # > 0.3 on land: (0,1) 0.4, (0,3) 1.0, (1,1) 0.5, (1,2) 0.75, (2,2) 1.0, (2,3) 0.6
    expected = np.zeros_like(land)
    for ij in ((0, 1), (0, 3), (1, 1), (1, 2), (2, 2), (2, 3)):
        expected[ij] = True
    np.testing.assert_array_equal(in_budget, expected)
    # Table 1: one site in every land cell, its cell's raw value in the site table (as the sites step writes it)
    cells = [(i, j) for i in range(3) for j in range(4) if land[i, j]]
    sites = _sites({f"S{i}{j}": (float(i * 4 + j), float(np.float32(PERMAFROST_FRAC[i, j]))) for i, j in cells})
    t = budgets.table1(sites, PERIOD, rule).set_index(["group", "flux", "season"])
    r = t.loc[("permafrost", "nee", "annual")]
    members = [(i, j) for i, j in cells if in_budget[i, j]]
    assert r.insitu_sites == len(members) == 6
    assert r.insitu_mean == pytest.approx(np.mean([12.0 * (i * 4 + j) for i, j in members]), rel=1e-12)
    # trend area shares: significant uptake (p < 0.05, slope < 0) over the budgets' permafrost cells
    shares = trend_area_shares(_trend_ds(SLOPE, PVAL), z).set_index("quantity").area_share
    a = LAND * CELL_AREA
    up = (PVAL < 0.05) & (SLOPE < 0)
    assert shares["permafrost_nee_increasing_uptake"] == pytest.approx(
        a[in_budget & up].sum() / a[in_budget].sum(), rel=1e-6
    )
    # written out: uptake cells among them (0,1) 0.55, (1,1) 1.0, (2,2) 1.25 of 0.55+0.325+1+1.5+1.25+0.3
    assert shares["permafrost_nee_increasing_uptake"] == pytest.approx(2.8e6 / 4.925e6, rel=1e-6)


def test_weighted_rule_trend_shares_weigh_cells_as_the_budget_does():
    z = budgets.permafrost_zones(make_zones(cell_area=True, permafrost=PERMAFROST_FRAC), "weighted", 0.0)
    shares = trend_area_shares(_trend_ds(SLOPE, PVAL), z).set_index("quantity").area_share
    w = budgets.zone_weights(z).sel(zone="permafrost").values
    up = (PVAL < 0.05) & (SLOPE < 0)
    assert shares["permafrost_nee_increasing_uptake"] == pytest.approx(w[up].sum() / w.sum(), rel=1e-6)


def test_every_stage_reading_the_run_zones_declares_the_rule():
    """A stage that calls Context.zones() (the ruled zones) or passes the rule on declares both
    keys, so a changed rule reruns it; sites reads the raw zones and does not (no forest rerun)."""
    import inspect

    from abzflux.steps import STEPS
    from abzflux.steps.budgets import PERMAFROST_KEYS

    for st in STEPS:
        src = inspect.getsource(inspect.getmodule(st.run))
        uses = "ctx.zones()" in src or "cfg.budgets.permafrost" in src or "bs.permafrost" in src
        declared = set(PERMAFROST_KEYS) <= set(st.config_keys)
        assert uses == declared, (st.name, uses, declared)
    names = {st.name for st in STEPS if set(PERMAFROST_KEYS) <= set(st.config_keys)}
    assert names == {"upscale", "network", "budgets", "trends", "fire", "compare", "summary"}
