"""ABCflux import: every rule on hand-checked rows of a real excerpt (tests/data/README.md), the
written table and report, bad input, and the full shared file when it is present."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from abzflux.abcflux import (
    DISTURBANCE_CLASSES,
    DISTURBANCE_MAP,
    read_abcflux,
    report_path,
    write_abcflux,
)
from abzflux.cli import app
from abzflux.errors import InputError
from abzflux.formats import read_site_table, write_crs

DATA = Path(__file__).parent / "data"
EXCERPT = DATA / "ABC.v2.apr24.excerpt.csv.zip"
REPO = Path(__file__).resolve().parents[1]
FULL_CANDIDATES = [
    Path("/work/shared/data/abcflux/ABC.v2.apr24.csv.zip"),
    REPO.parent / "shared" / "data" / "abcflux" / "ABC.v2.apr24.csv.zip",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def imp():
    return read_abcflux(EXCERPT)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("abc") / "ABC.v2.apr24.excerpt.csv"
    with zipfile.ZipFile(EXCERPT) as z:
        out.write_bytes(z.read("ABC.v2.apr24.excerpt.csv"))
    return out


def rows(t, site, year=None, month=None):
    m = t.site_id == site
    if year is not None:
        m &= t.year == year
    if month is not None:
        m &= t.month == month
    return t[m]


def test_zip_with_macosx_entry_and_plain_csv_give_the_same_table(imp, csv_path):
    with zipfile.ZipFile(EXCERPT) as z:
        assert any(n.startswith("__MACOSX/") for n in z.namelist())
    plain = read_abcflux(csv_path)
    pd.testing.assert_frame_equal(imp.table, plain.table)


def test_report_counts_per_rule_hand_checked(imp):
    rep = imp.report
    dropped = rep.counts("dropped")
    # the excerpt's 493 records: 1 description row (record 57), 12 Kaamanen chamber rows with
    # year NA, one Kilpisjarvi row with latitude NA, one Hung_CBAWO-WS row with month NA,
    # 2 Bartlett lentic rows, 4 Bjoerkman "Diff" rows, 4 biome NA + 4 cool temperate + 2
    # temperate, 6 Kobbefjord rows, 2 CA-NS2 2002-01 rows, 10 CA-Man rows (1997-01/02 ×2 each,
    # 6 rows of 2005+), one Johnston_Innoko_Fen row whose NEE and Reco are "-".
    assert rep.rows_read == 493
    assert dropped["column-description row"] == 1
    assert dropped["year: missing or invalid"] == 12
    assert dropped["latitude: missing or invalid"] == 1
    assert dropped["month: missing or invalid"] == 1
    assert dropped["aquatic row"] == 2
    assert dropped["flux_method not EC or chamber"] == 4
    assert dropped["outside the ABZ (biome)"] == 10
    assert dropped["workflow outlier removal"] == 6 + 2 + 10
    assert dropped["no CO2 flux"] == 1
    changed = rep.counts("changed")
    assert changed["gpp: infinite value"] == 3
    assert changed["reco: infinite value"] == 7
    assert changed["gpp: non-numeric value"] == 1  # the '####…' cell of Korkiakoski 2015-06
    assert changed["nee: non-numeric value"] == 1 and changed["reco: non-numeric value"] == 1
    assert changed["gpp: implausible"] == 2 and changed["reco: implausible"] == 2  # 1.6e142, 1.0e115
    assert rep.rows_written == len(imp.table) == rep.rows_read - sum(dropped.values())
    md = rep.to_markdown()
    assert "| column-description row | dropped | 1 |" in md
    assert "Windows-1252" in md


def test_output_passes_the_contract_reader_unchanged(imp, tmp_path):
    p = tmp_path / "s.parquet"
    imp.table.to_parquet(p, index=False)
    back = read_site_table(p)
    assert len(back) == len(imp.table)
    np.testing.assert_allclose(back.nee.to_numpy(), imp.table.nee.to_numpy())
    assert set(back.method.dropna()) <= {"EC", "chamber"}
    assert set(back.disturbance) <= set(DISTURBANCE_CLASSES)
    assert (back.gpp.dropna() >= 0).all() and (back.reco.dropna() >= 0).all()


def test_signs_documented_convention_negated(imp):
    t = imp.table
    # Hyytiala 2015-07: two rows (Reichstein −279.70959, Lasslop −277.6546): night-time kept
    r = rows(t, "Hyytiala [FI-Hyy]", 2015, 7)
    assert len(r) == 1
    assert r.gpp.iat[0] == pytest.approx(279.70959)
    assert r.reco.iat[0] == pytest.approx(185.11743)
    assert r.nee.iat[0] == pytest.approx(-93.74524)
    # Lunsen Burnt chamber 1, 2021-03: only Reco 0.795
    r = rows(t, "Peacock_LunsenBurnt_chamber 1", 2021, 3)
    assert r.reco.iat[0] == pytest.approx(0.795) and np.isnan(r.gpp.iat[0]) and np.isnan(r.nee.iat[0])


def test_site_reporting_gpp_positive_is_kept(imp):
    # Bouleau automated chamber 2 reports GPP positive (22.17 … 94.47): not negated
    r = rows(imp.table, "Bouleau_automatedchamber2_HummockSphagnum", 2019, 7)
    assert r.gpp.iat[0] == pytest.approx(76.66) and r.nee.iat[0] == pytest.approx(-12.19)
    info = next(x for x in imp.report.rules if x["rule"] == "GPP sign: site reports GPP positive")
    assert "Bouleau_automatedchamber2_HummockSphagnum" in info["detail"]


def test_wrong_signed_small_gpp_set_to_zero(imp):
    # Tagesson Cassiope heath 3, 2007-08: file GPP +2.8997 (a release) -> 0 after negation
    r = rows(imp.table, "Tagesson_Rylekaerene_Cassiope heath 3", 2007, 8)
    assert r.gpp.iat[0] == 0.0
    assert rows(imp.table, "Tagesson_Rylekaerene_Cassiope heath 3", 2007, 7).gpp.iat[0] == pytest.approx(
        36.2613630361476
    )


def test_inf_and_implausible_cells_become_nan(imp):
    t = imp.table
    # RU-Che 2014-01..04: GPP "-Inf" in the file
    r = rows(t, "Ambolikha Site (Cherskii, RU) [RU-Che]", 2014)
    assert r[r.month <= 4].gpp.isna().all()
    assert r[r.month == 7].gpp.iat[0] == pytest.approx(130.72066, rel=1e-6)
    v = t[["gpp", "reco", "nee"]].to_numpy()
    v = v[~np.isnan(v)]
    assert np.isfinite(v).all() and (np.abs(v) <= 1500).all()
    # RU-Ch2 record with GPP and Reco 1.6222896e+142 in the file: both NaN now, NEE kept
    r = rows(t, "Ambolikha Site reference (Cherskii, RU) [RU-Ch2]")
    assert len(r[r.gpp.isna() & r.reco.isna()]) >= 1


def test_missing_site_id_takes_site_name_and_reference(imp):
    t = imp.table
    assert "Hyytiala [FI-Hyy]" in set(t.site_id)
    assert rows(t, "Hyytiala [FI-Hyy]").abcflux_site_id.isna().all()


def test_text_decoding_utf8_and_windows_1252(imp):
    t = imp.table
    # Knottåsen's record is not valid UTF-8 (byte 0xE5); Iškoras's is UTF-8
    assert set(rows(t, "Lindroth_SE-Kno_tower1").site_name) == {"Knottåsen"}
    assert set(rows(t, "Althuizen_Iskoras_chamber6").site_name) == {"Iškoras"}
    # 496 lines (the excerpt CSV's `wc -l`), 18 of them not valid UTF-8
    assert imp.report.decoding == {"UTF-8": 478, "Windows-1252 (not valid UTF-8)": 18}


def test_several_locations_take_the_most_frequent(imp):
    # Iwata_US-Uaf_tower1: 192 rows at -147.85553, 60 give longitude 64.86627 (its latitude repeated)
    r = rows(imp.table, "Iwata_US-Uaf_tower1")
    assert set(r.lat) == {64.86627} and set(r.lon) == {-147.85553}


def test_workflow_outliers_removed(imp):
    t = imp.table
    man = rows(t, "Manitoba - Northern Old Black Spruce (former BOREAS Northern Study Area) [CA-Man]")
    assert not ((man.year == 1997) & man.month.isin([1, 2])).any()
    assert not (man.year >= 2005).any()
    assert ((man.year == 2004) & (man.month == 12)).any()
    ns2 = rows(t, "UCI-1930 burn site [CA-NS2]")
    assert not ((ns2.year == 2002) & (ns2.month == 1)).any() and ((ns2.year == 2002) & (ns2.month == 2)).any()
    assert not t.site_id.str.startswith("Lund_Kobbefjord").any()


def test_disturbance_mapping_and_years_since_fire(imp):
    t = imp.table
    lb = rows(t, "Peacock_LunsenBurnt_chamber 1")
    assert lb.disturbance.iat[0] == "fire" and lb.years_since_fire.iat[0] == 4.0  # 2021 − 2017
    ns7 = rows(t, "UCI-1998 burn site [CA-NS7]")
    assert set(ns7[ns7.year == 2003].years_since_fire) == {5.0} and set(ns7[ns7.year == 2004].years_since_fire) == {6.0}
    assert set(rows(t, "Jung_CB").disturbance) == {"other"}  # "water supply … along the road"
    assert set(rows(t, "Hyytiala [FI-Hyy]").disturbance) == {"none"}  # NA
    assert rows(t, "Hyytiala [FI-Hyy]").years_since_fire.isna().all()
    assert set(DISTURBANCE_MAP.values()) <= set(DISTURBANCE_CLASSES)


def test_unknown_disturbance_label_and_fire_before_measurement(csv_path, tmp_path):
    text = (
        csv_path.read_bytes()
        .replace(b"Site burned four years ago in 2017 due to forest fire", b"Volcanic ash")
        .replace(b",Fire,1998,", b",Fire,2009,")
    )
    p = tmp_path / "x.csv"
    p.write_bytes(text)
    r = read_abcflux(p)
    assert set(rows(r.table, "Peacock_LunsenBurnt_chamber 1").disturbance) == {"other"}
    assert r.report.unknown_disturbance == {"Volcanic ash": 4}
    ns7 = rows(r.table, "UCI-1998 burn site [CA-NS7]")  # measured 2003-04, fire now 2009
    assert ns7.years_since_fire.isna().all()
    assert r.report.counts()["years_since_fire: measured before the fire"] == len(ns7)
    assert "| Volcanic ash | 4 |" in r.report.to_markdown()


def test_duplicates_resolved_by_stated_rule(imp):
    t = imp.table
    assert not t.duplicated(["site_id", "year", "month"]).any()
    # Hyytiala 2015-01: Lasslop row (GPP −0.954) and Reichstein row (GPP +2.141, Reco 7.777838):
    # the Reichstein row is kept; its wrong-signed GPP (a release of 2.14) becomes 0
    r = rows(t, "Hyytiala [FI-Hyy]", 2015, 1)
    assert r.reco.iat[0] == pytest.approx(7.777838) and r.gpp.iat[0] == 0.0
    assert imp.report.counts()["duplicated site-month"] == 36


def test_group_by_site_name_merges_measurement_sets():
    r = read_abcflux(EXCERPT, group_by="site_name")
    lb = rows(r.table, "Lunsen Burnt", 2021, 3)
    assert len(lb) == 1
    assert lb.reco.iat[0] == pytest.approx((0.795 + 8.177 + 5.194 + 7.595) / 4)
    assert lb.abcflux_site_id.iat[0].count(";") == 3
    read_site_table_ok(r.table)


def read_site_table_ok(t, tmp=None):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.parquet"
        t.to_parquet(p, index=False)
        read_site_table(p)


def test_filters_period_tier_domain_aquatic(imp):
    r = read_abcflux(EXCERPT, period=(2015, 2016))
    assert r.table.year.between(2015, 2016).all() and len(r.table) > 0
    r = read_abcflux(EXCERPT, tiers={1})
    assert (r.table.co2_tier == 1).all()
    assert "Jung_CB" not in set(r.table.site_id)  # Tier2
    assert "Bouleau_automatedchamber2_HummockSphagnum" not in set(r.table.site_id)  # "Tier 1 and Tier 2"
    r = read_abcflux(EXCERPT, domain=None)
    assert {"cool temperate", "temperate"} <= set(r.table.biome.dropna())
    assert len(r.table) == len(imp.table) + 4 + 4 + 2
    r = read_abcflux(EXCERPT, terrestrial_only=False)
    # Bartlett's two lentic rows carry no CO2 flux: kept by the filter, dropped as "no CO2 flux"
    assert r.report.counts()["no CO2 flux"] == 3


def test_zones_file_filter(tmp_path):
    import pyproj
    import xarray as xr

    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:6931", always_xy=True).transform(24.2948, 61.8474)
    x = x0 + np.array([-50e3, 0, 50e3])
    y = y0 + np.array([50e3, 0, -50e3])
    one = np.ones((3, 3))
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), one, {"units": "1"}),
            "biome": (
                ("y", "x"),
                np.ones((3, 3), np.int8),
                {"flag_values": np.array([1, 2], np.int8), "flag_meanings": "boreal tundra"},
            ),
            "region": (
                ("y", "x"),
                np.full((3, 3), 3, np.int8),
                {"flag_values": np.array([1, 2, 3, 4], np.int8), "flag_meanings": "alaska canada europe siberia"},
            ),
            "permafrost": (("y", "x"), 0 * one, {"units": "1"}),
        },
        coords={"y": y, "x": x},
    )
    ds = write_crs(ds, "EPSG:6931")
    zp = tmp_path / "zones.nc"
    ds.to_netcdf(zp)
    r = read_abcflux(EXCERPT, zones=zp)
    assert set(r.table.site_id) == {"Hyytiala [FI-Hyy]"}
    assert set(r.table.region) == {"europe"} and set(r.table.biome) == {"boreal"}


def test_write_is_atomic_refuses_foreign_files_and_is_deterministic(imp, tmp_path):
    out = tmp_path / "sites.parquet"
    _, rep = write_abcflux(imp, out)
    assert rep == report_path(out) == tmp_path / "sites.import.md"
    h1 = hashlib.sha256(out.read_bytes()).hexdigest()
    write_abcflux(read_abcflux(EXCERPT), out)  # its own output: replaced
    assert hashlib.sha256(out.read_bytes()).hexdigest() == h1
    assert h1 in rep.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sites.import.md", "sites.parquet"]
    foreign = tmp_path / "mine.parquet"
    foreign.write_bytes(b"not ours")
    with pytest.raises(InputError, match="was not written by"):
        write_abcflux(imp, foreign)
    assert foreign.read_bytes() == b"not ours"
    write_abcflux(imp, foreign, force=True)
    assert len(read_site_table(foreign)) == len(imp.table)
    csv = tmp_path / "sites.csv"
    write_abcflux(imp, csv)
    assert len(read_site_table(csv)) == len(imp.table)


def test_cli_import_and_summary(tmp_path):
    out = tmp_path / "s.parquet"
    r = runner.invoke(app, ["sites", "import", "abcflux", str(EXCERPT), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and (tmp_path / "s.import.md").exists()
    r = runner.invoke(app, ["sites", "summary", str(out)])
    assert r.exit_code == 0, r.output
    assert "Annual flux per biome" in r.output


def _xlsx() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buf.getvalue()


BAD = {
    "semicolon": (
        b"site_name;site_id;latitude;longitude;year;month;nee;gpp;reco\nA;a;60;20;2015;1;1;-1;2\n",
        "the header line is separated by ';', not commas",
        "the ABCflux CSV layout",
    ),
    "missing": (
        b"site_id,latitude,longitude,year,month,nee\na,60,20,2015,1,1\n",
        "missing ABCflux column(s): site_name, site_reference, country",
        "the ABCflux CSV layout",
    ),
    "excel-title-row": (
        b"ABCflux export,,,\nSite name,Latitude (deg N),Longitude (deg E),Year\nA,60,20,2015\n",
        "none of the ABCflux columns in the header line",
        "the ABCflux CSV layout",
    ),
    "excel-unicode-text": (
        "site_name\tsite_id\tlatitude\nA\ta\t60\n".encode("utf-16"),
        "the header line is separated by '\\t', not commas",
        "the ABCflux CSV layout",
    ),
    "xlsx": (_xlsx(), "is an Excel workbook, not a CSV file", "the ABCflux CSV as published"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_clear_error_nothing_written(case, tmp_path):
    raw, msg, expected = BAD[case]
    p = tmp_path / "in.csv"
    p.write_bytes(raw)
    with pytest.raises(InputError) as e:
        read_abcflux(p)
    assert msg in str(e.value) and f"expected {expected}" in str(e.value)
    out = tmp_path / "o.parquet"
    r = runner.invoke(app, ["sites", "import", "abcflux", str(p), "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert msg in " ".join(r.output.split())
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.csv"]


def test_zip_without_one_csv(tmp_path):
    p = tmp_path / "two.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.csv", "x")
        z.writestr("b.csv", "y")
    with pytest.raises(InputError, match="holds 2 CSV file"):
        read_abcflux(p)


@pytest.mark.skipif(not any(p.exists() for p in FULL_CANDIDATES), reason="../shared ABCflux file not present")
def test_full_shared_file_imports(tmp_path):
    src = next(p for p in FULL_CANDIDATES if p.exists())
    r = read_abcflux(src)
    assert r.report.rows_read == 26156
    assert r.report.counts("dropped")["column-description row"] == 1
    out, _ = write_abcflux(r, tmp_path / "sites.parquet")
    t = read_site_table(out)
    assert len(t) == r.report.rows_written and t.site_id.nunique() == r.report.sites_written
    assert set(t.biome) == {"boreal", "tundra"}


def test_filters_that_keep_nothing_are_an_error(tmp_path):
    with pytest.raises(InputError, match="no site-month is left") as e:
        read_abcflux(EXCERPT, period=(1900, 1901))
    assert "period: 1900-1901" in str(e.value)
    r = runner.invoke(
        app, ["sites", "import", "abcflux", str(EXCERPT), "--years", "1900-1901", "--out", str(tmp_path / "s.parquet")]
    )
    assert r.exit_code == 2 and list(tmp_path.iterdir()) == []


def test_cli_options_reach_the_importer(tmp_path):
    out = tmp_path / "t1.parquet"
    r = runner.invoke(
        app,
        [
            "sites",
            "import",
            "abcflux",
            str(EXCERPT),
            "--out",
            str(out),
            "--tier",
            "1",
            "--group-by",
            "site_name",
            "--years",
            "2003-2021",
        ],
    )
    assert r.exit_code == 0, r.output
    t = read_site_table(out)
    assert (t.co2_tier == 1).all() and t.year.between(2003, 2021).all()
    assert "Hyytiala" in set(t.site_id)  # site_name grouping
    md = tmp_path / "insitu.md"
    r = runner.invoke(app, ["sites", "summary", str(out), "--out", str(md)])
    assert r.exit_code == 0 and md.read_text().startswith("Site-months:")
    r = runner.invoke(
        app, ["sites", "import", "abcflux", str(EXCERPT), "--out", str(tmp_path / "x.parquet"), "--group-by", "tower"]
    )
    assert r.exit_code == 2 and not (tmp_path / "x.parquet").exists()
