"""The twin on a given (real) site network: cells, months, methods, disturbances, exclusions,
determinism, the synthetic network unchanged, and the CLI (docs/twin.md, "Sites on a real
network")."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import CRS, Transformer
from typer.testing import CliRunner

from abzflux import twin as twin_mod
from abzflux.cli import app
from abzflux.domain import CRS_EPSG, load_domain
from abzflux.errors import InputError
from abzflux.formats import read_site_table, write_crs
from abzflux.twin import TwinSpec, fire_legacy, make_twin
from abzflux.twin_network import (
    NO_DOMAIN_LAND,
    OUTSIDE_GRID,
    check_network,
    place_network,
    year_shift,
)

SPEC = TwinSpec(resolution_km=200, first_year=2019, last_year=2020, seed=7, n_sites=30, n_site_months=400)
# sha256 of sites.csv of make_twin(SPEC) at main 430ee01, before networks existed: the synthetic
# network must not change.
SYNTHETIC_SITES_SHA256 = "6e103734f227ba99fb2bb90a138661561c71423a057b3497d35664c7f22ff727"
TO_LL = Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)


@pytest.fixture(scope="module")
def zones():
    return write_crs(load_domain(SPEC.resolution_km), CRS.from_epsg(CRS_EPSG))


def cells(zones):
    """Two horizontally adjacent domain-land cells, one cell without land inside the grid."""
    lf = np.nan_to_num(zones.land_fraction.values)
    iy, ix = np.nonzero((lf[:, :-1] > 0.5) & (lf[:, 1:] > 0.5))
    a = (int(iy[len(iy) // 2]), int(ix[len(ix) // 2]))
    wy, wx = np.nonzero(lf == 0)
    return a, (a[0], a[1] + 1), (int(wy[0]), int(wx[0]))


def lonlat(zones, cell, dx=0.0, dy=0.0):
    """(lat, lon) of a point in a cell, offset by (dx, dy) cell widths from its centre."""
    res = float(zones.x[1] - zones.x[0])
    lon, lat = TO_LL.transform(float(zones.x[cell[1]]) + dx * res, float(zones.y[cell[0]]) + dy * res)
    return round(lat, 6), round(lon, 6)


def rows(site, lat, lon, yms, method="EC", disturbance="", ysf=np.nan, fluxes=("gpp", "reco", "nee")):
    return [
        dict(
            site_id=site,
            lat=lat,
            lon=lon,
            year=y,
            month=m,
            method=method,
            disturbance=disturbance,
            years_since_fire=ysf if np.isscalar(ysf) else ysf[i],
            **{f: v if f in fluxes else np.nan for f, v in (("gpp", 100.0), ("reco", 80.0), ("nee", -20.0))},
        )
        for i, (y, m) in enumerate(yms)
    ]


# --------------------------------------------------------------------------- the rules, pure
def test_year_shift_rule_by_hand():
    assert year_shift(2005, 2008, 2001, 2020) == 0  # inside: real years
    assert year_shift(1995, 1998, 2001, 2020) == 6  # before: moved later, just inside
    assert year_shift(2019, 2023, 2001, 2020) == -3  # after: moved earlier
    assert year_shift(2001, 2020, 2001, 2020) == 0
    assert year_shift(1995, 2022, 2011, 2020) == 0  # longer, covers the period: truncated only
    assert year_shift(2012, 2030, 2011, 2020) == -1  # longer, starts late: moved to start at 2011
    assert year_shift(1990, 2005, 2011, 2020) == 15  # longer, ends early: moved to end at 2020


def test_sites_land_on_their_cells_and_exclusions_are_reported(zones):
    a, b, water = cells(zones)
    t = pd.DataFrame(
        rows("A", *lonlat(zones, a, 0.3, -0.2), [(2019, 7)])
        + rows("B", *lonlat(zones, b, -0.45, 0.45), [(2019, 7), (2019, 8)])
        + rows("W", *lonlat(zones, water), [(2019, 7)] * 1)
        + rows("S", 20.0, 0.0, [(2019, 6), (2019, 7), (2019, 8)])
    )
    p = place_network(check_network(t), zones, 2019, 2020, file="net.csv")
    got = p.sites.set_index("site_id")
    assert (got.loc["A", "iy"], got.loc["A", "ix"]) == a
    assert (got.loc["B", "iy"], got.loc["B", "ix"]) == b
    assert list(got.index) == ["A", "B"] and list(p.sites.site) == [0, 1]
    r = p.report
    assert (r["sites_in_table"], r["sites_placed"], r["sites_excluded"]) == (4, 2, 2)
    assert (r["sites_outside_grid"], r["sites_without_domain_land"], r["site_months_of_excluded_sites"]) == (1, 1, 4)
    assert {(e["site_id"], e["reason"], e["site_months"]) for e in r["excluded"]} == {
        ("S", OUTSIDE_GRID, 3),
        ("W", NO_DOMAIN_LAND, 1),
    }
    assert r["site_months_placed"] == 3 and r["source"] == "net.csv"


def test_months_methods_and_disturbances_follow_the_rule(zones):
    a, _, _ = cells(zones)
    lat, lon = lonlat(zones, a)
    t = pd.DataFrame(
        rows("IN", lat, lon, [(2012, 1), (2015, 7)], method="chamber", disturbance="harvest")
        + rows("EARLY", lat, lon, [(2001, 5), (2001, 9), (2003, 6)], fluxes=("nee",))
        + rows("LATE", lat, lon, [(2021, 12), (2023, 2)], method=np.nan, disturbance="drainage")
        + rows("LONG", lat, lon, [(2008, 6), (2012, 6), (2024, 6)], disturbance="fire", ysf=[1.0, 5.0, 17.0])
        + rows("EMPTY", lat, lon, [(2015, 3)], fluxes=())
        + rows("FIREX", lat, lon, [(2016, 6)], disturbance="fire")
    )
    p = place_network(check_network(t), zones, 2011, 2020)
    rec = p.records.merge(p.sites[["site", "site_id", "shift_years"]], on="site")
    by = {s: g.reset_index(drop=True) for s, g in rec.groupby("site_id")}
    assert list(by["IN"][["year", "month"]].itertuples(index=False, name=None)) == [(2012, 1), (2015, 7)]
    assert list(by["IN"].method) == ["chamber"] * 2 and list(by["IN"].disturbance) == ["harvest"] * 2
    # EARLY: 2001-2003 moved 10 years later; months and the gap kept; NEE only
    assert list(by["EARLY"][["year", "month"]].itertuples(index=False, name=None)) == [(2011, 5), (2011, 9), (2013, 6)]
    assert by["EARLY"].has_nee.all() and not by["EARLY"].has_gpp.any() and not by["EARLY"].has_reco.any()
    assert list(by["LATE"][["year", "month"]].itertuples(index=False, name=None)) == [(2018, 12), (2020, 2)]
    assert by["LATE"].method.isna().all() and list(by["LATE"].disturbance) == ["drainage"] * 2
    # LONG (2008-2024, longer than 2011-2020): kept in place, 2008 and 2024 truncated; fire age kept
    assert list(by["LONG"][["year", "month"]].itertuples(index=False, name=None)) == [(2012, 6)]
    assert by["LONG"].years_since_fire[0] == 5.0
    assert by["LONG"].fire_time[0] == pytest.approx(2012 + 5.5 / 12 - 5.0)
    assert np.isnan(by["FIREX"].fire_time[0])  # fire label without years since fire: no legacy
    assert "EMPTY" not in by
    sh = p.sites.set_index("site_id").shift_years
    assert (sh["IN"], sh["EARLY"], sh["LATE"], sh["LONG"]) == (0, 10, -3, 0)
    r = p.report
    assert (r["site_months_truncated"], r["site_months_without_flux"], r["sites_without_months"]) == (2, 1, 1)
    assert (r["sites_shifted"], r["fire_rows_without_years_since_fire"], r["sites_placed"]) == (2, 1, 5)


def test_bad_network_tables_are_named():
    t = pd.DataFrame(rows("A", 65.0, -150.0, [(2019, 7)]))
    with pytest.raises(InputError, match=r"net.csv: \[lat\] missing required column"):
        check_network(t.drop(columns="lat"), "net.csv")
    with pytest.raises(InputError, match=r"\[site_id, year, month\] 2 rows share a site-month at row 1"):
        check_network(pd.concat([t, t]), "net.csv")
    moved = pd.concat([t, t.assign(month=8, lat=66.0)])
    with pytest.raises(InputError, match=r"\[lat, lon\] 1 site\(s\) have several locations at site A"):
        check_network(moved, "net.csv")


# --------------------------------------------------------------------------- the twin
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "twin"
    make_twin(out, SPEC)
    return out


def network_table(zones):
    a, b, water = cells(zones)
    la, lo = lonlat(zones, a, 0.2, 0.2)
    summer = [(2019, m) for m in range(5, 10)]
    return pd.DataFrame(
        rows("A", la, lo, [(2019, m) for m in range(1, 13)] + [(2020, 1)])
        + rows("B", *lonlat(zones, b), summer, method="chamber")
        + rows("F3", la, lo, summer, disturbance="fire", ysf=[3.0 + k / 12 for k in range(5)])
        + rows("F20", la, lo, summer, disturbance="fire", ysf=[20.0 + k / 12 for k in range(5)])
        + rows("FX", la, lo, summer, disturbance="fire")
        + rows("H", la, lo, summer, disturbance="harvest")
        + rows("T", la, lo, summer, disturbance="thermokarst")
        + rows("OLD", la, lo, [(2009, 6), (2010, 6)], fluxes=("nee",))
        + rows("W", *lonlat(zones, water), summer)
    )


@pytest.fixture(scope="module")
def exact(tmp_path_factory, zones):
    """A network twin with the observation noise and site effects switched off: observed
    fluxes are the truth at the site (+0.2 for GPP and Reco)."""
    out = tmp_path_factory.mktemp("net") / "twin"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(twin_mod, "SITE_EFFECT_SD", (0.0, 0.0))
        mp.setattr(twin_mod, "MEASUREMENT_SD", 0.0)
        mp.setattr(twin_mod, "NEE_NOISE_SD", 0.0)
        summary = make_twin(out, SPEC, network=network_table(zones))
    return out, summary


@pytest.mark.slow  # builds twins
def test_synthetic_network_is_unchanged(synthetic):
    assert hashlib.sha256((synthetic / "sites.csv").read_bytes()).hexdigest() == SYNTHETIC_SITES_SHA256
    assert "network" not in json.loads((synthetic / "twin.json").read_text())


@pytest.mark.slow  # builds twins
def test_network_twin_shares_the_synthetic_world(exact, synthetic):
    out, _ = exact
    for f in ("truth.nc", "zones.nc", "ref_inversion.nc"):
        xr.testing.assert_identical(xr.open_dataset(out / f), xr.open_dataset(synthetic / f))
    xr.testing.assert_identical(
        xr.open_zarr(out / "predictors.zarr", consolidated=False),
        xr.open_zarr(synthetic / "predictors.zarr", consolidated=False),
    )
    assert (out / "truth_budgets.csv").read_bytes() == (synthetic / "truth_budgets.csv").read_bytes()


@pytest.mark.slow  # builds twins
def test_network_sites_observe_the_truth_of_their_cell(exact, zones):
    out, summary = exact
    a, b, _ = cells(zones)
    s = read_site_table(out / "sites.csv")  # the contract
    truth = xr.open_dataset(out / "truth.nc")
    A = s[s.site_id == "A"].set_index(["year", "month"])
    assert len(A) == 13
    for (y, m), r in A.iterrows():
        t = truth.sel(time=f"{y}-{m:02d}-01")
        assert r.nee == pytest.approx(float(t.nee[a]), abs=2e-3)
        assert r.gpp == pytest.approx(float(t.gpp[a]) + 0.2, abs=2e-3)
        assert abs(float(t.nee[a]) - float(t.nee[b])) > 0.05 or m in (1, 2, 12)  # the neighbour differs
    B = s[s.site_id == "B"].set_index(["year", "month"])
    for (y, m), r in B.iterrows():
        assert r.nee == pytest.approx(float(truth.nee.sel(time=f"{y}-{m:02d}-01")[b]), abs=2e-3)
    assert set(B.method) == {"chamber"} and set(A.method) == {"EC"}
    # NEE-only site moved from 2009-2010 to 2019-2020, June kept, GPP/Reco absent as in the network
    old = s[s.site_id == "OLD"]
    assert list(zip(old.year, old.month)) == [(2019, 6), (2020, 6)]
    assert old.nee.notna().all() and old.gpp.isna().all() and old.reco.isna().all()
    assert "W" not in set(s.site_id)
    net = summary["network"]
    assert net == json.loads((out / "twin.json").read_text())["network"]
    assert [e["site_id"] for e in net["excluded"]] == ["W"] and net["sites_placed"] == 8
    assert summary["sites"] == 8 and summary["fire_sites"] == 3


@pytest.mark.slow  # builds twins
def test_disturbance_labels_carry_the_twins_effects(exact):
    out, _ = exact
    s = read_site_table(out / "sites.csv").set_index(["site_id", "year", "month"])
    for m in range(5, 10):
        base = s.loc[("A", 2019, m)]
        h, t = s.loc[("H", 2019, m)], s.loc[("T", 2019, m)]
        assert h.gpp - 0.2 == pytest.approx((base.gpp - 0.2) * np.exp(twin_mod.HARVEST_GPP_EFFECT), abs=2e-3)
        assert t.reco - 0.2 == pytest.approx((base.reco - 0.2) * np.exp(twin_mod.THAW_RECO_EFFECT), abs=2e-3)
        assert s.loc[("FX", 2019, m)].nee == base.nee  # fire label without years since fire: the cell's truth
        f3, f20 = s.loc[("F3", 2019, m)], s.loc[("F20", 2019, m)]
        assert f3.years_since_fire == pytest.approx(3.0 + (m - 5) / 12, abs=1e-9)
        assert f3.disturbance == "fire" and f20.years_since_fire == pytest.approx(20.0 + (m - 5) / 12, abs=1e-9)
        season = twin_mod.LEGACY_SEASON[m - 1]
        gap = (fire_legacy(f3.years_since_fire) - fire_legacy(f20.years_since_fire)) * season
        # NEE = Rh + 1 - 0.55 GPP_lue + legacy; the younger scar also has less NDVI (less GPP)
        assert f3.nee - f20.nee >= gap - 0.01
        if season == 1.0:
            assert gap > 9.0 and f3.gpp < f20.gpp


@pytest.mark.slow  # builds twins
def test_network_twin_is_deterministic(tmp_path, zones):
    net = network_table(zones)
    make_twin(tmp_path / "a", SPEC, network=net)
    make_twin(tmp_path / "b", SPEC, network=net)
    make_twin(tmp_path / "c", TwinSpec(**{**SPEC.__dict__, "seed": 8}), network=net)
    a = (tmp_path / "a" / "sites.csv").read_bytes()
    assert a == (tmp_path / "b" / "sites.csv").read_bytes()
    assert a != (tmp_path / "c" / "sites.csv").read_bytes()
    ids = pd.read_csv(tmp_path / "c" / "sites.csv").site_id
    assert set(ids) == set(pd.read_csv(tmp_path / "a" / "sites.csv").site_id)  # same sites, other noise


@pytest.mark.slow  # builds twins
def test_cli_twin_on_a_contract_network(tmp_path, zones):
    path = tmp_path / "net.csv"
    network_table(zones).to_csv(path, index=False)
    args = [
        "twin",
        "--resolution-km",
        "200",
        "--years",
        "2019-2020",
        "--seed",
        "7",
        "--sites",
        "30",
        "--site-months",
        "400",
        "--quiet",
        "--network",
        str(path),
    ]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert "8 of 9 sites placed" in r.output and "1 in cells without domain land" in r.output
    tw = json.loads((tmp_path / "t" / "twin.json").read_text())
    assert tw["network"]["source"] == str(path) and tw["spec"]["network"] == "realistic"
    assert set(pd.read_csv(tmp_path / "t" / "sites.csv").site_id) == {"A", "B", "F3", "F20", "FX", "H", "T", "OLD"}
    # bad input: a clear error, exit 2, nothing written
    bad = tmp_path / "bad.csv"
    network_table(zones).drop(columns="month").to_csv(bad, index=False)
    r = CliRunner().invoke(app, ["twin", "--out", str(tmp_path / "u"), "--network", str(bad)])
    assert r.exit_code == 2 and "[month] missing required column" in r.output and not (tmp_path / "u").exists()
    r = CliRunner().invoke(
        app, ["twin", "--out", str(tmp_path / "v"), "--network", str(path), "--network-format", "xls"]
    )
    assert r.exit_code == 2 and "unknown network format 'xls'" in r.output and not (tmp_path / "v").exists()


def test_cli_calibrate_names_a_bad_network_file(tmp_path, zones):
    bad = tmp_path / "bad.csv"
    network_table(zones).drop(columns="lat").to_csv(bad, index=False)
    r = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path / "cal"), "--network-file", str(bad)])
    assert r.exit_code == 2 and "bad.csv: [lat] missing required column" in r.output
    assert not (tmp_path / "cal").exists()


@pytest.mark.slow  # builds twins
def test_calibration_without_extrapolation_gives_the_same_budgets(tmp_path, zones):
    """`abzflux calibrate --no-extrap` skips the LOSO CV and the extrapolation term only: with
    the twin's fixed mtry the forests, bootstrap members and budgets are those of a full run."""
    from abzflux.calibrate import run_twin, twin_rows

    spec = TwinSpec(resolution_km=300, first_year=2019, last_year=2020, seed=448, n_sites=30, n_site_months=400)
    make_twin(tmp_path / "twin", spec, network=network_table(zones))
    kw = {"n_estimators": 5, "n_bootstrap": 2, "block_km": 1000.0}
    truth, (full,) = run_twin(tmp_path / "twin", tmp_path / "full", ["sites"], **kw)
    _, (lite,) = run_twin(tmp_path / "twin", tmp_path / "lite", ["sites"], extrapolation=False, **kw)
    a, b = pd.read_csv(full / "budgets_annual.csv"), pd.read_csv(lite / "budgets_annual.csv")
    assert "tg_c_sd_total" in a and "tg_c_sd_total" not in b
    pd.testing.assert_frame_equal(a[b.columns], b)
    assert not (tmp_path / "lite" / "shared" / "uncertainty").exists()
    rows_lite = twin_rows(lite, truth, "sites", {"twin": "t", "network": "net", "site_effects": "biased", "seed": 448})
    assert set(rows_lite.method) == {"sites"} and len(rows_lite) == len(
        b[b.zone.isin(rows_lite.zone.unique()) & b.flux.isin(["gpp", "reco", "nee"])]
    )


def test_abcflux_network_format_reads_the_importers_table(tmp_path, zones):
    """`--network-format abcflux` on a raw ABCflux file = `sites import abcflux` then the contract
    route: the same checked network, and it places real sites on the twin's land."""
    from pathlib import Path

    from abzflux.abcflux import read_abcflux, write_abcflux
    from abzflux.twin_network import read_network

    raw = Path(__file__).parent / "data" / "ABC.v2.apr24.excerpt.csv.zip"
    direct = read_network(raw, "abcflux")
    table, _ = write_abcflux(read_abcflux(raw), tmp_path / "sites.parquet")
    via = read_network(table, "contract")
    cols = ["site_id", "lat", "lon", "year", "month", "gpp", "reco", "nee", "method", "disturbance"]
    pd.testing.assert_frame_equal(
        direct[cols].reset_index(drop=True), via[cols].reset_index(drop=True), check_dtype=False
    )
    assert direct.site_id.nunique() > 5 and direct.method.isin(["EC", "chamber"]).all()
    p = place_network(direct, zones, 2001, 2020, file=str(raw))
    assert p.report["sites_placed"] > 0 and len(p.records) > 0
    with pytest.raises(InputError, match=r"unknown network format 'csv'"):
        read_network(raw, "csv")
