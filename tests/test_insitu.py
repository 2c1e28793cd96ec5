"""In-situ statistics on a small hand-computed table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from abzflux import insitu


def site(sid, biome, lat, year, nee, months=range(1, 13), gpp=None):
    return [
        {
            "site_id": sid,
            "biome": biome,
            "lat": lat,
            "lon": 20.0,
            "year": year,
            "month": m,
            "nee": nee,
            "gpp": gpp if gpp is not None else np.nan,
            "reco": np.nan,
        }
        for m in months
    ]


@pytest.fixture
def table():
    rows = (
        site("A", "boreal", 60.0, 2010, -5.0, gpp=10.0)
        + site("A", "boreal", 60.0, 2011, -3.0, gpp=10.0)
        + site("A", "boreal", 60.0, 2012, -4.0, months=range(1, 12))  # 11 months: not a full year
        + site("B", "boreal", 65.0, 2015, 2.0)
        + site("C", "tundra", 70.0, 2015, 1.0)
        + site("D", "tundra", 72.0, 2016, -1.0)
    )
    return pd.DataFrame(rows)


def test_biome_annual_mean_sd_over_sites(table):
    b = insitu.biome_annual(table).set_index(["biome", "flux"])
    # site A: (−60 + −36)/2 = −48 (2012 has 11 months), B: 24, C: 12, D: −12
    assert b.loc[("boreal", "nee"), "mean"] == pytest.approx(-12.0)
    assert b.loc[("boreal", "nee"), "sd"] == pytest.approx(np.sqrt(36**2 * 2))
    assert b.loc[("boreal", "nee"), "sites"] == 2 and b.loc[("boreal", "nee"), "site_years"] == 3
    assert b.loc[("tundra", "nee"), "mean"] == pytest.approx(0.0)
    assert b.loc[("tundra", "nee"), "sd"] == pytest.approx(np.sqrt(288.0))
    assert b.loc[("all", "nee"), "mean"] == pytest.approx(-6.0)
    assert b.loc[("all", "nee"), "sd"] == pytest.approx(np.sqrt(3024 / 3))
    assert b.loc[("boreal", "gpp"), "mean"] == pytest.approx(120.0)  # only A has GPP
    assert b.loc[("boreal", "gpp"), "sites"] == 1


def test_source_share_and_latitude(table):
    s = insitu.source_share(table)
    assert (s["sites"], s["source_sites"], s["share"]) == (4, 2, 0.5)
    assert (s["source_min"], s["source_max"]) == (12.0, 24.0)
    lat = insitu.summary(table)["latitude"]
    x, y = np.array([60, 65, 70, 72.0]), np.array([-48, 24, 12, -12.0])
    r = ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert lat["pearson_r"] == pytest.approx(r) and lat["n"] == 4


def test_monthly_cycle_site_means_first(table):
    c = insitu.monthly_cycle(table).set_index(["biome", "flux", "month"])
    # January: A's mean over 2010-2012 = (−5 − 3 − 4)/3 = −4, B = 2 -> (−4 + 2)/2 = −1
    assert c.loc[("boreal", "nee", 1), "mean"] == pytest.approx(-1.0)
    assert c.loc[("boreal", "nee", 1), "sites"] == 2
    # December: A = (−5 − 3)/2 = −4 (2012 has no December), B = 2
    assert c.loc[("boreal", "nee", 12), "mean"] == pytest.approx(-1.0)
    assert c.loc[("tundra", "nee", 6), "mean"] == pytest.approx(0.0)


def test_trends_need_eight_complete_years():
    rows = []
    for y in range(2001, 2010):  # 9 complete years, NEE = (y − 2000) per month -> 12 (y − 2000) per year
        rows += site("E", "boreal", 60.0, y, float(y - 2000))
    for y in range(2001, 2008):  # 7 years: too short
        rows += site("F", "boreal", 61.0, y, 1.0)
    t = insitu.trends(pd.DataFrame(rows))
    nee = t[t.flux == "nee"]
    assert list(nee.site_id) == ["E"]
    assert nee.slope.iat[0] == pytest.approx(12.0) and nee.n_years.iat[0] == 9


def test_summary_markdown_shows_paper_values(table):
    md = insitu.summary_markdown(insitu.summary(table))
    assert "| boreal | nee | 2 | 3 | -12 ± 51 | -42 ± 82 |" in md
    assert "2 of 4 (50 %)" in md


def test_report_shows_insitu_tables_only_for_abcflux_tables(tmp_path):
    from pathlib import Path

    from abzflux.abcflux import read_abcflux
    from abzflux.report import RunData, insitu_tables

    run = tmp_path / "run"
    run.mkdir()
    (run / "budgets_annual.csv").write_text("zone,flux,year,tg_c\n")  # RunData wants a finished run
    t = read_abcflux(Path(__file__).parent / "data" / "ABC.v2.apr24.excerpt.csv.zip").table
    t.to_parquet(run / "sites.parquet", index=False)
    items = insitu_tables(RunData(run))
    assert [i.id for i in items] == ["insitu_biomes", "insitu_other"]
    assert "-42 ± 82" in items[0].table_html and "boreal" in items[0].table_html
    t.drop(columns="abcflux_row").to_parquet(run / "sites.parquet", index=False)
    assert insitu_tables(RunData(run)) == []


def test_table_without_biome_lists_all_once_and_fits_80_columns(table):
    """A twin's table has no biome column: "all" is the only group, listed once per flux; every
    line of the printed summary (`abzflux sites summary`) fits an 80-column terminal."""
    t = table.drop(columns="biome")
    b = insitu.biome_annual(t)
    assert list(b.biome) == ["all"] * 3 and list(b.flux) == ["nee", "gpp", "reco"]
    assert b.set_index("flux").at["nee", "sites"] == 4
    for tab in (t, table):
        md = insitu.summary_markdown(insitu.summary(tab))
        assert max(len(line) for line in md.splitlines()) <= 80


def test_long_site_names_are_cut_only_when_asked(table):
    long = "Imnavait Creek Watershed Wet Sedge Tundra [US-ICs]"
    t = pd.concat([table, pd.DataFrame(site(long, "tundra", 68.6, 2000, 1.0))])
    for y in range(2001, 2010):
        t = pd.concat([t, pd.DataFrame(site(long, "tundra", 68.6, y, float(y - 2000)))])
    s = insitu.summary(t)
    assert f"| nee | {long} | 10 |" in insitu.summary_markdown(s)
    short = insitu.summary_markdown(s, site_width=28)
    assert "| nee | Imnavait Creek Watershed We… | 10 |" in short
    assert max(len(line) for line in short.splitlines()) <= 80
