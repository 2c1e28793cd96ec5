"""Import the published ABCflux CSV (v2 layout) into the site-month table contract.

ABCflux (Virkkala et al. 2022, ESSD 14, 179-208) is the Arctic-boreal monthly CO2 flux
database the paper was fitted on. :func:`read_abcflux` reads the CSV as published (zipped or
not), applies the rules of docs/real_data.md, and returns the table in the contract of
docs/formats.md §1 plus an :class:`ImportReport` of every row dropped or changed, counted per
rule. :func:`write_abcflux` writes both, atomically.

Fluxes are monthly sums in g C m-2 month-1 (ABCflux: "for the entire measurement interval",
one row per month). In the output GPP and Reco are >= 0 and NEE < 0 is net uptake.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .formats import FLUXES, MAX_ABS_FLUX, read_site_table

log = logging.getLogger(__name__)

#: columns an ABCflux v2 file must have (lower case; the rules below use each of them)
ABCFLUX_COLUMNS = (
    "site_name",
    "site_reference",
    "site_id",
    "country",
    "latitude",
    "longitude",
    "year",
    "month",
    "nee",
    "gpp",
    "reco",
    "biome",
    "permafrost",
    "disturbance",
    "disturb_year",
    "flux_method",
    "partition_method",
    "data_usage",
    "waterbody_type",
)
#: cells read as "no value" (not reported: this is how ABCflux writes a missing value)
NA_TOKENS = frozenset({"", "na", "nan", "n/a", "#n/a", "null"})
#: biomes of the Arctic-boreal zone (the `biome` column, case-insensitive)
ABZ_BIOMES = ("boreal", "tundra")
#: a monthly GPP or Reco of the wrong sign (after the site's convention) up to this size
#: (g C m-2 month-1) is set to 0, a larger one to NaN (docs/real_data.md, rule "wrong sign")
WRONG_SIGN_TOL = 10.0
DISTURBANCE_CLASSES = ("none", "fire", "harvest", "thermokarst", "drainage", "other")

#: ABCflux v2 `disturbance` labels (lower case, spaces collapsed) -> class. Labels not listed
#: become "other" and are reported as unknown. An empty/NA label becomes "none" (contract).
DISTURBANCE_MAP = {
    "no": "none",
    "n": "none",
    "none": "none",
    "no (reindeer grazing)": "none",
    "perhaps a fire ~100 -150 years previously. not sure. the trees are about ~100 years.": "none",
    "fire": "fire",
    "wildfire": "fire",
    "burn": "fire",
    "site burned four years ago in 2017 due to forest fire": "fire",
    "harvest": "harvest",
    "partial harvest": "harvest",
    "thinning": "harvest",
    "clear-cutting": "harvest",
    "clear cut": "harvest",
    "thinning, clear-cutting": "harvest",
    "1970s clearing black spruce forest": "harvest",
    "deforestation 70 meters from the site": "harvest",
    "ditching, selection harvest": "harvest",
    "thermokarst": "thermokarst",
    "permfrost thaw": "thermokarst",
    "permafrost thaw": "thermokarst",
    "thaw": "thermokarst",
    "mild gradual thaw (initial date undetermined)": "thermokarst",
    "thawing ice wedge": "thermokarst",
    "peatland drainage": "drainage",
    "artificially drained site": "drainage",
    "ditching": "drainage",
    "drainage": "drainage",
    "drained": "drainage",
    "drainage and peat mining": "drainage",
    "larval outbreak": "other",
    "moth herbivory": "other",
    "snow rich event": "other",
    "drought": "other",
    "beaver pond": "other",
    "seismic lines": "other",
    "seismic lines- approximately 3 m wide and run both north to south and east to west": "other",
    "seismic lines- approximately 7 m wide, running both southwest to northeast and east to west": "other",
    "degraded land, most likely for overgrazing. site next to gravel mine": "other",
    "water supply to the study site from accumulated snow along the road": "other",
    "grazing by reindeer": "other",
    "light grazing": "other",
    "old grazer-induced grassification": "other",
    "recent grazer-induced grassification": "other",
}

#: workflow.md §1: rows the original workflow removed as outliers, located in ABCflux v2 by
#: (column, regex on that column, rows: "all" | {(year, month) or (year, None) for year >= ...})
OUTLIER_RULES = (
    (
        "Lund_Kobbefjord_Ch: the whole site (larval-outbreak chamber site, extreme uptake)",
        "site_id",
        r"^Lund_Kobbefjord_Ch",
        lambda y, m: np.ones(len(y), bool),
    ),
    ("Goulden_CA-NS2: 2002-01", "site_reference", r"^CA-NS2$", lambda y, m: (y == 2002) & (m == 1)),
    ("Goulden_CA-NS3: 2002-01", "site_reference", r"^CA-NS3$", lambda y, m: (y == 2002) & (m == 1)),
    (
        "McCaughey_CA-Man: years >= 2005, 1997-01 and 1997-02",
        "site_reference",
        r"^CA-Man$",
        lambda y, m: (y >= 2005) | ((y == 1997) & np.isin(m, (1, 2))),
    ),
)

_MARKER = "<!-- abzflux sites import abcflux -->"
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")
_TIER = re.compile(r"tier\s*([12])", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What the import did: rows read and written and, per rule, how many rows it dropped or
    changed, with a few examples (file record numbers: 1 = first record after the header)."""

    source: str
    settings: dict = field(default_factory=dict)
    rows_read: int = 0
    rows_written: int = 0
    sites_written: int = 0
    rules: list = field(default_factory=list)
    unknown_disturbance: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=dict)

    def add(self, rule: str, action: str, rows: int, detail: str = "", examples=()) -> None:
        """Record a rule: ``action`` is "dropped", "changed" or "info"; ``rows`` a row count."""
        ex = list(examples)[:5]
        self.rules.append({"rule": rule, "action": action, "rows": int(rows), "detail": detail, "examples": ex})
        if rows:
            log.info("%s: %s %d row(s) %s", rule, action, rows, detail)

    def counts(self, action: str | None = None) -> dict[str, int]:
        """``{rule: rows}`` (summed over entries of the same rule), optionally for one action."""
        out: dict[str, int] = {}
        for r in self.rules:
            if action is None or r["action"] == action:
                out[r["rule"]] = out.get(r["rule"], 0) + r["rows"]
        return out

    def to_markdown(self) -> str:
        """The report as markdown (the file ``<table>.import.md``)."""
        s = [_MARKER, f"# ABCflux import: {Path(self.source).name}", "", f"- source: `{self.source}`"]
        for k, v in self.settings.items():
            s.append(f"- {k}: {v}")
        s += [
            f"- records read (after the header): {self.rows_read}",
            f"- site-months written: {self.rows_written} at {self.sites_written} sites",
            "",
        ]
        if self.decoding:
            s.append("Text decoding: " + ", ".join(f"{n} line(s) {k}" for k, n in self.decoding.items()))
            s.append("")
        s += ["| rule | action | rows | detail | examples (record: value) |", "|---|---|---:|---|---|"]
        for r in self.rules:
            ex = "; ".join(str(e) for e in r["examples"]).replace("|", "/")
            s.append(f"| {r['rule']} | {r['action']} | {r['rows']} | {r['detail'].replace('|', '/')} | {ex} |")
        if self.unknown_disturbance:
            s += [
                "",
                "Disturbance labels not in the mapping table (mapped to `other`):",
                "",
                "| label | rows |",
                "|---|---:|",
            ]
            for k, v in sorted(self.unknown_disturbance.items()):
                s.append(f"| {k} | {v} |")
        return "\n".join(s) + "\n"


@dataclass
class AbcfluxImport:
    """The imported site table (contract of docs/formats.md §1 plus extras) and its report."""

    table: pd.DataFrame
    report: ImportReport


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> tuple[bytes, str]:
    file = str(path)
    if not path.exists():
        raise InputError(file, "file not found", expected="the ABCflux CSV (.csv) or its zip (.csv.zip)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [
                n
                for n in z.namelist()
                if not n.endswith("/") and "__MACOSX/" not in n and not Path(n).name.startswith("._")
            ]
            if "[Content_Types].xml" in names or any(n.startswith("xl/") for n in names):
                raise InputError(
                    file,
                    "is an Excel workbook, not a CSV file",
                    expected="the ABCflux CSV as published (or the sheet saved as "
                    "comma-separated CSV with the ABCflux header)",
                )
            csvs = [n for n in names if n.lower().endswith(".csv")]
            if len(csvs) != 1:
                raise InputError(
                    file,
                    f"the zip holds {len(csvs)} CSV file(s) ({', '.join(names) or 'none'})",
                    expected="exactly one .csv file (a __MACOSX/ entry is ignored)",
                )
            return z.read(csvs[0]), f"{file}!{csvs[0]}"
    return path.read_bytes(), file


def _decode(raw: bytes, report: ImportReport) -> str:
    """UTF-8 line by line; a line that is not valid UTF-8 is read as Windows-1252 (Latin-1 for
    the 5 bytes Windows-1252 leaves undefined). ABCflux v2 mixes both."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" export
        text = raw.decode("utf-16")
        report.decoding = {"UTF-16": text.count("\n") + (not text.endswith("\n"))}
        return text
    try:
        text = raw.decode("utf-8")
        report.decoding = {"UTF-8": text.count("\n") + (not text.endswith("\n"))}
        return text
    except UnicodeDecodeError:
        pass
    out, n8, n1252 = [], 0, 0
    lines = raw.split(b"\n")
    for line in lines:
        try:
            out.append(line.decode("utf-8"))
            n8 += 1
        except UnicodeDecodeError:
            out.append(line.decode("cp1252", errors="abzflux-latin1"))
            n1252 += 1
    n8 -= lines[-1] == b""  # the empty piece after a final line break is not a line
    report.decoding = {"UTF-8": n8, "Windows-1252 (not valid UTF-8)": n1252}
    return "\n".join(out)


def _latin1_fallback(err: UnicodeDecodeError):
    return err.object[err.start : err.end].decode("latin-1"), err.end


codecs.register_error("abzflux-latin1", _latin1_fallback)


def _parse(text: str, file: str) -> pd.DataFrame:
    first = text.split("\n", 1)[0]
    expected = "the ABCflux CSV layout: a comma-separated header line with the columns " + ", ".join(ABCFLUX_COLUMNS)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises several types for malformed CSV
        raise InputError(file, f"cannot be read as CSV ({str(exc)[:200]})", expected=expected) from None
    cols = [str(c).strip().lower() for c in df.columns]
    df.columns = cols
    missing = [c for c in ABCFLUX_COLUMNS if c not in cols]
    if missing:
        delim = max((";", "\t", "|"), key=first.count)
        if first.count(",") < 2 and first.count(delim) >= 2:
            problem = f"the header line is separated by {delim!r}, not commas"
        elif len(missing) == len(ABCFLUX_COLUMNS):
            problem = f"none of the ABCflux columns in the header line ({first[:80]!r})"
        else:
            problem = f"missing ABCflux column(s): {', '.join(missing)}"
        column = ", ".join(missing) if problem.startswith("missing") else None
        raise InputError(file, problem, column=column, where="line 1 (the header)", expected=expected)
    if len(df) == 0:
        raise InputError(file, "no data rows", expected="one row per site-month under the header")
    return df


def _na(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower().isin(NA_TOKENS)


def _clean_text(s: pd.Series) -> pd.Series:
    t = s.str.strip().str.split().str.join(" ")
    return t.where(~_na(s), None)


def _examples(df: pd.DataFrame, mask, col: str | None = None) -> list[str]:
    sub = df[np.asarray(mask, bool)].head(5)
    if col is None:
        return [f"record {r} ({s})" for r, s in zip(sub["abcflux_row"], sub["site_key"])]
    return [f"record {r} ({s}): {v!r}" for r, s, v in zip(sub["abcflux_row"], sub["site_key"], sub[col])]


def _drop(df, mask, report, rule, detail="", col=None):
    mask = np.asarray(mask, bool)
    report.add(rule, "dropped", int(mask.sum()), detail, _examples(df, mask, col))
    return df[~mask]


def _tier(text: str | None) -> float:
    """CO2 data-use tier (1 or 2) of an ABCflux `data_usage` cell; NaN when none is given. A cell
    naming both tiers ("Tier 1 and Tier 2") counts as 2, the more restrictive."""
    if text is None:
        return np.nan
    t = text
    m = re.search(r"co2:(.*?)(ch4:|$)", t, re.IGNORECASE)
    if m:
        t = m.group(1)
    tiers = {int(v) for v in _TIER.findall(t)}
    return float(max(tiers)) if tiers else np.nan


def _numbers(df, col, report, rule_inf=True):
    """Parse a flux column: NA tokens -> NaN silently, Inf -> NaN (reported), other text -> NaN
    (reported)."""
    s = df[col]
    na = _na(s)
    v = pd.to_numeric(s.where(~na, None), errors="coerce").astype("float64")
    inf = np.isinf(v.to_numpy())
    if inf.any():
        report.add(f"{col}: infinite value", "changed", int(inf.sum()), "Inf/-Inf set to NaN", _examples(df, inf, col))
        v[inf] = np.nan
    bad = (v.isna() & ~na).to_numpy() & ~inf
    if bad.any():
        report.add(f"{col}: non-numeric value", "changed", int(bad.sum()), "set to NaN", _examples(df, bad, col))
    return v


def read_abcflux(
    path,
    *,
    group_by: str = "site_id",
    period: tuple[int, int] | None = None,
    tiers=None,
    domain: str | None = "abz",
    zones=None,
    terrestrial_only: bool = True,
) -> AbcfluxImport:
    """Read the published ABCflux CSV (or its zip) into the site-month table contract.

    Parameters
    ----------
    path : ABCflux v2 CSV, or a zip holding it (``__MACOSX/`` entries are ignored).
    group_by : ``"site_id"`` (each ABCflux measurement set, e.g. a tower or chamber plot, is a
        site and a CV group) or ``"site_name"`` (measurement sets of one named site are merged:
        per month the mean of their fluxes, at the mean of their locations).
    period : (first, last) calendar years to keep, inclusive; None keeps all.
    tiers : CO2 data-use tiers to keep (e.g. ``{1}``); None keeps all, including rows with no tier.
    domain : ``"abz"`` keeps biome Boreal and Tundra rows; None keeps every biome. Ignored when
        ``zones`` is given.
    zones : a zones file (docs/formats.md §3): keep sites in a cell with land_fraction > 0 and a
        biome code; its biome and region replace the file's.
    terrestrial_only : drop aquatic rows (a `waterbody_type`).

    Returns an :class:`AbcfluxImport`; ``.table`` passes :func:`abzflux.formats.read_site_table`.
    Raises :class:`InputError` when the file is not ABCflux-shaped.
    """
    if group_by not in ("site_id", "site_name"):
        raise ValueError(f"group_by must be 'site_id' or 'site_name', got {group_by!r}")
    path = Path(path)
    report = ImportReport(source=str(path))
    raw, file = _read_bytes(path)
    df = _parse(_decode(raw, report), file)
    report.rows_read = len(df)
    report.settings = {
        "group_by": group_by,
        "period": f"{period[0]}-{period[1]}" if period else "all years",
        "tiers": ", ".join(str(t) for t in sorted(tiers)) if tiers else "all",
        "domain": f"zones file {zones}" if zones is not None else (domain or "all biomes"),
        "terrestrial_only": terrestrial_only,
    }
    df.insert(0, "abcflux_row", np.arange(1, len(df) + 1, dtype=np.int64))

    # identifiers
    df["site_name"] = _clean_text(df["site_name"])
    df["site_reference"] = _clean_text(df["site_reference"])
    sid = _clean_text(df["site_id"])
    derived = sid.isna()
    key = sid.copy()
    ref = df["site_reference"]
    both = df["site_name"].fillna("") + (" [" + ref + "]").fillna("")
    key[derived] = both[derived].str.strip()
    key = key.where(key.notna() & (key != ""), None)
    df["abcflux_site_id"] = sid
    df["site_key"] = key

    # the column-description row(s): latitude and longitude hold text, not numbers or NA
    lat_s, lon_s = df["latitude"], df["longitude"]
    lat = pd.to_numeric(lat_s, errors="coerce")
    lon = pd.to_numeric(lon_s, errors="coerce")
    desc = (lat.isna() & ~_na(lat_s) & lon.isna() & ~_na(lon_s) & (df["nee"].str.len() > 40)).to_numpy()
    df = _drop(df, desc, report, "column-description row", "a row of column descriptions, not data", col="latitude")
    report.add(
        "site_id missing",
        "changed",
        int(df["abcflux_site_id"].isna().sum()),
        "site_id NA: the site key is `site_name [site_reference]`",
        _examples(df, df["abcflux_site_id"].isna()),
    )
    df = _drop(df, df["site_key"].isna(), report, "no site identifier", "site_id, site_name and site_reference all NA")

    # location and calendar
    for col, lo, hi, integer in (
        ("latitude", -90, 90, False),
        ("longitude", -180, 180, False),
        ("year", 1900, 2100, True),
        ("month", 1, 12, True),
    ):
        v = pd.to_numeric(df[col].where(~_na(df[col]), None), errors="coerce").astype("float64")
        bad = v.isna() | (v < lo) | (v > hi)
        if integer:
            bad |= v != np.round(v)
        df = df.assign(**{col: v})
        df = _drop(
            df,
            bad.to_numpy(),
            report,
            f"{col}: missing or invalid",
            f"expected {'integers' if integer else 'numbers'} in {lo}..{hi}",
            col=col,
        )
    df["year"] = df["year"].astype(np.int64)
    df["month"] = df["month"].astype(np.int64)

    # fluxes as numbers
    for col in FLUXES:
        df[col] = _numbers(df, col, report)

    # filters
    if terrestrial_only:
        aq = ~_na(df["waterbody_type"])
        df = _drop(df, aq, report, "aquatic row", "`waterbody_type` given (lake/river flux)", col="waterbody_type")
    meth = df["flux_method"].str.strip().str.lower()
    method = meth.map({"ec": "EC", "eddy covariance": "EC", "chamber": "chamber"})
    for label in sorted(meth[method.isna()].unique()):
        m = (meth == label) & method.isna()
        df = _drop(
            df,
            m.reindex(df.index, fill_value=False),
            report,
            "flux_method not EC or chamber",
            f"flux_method {label!r}",
            col="flux_method",
        )
    df["method"] = method.reindex(df.index)
    biome = df["biome"].str.strip().str.lower().where(~_na(df["biome"]), None)
    df["biome"] = biome
    if zones is not None:
        df = _zone_filter(df, zones, report)
    elif domain == "abz":
        for label in sorted(df.loc[~df["biome"].isin(ABZ_BIOMES), "biome"].fillna("NA").unique()):
            m = ~df["biome"].isin(ABZ_BIOMES) & (df["biome"].fillna("NA") == label)
            df = _drop(df, m, report, "outside the ABZ (biome)", f"biome {label!r}", col="biome")
    elif domain is not None:
        raise ValueError(f"domain must be 'abz' or None, got {domain!r}")
    if period is not None:
        a, b = period
        df = _drop(
            df, (df["year"] < a) | (df["year"] > b), report, "outside the period", f"year outside {a}-{b}", col="year"
        )
    df["data_usage"] = _clean_text(df["data_usage"])
    df["co2_tier"] = df["data_usage"].map(_tier).astype("float64")
    if tiers:
        keep = {int(t) for t in tiers}
        m = ~df["co2_tier"].isin(keep)
        df = _drop(
            df,
            m,
            report,
            "data-use tier not selected",
            f"CO2 tier not in {sorted(keep)}, or no tier given",
            col="data_usage",
        )

    # the original workflow's outlier removals (workflow.md §1)
    for label, col, pattern, rows in OUTLIER_RULES:
        hit = df[col].fillna("").str.contains(pattern, regex=True).to_numpy()
        m = hit & rows(df["year"].to_numpy(), df["month"].to_numpy())
        df = _drop(df, m, report, "workflow outlier removal", label)

    df = _signs(df, report)

    # rows without any CO2 flux
    none = df[list(FLUXES)].isna().all(axis=1).to_numpy()
    df = _drop(df, none, report, "no CO2 flux", "nee, gpp and reco all missing")

    df = _duplicates(df, report)
    if group_by == "site_name":
        df = _group_by_name(df, report)
    df = _locations(df, report)
    df = _disturbance(df, report)
    df = _finish(df, zones is not None)
    if len(df) == 0:
        raise InputError(
            file,
            "no site-month is left after the import's rules and filters",
            where=", ".join(f"{k}: {v}" for k, v in report.settings.items()),
            expected="filters (--years, --tier, --zones) that keep some ABCflux rows",
        )
    report.rows_written = len(df)
    report.sites_written = int(df["site_id"].nunique())
    log.info("ABCflux import: %d of %d records kept, %d sites", len(df), report.rows_read, report.sites_written)
    return AbcfluxImport(table=df, report=report)


def _zone_filter(df, zones, report):
    from .formats import categories, cell_index, read_zones

    z = read_zones(zones)
    iy, ix = cell_index(z, df["latitude"].to_numpy(), df["longitude"].to_numpy(), file=zones)
    inside = iy >= 0
    land = np.zeros(len(df))
    code = np.zeros(len(df), dtype=np.int64)
    reg = np.zeros(len(df), dtype=np.int64)
    lf = z["land_fraction"].to_numpy()
    bz = np.nan_to_num(z["biome"].to_numpy()).astype(np.int64)
    rz = np.nan_to_num(z["region"].to_numpy()).astype(np.int64)
    land[inside] = np.nan_to_num(lf[iy[inside], ix[inside]])
    code[inside] = bz[iy[inside], ix[inside]]
    reg[inside] = rz[iy[inside], ix[inside]]
    bnames = {k: v.lower() for k, v in categories(z["biome"]).items()}
    rnames = {k: v.lower() for k, v in categories(z["region"]).items()}
    keep = inside & (land > 0) & np.isin(code, list(bnames))
    df = df.assign(biome=[bnames.get(c) for c in code], region=[rnames.get(c) for c in reg])
    return _drop(df, ~keep, report, "outside the zones' domain", f"site not in a land cell with a biome of {zones}")


def _signs(df, report):
    """GPP/Reco sign conventions per site, wrong-signed and implausible values."""
    # ABCflux documents GPP as negative (uptake); some contributors report it positive, and a
    # few report Reco negative. A site whose GPP values sum to > 0 reported GPP positive; one
    # whose Reco values sum to < 0 reported Reco negative.
    gsum = df.groupby("site_key")["gpp"].sum(min_count=1)
    rsum = df.groupby("site_key")["reco"].sum(min_count=1)
    gpos = set(gsum[gsum > 0].index)
    rneg = set(rsum[rsum < 0].index)
    g_pos_rows = df["site_key"].isin(gpos).to_numpy()
    r_neg_rows = df["site_key"].isin(rneg).to_numpy()
    report.add(
        "GPP sign",
        "changed",
        int((df["gpp"].notna() & ~g_pos_rows).sum()),
        "GPP negated (ABCflux: negative = uptake; contract: GPP >= 0)",
    )
    report.add(
        "GPP sign: site reports GPP positive",
        "info",
        int((df["gpp"].notna() & g_pos_rows).sum()),
        f"kept as is: {len(gpos)} site(s) whose GPP sums to > 0: "
        + ", ".join(sorted(gpos)[:8])
        + (" …" if len(gpos) > 8 else ""),
    )
    df = df.assign(gpp=np.where(g_pos_rows, df["gpp"], -df["gpp"]), reco=np.where(r_neg_rows, -df["reco"], df["reco"]))
    report.add(
        "Reco sign: site reports Reco negative",
        "changed",
        int((df["reco"].notna() & r_neg_rows).sum()),
        f"Reco negated at {len(rneg)} site(s) whose Reco sums to < 0: " + ", ".join(sorted(rneg)[:8]),
    )
    for col in ("gpp", "reco"):
        v = df[col]
        small = ((v < 0) & (v >= -WRONG_SIGN_TOL)).to_numpy()
        large = (v < -WRONG_SIGN_TOL).to_numpy()
        report.add(
            f"{col}: wrong sign, small",
            "changed",
            int(small.sum()),
            f"{col} < 0 after the site's convention, |value| <= {WRONG_SIGN_TOL:g}: set to 0",
            _examples(df, small, col),
        )
        report.add(
            f"{col}: wrong sign, large",
            "changed",
            int(large.sum()),
            f"{col} < -{WRONG_SIGN_TOL:g} after the site's convention: set to NaN",
            _examples(df, large, col),
        )
        v = v.where(~small, 0.0).where(~large, np.nan)
        df = df.assign(**{col: v})
    for col in FLUXES:
        huge = (df[col].abs() > MAX_ABS_FLUX).to_numpy()
        report.add(
            f"{col}: implausible",
            "changed",
            int(huge.sum()),
            f"|{col}| > {MAX_ABS_FLUX:g} g C m-2 month-1: set to NaN",
            _examples(df, huge, col),
        )
        df = df.assign(**{col: df[col].where(~huge, np.nan)})
    return df


def _duplicates(df, report):
    """One row per site key, year and month: keep the row with the most of nee/gpp/reco present;
    among equals, a row whose GPP/Reco come from the night-time partitioning (`partition_method`
    "Reichstein"; ABCflux v2 gives many towers twice, once per partitioning); then the first in
    the file."""
    keys = ["site_key", "year", "month"]
    dup = df.duplicated(keys, keep=False).to_numpy()
    if not dup.any():
        report.add("duplicated site-month", "dropped", 0, "")
        return df
    n_present = df[list(FLUXES)].notna().sum(axis=1)
    night = df["partition_method"].str.strip().str.lower().str.startswith("reichstein")
    order = df.assign(_n=-n_present, _p=(~night).astype(int)).sort_values(
        keys + ["_n", "_p", "abcflux_row"], kind="stable"
    )
    keep = ~order.duplicated(keys, keep="first")
    order = order.drop(columns=["_n", "_p"])
    kept = order[keep]
    dropped = order[~keep]
    ident = dropped.merge(kept[keys + list(FLUXES)], on=keys + list(FLUXES), how="inner")
    n_groups = int(df[dup].groupby(keys).ngroups)
    report.add(
        "duplicated site-month",
        "dropped",
        len(dropped),
        f"{n_groups} site-month(s) given more than once (same site key, year, month; {len(ident)} "
        "of the dropped rows have the same fluxes as the kept one): kept the row with the most "
        "of nee/gpp/reco, then night-time partitioning (Reichstein), then the first in the file",
        _examples(dropped, np.ones(len(dropped), bool)),
    )
    return kept.sort_values("abcflux_row", kind="stable")


def _group_by_name(df, report):
    """Merge the measurement sets of a site name: per month the mean of each flux over the sets
    that have it; first row's descriptors."""
    name = df["site_name"].fillna(df["site_key"])
    df = df.assign(site_key=name)
    keys = ["site_key", "year", "month"]
    dup = df.duplicated(keys, keep=False).to_numpy()
    n_sets = df.groupby("site_key")["abcflux_site_id"].nunique()
    report.add(
        "grouped by site_name",
        "changed",
        int(dup.sum()),
        f"{int((n_sets > 1).sum())} site name(s) with several measurement sets; rows of one site name "
        "and month merged (mean flux over the sets that have it)",
        _examples(df, dup),
    )
    df = df.sort_values("abcflux_row", kind="stable")
    means = df.groupby(keys, sort=False)[list(FLUXES)].mean()
    first = df.groupby(keys, sort=False).first()
    first[list(FLUXES)] = means
    sets = df.groupby(keys, sort=False)["abcflux_site_id"].agg(
        lambda s: ";".join(sorted({v for v in s if isinstance(v, str)})) or None
    )
    first["abcflux_site_id"] = sets
    first["latitude"] = df.groupby(keys, sort=False)["latitude"].mean()
    first["longitude"] = df.groupby(keys, sort=False)["longitude"].mean()
    return first.reset_index()


def _locations(df, report):
    """One location per site: its most frequent (latitude, longitude) over its rows, the first
    in the file among equally frequent ones."""
    loc = df[["site_key", "latitude", "longitude", "abcflux_row"]]
    cnt = (
        loc.groupby(["site_key", "latitude", "longitude"])
        .agg(n=("abcflux_row", "size"), first=("abcflux_row", "min"))
        .reset_index()
    )
    cnt = cnt.sort_values(["site_key", "n", "first"], ascending=[True, False, True], kind="stable")
    several = cnt[cnt.duplicated("site_key", keep=False)]["site_key"].unique()
    best = cnt.drop_duplicates("site_key").set_index("site_key")
    km = []
    for s in several:
        sub = cnt[cnt["site_key"] == s]
        la = np.radians(sub["latitude"].to_numpy()).mean()
        dy = (sub["latitude"].max() - sub["latitude"].min()) * 111.2
        dx = (sub["longitude"].max() - sub["longitude"].min()) * 111.2 * float(np.cos(la))
        km.append(f"{s}: {len(sub)} locations, {np.hypot(dx, dy):.2f} km apart")
    moved = df["site_key"].isin(several) & (
        (df["latitude"] != df["site_key"].map(best["latitude"]))
        | (df["longitude"] != df["site_key"].map(best["longitude"]))
    )
    report.add(
        "several locations per site",
        "changed",
        int(moved.sum()),
        f"{len(several)} site(s): latitude/longitude set to the site's most frequent location",
        km,
    )
    return df.assign(
        latitude=df["site_key"].map(best["latitude"]).astype("float64"),
        longitude=df["site_key"].map(best["longitude"]).astype("float64"),
    )


def _fire_years(text: str | None) -> list[int]:
    return sorted(int(v) for v in _YEAR.findall(text or ""))


def _disturbance(df, report):
    label = _clean_text(df["disturbance"])
    low = label.str.lower()
    cls = low.map(DISTURBANCE_MAP)
    unknown = low.notna() & cls.isna()
    report.unknown_disturbance = dict(Counter(label[unknown]))
    report.add(
        "disturbance: label not in the mapping table",
        "changed",
        int(unknown.sum()),
        "mapped to `other` (labels listed below)",
        _examples(df.assign(d=label), unknown, "d"),
    )
    report.add("disturbance: NA", "changed", int(low.isna().sum()), "no disturbance given: `none`")
    cls = cls.where(~unknown, "other").fillna("none")
    df = df.assign(disturbance=cls, disturbance_label=label, disturb_year=_clean_text(df["disturb_year"]))
    # years since fire: measurement year − the latest fire year <= it (disturb_year's 4-digit years)
    ysf = np.full(len(df), np.nan)
    fire = (cls == "fire").to_numpy()
    no_year, before = np.zeros(len(df), bool), np.zeros(len(df), bool)
    for i in np.flatnonzero(fire):
        ys = _fire_years(df["disturb_year"].iat[i])
        y = int(df["year"].iat[i])
        if not ys:
            no_year[i] = True
            continue
        past = [v for v in ys if v <= y]
        if not past:
            before[i] = True
            continue
        ysf[i] = y - past[-1]
    report.add(
        "years_since_fire",
        "info",
        int(np.isfinite(ysf).sum()),
        "fire rows: measurement year − the latest 4-digit year in disturb_year not after it",
    )
    report.add(
        "years_since_fire: no fire year",
        "changed",
        int(no_year.sum()),
        "fire row whose disturb_year holds no year: years_since_fire empty",
        _examples(df, no_year, "disturb_year"),
    )
    report.add(
        "years_since_fire: measured before the fire",
        "changed",
        int(before.sum()),
        "fire row measured before every year in disturb_year: years_since_fire empty",
        _examples(df, before, "disturb_year"),
    )
    return df.assign(years_since_fire=ysf)


def _finish(df, zoned: bool) -> pd.DataFrame:
    perm = df["permafrost"].str.strip().str.lower()
    yes = perm.str.match(r"^(yes|permafrost present|\(present\))").fillna(False).astype(bool)
    no = perm.str.match(r"^(no|absence)$").fillna(False).astype(bool)
    pf = np.where(yes, 1.0, np.where(no, 0.0, np.nan))
    out = pd.DataFrame(
        {
            "site_id": df["site_key"].astype(str),
            "lat": df["latitude"].astype("float64"),
            "lon": df["longitude"].astype("float64"),
            "year": df["year"].astype(np.int64),
            "month": df["month"].astype(np.int64),
            "gpp": df["gpp"].astype("float64"),
            "reco": df["reco"].astype("float64"),
            "nee": df["nee"].astype("float64"),
            "method": df["method"],
            "disturbance": df["disturbance"],
            "years_since_fire": df["years_since_fire"].astype("float64"),
            "site_name": df["site_name"],
            "site_reference": df["site_reference"],
            "abcflux_site_id": df["abcflux_site_id"],
            "country": _clean_text(df["country"]),
            "biome": df["biome"],
            "permafrost": pf.astype("float64"),
            "disturbance_label": df["disturbance_label"],
            "disturb_year": df["disturb_year"],
            "data_usage": df["data_usage"],
            "co2_tier": df["co2_tier"].astype("float64"),
            "abcflux_row": df["abcflux_row"].astype(np.int64),
        }
    )
    if zoned:
        out["region"] = df["region"].to_numpy()
    out = out.sort_values(["site_id", "year", "month"], kind="stable").reset_index(drop=True)
    return out


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def report_path(out: Path) -> Path:
    """Where the import report of the table ``out`` goes: ``sites.parquet`` -> ``sites.import.md``."""
    out = Path(out)
    return out.with_name(out.name.split(".")[0] + ".import.md")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ours(out: Path, rep: Path) -> bool:
    """True when ``out`` is a table this importer wrote: its report exists, carries the marker
    and the table's sha256."""
    if not rep.exists():
        return False
    text = rep.read_text(errors="replace")
    if not text.startswith(_MARKER):
        return False
    return (not out.exists()) or f"sha256 `{_sha256(out)}`" in text


def write_abcflux(result: AbcfluxImport, out, *, force: bool = False) -> tuple[Path, Path]:
    """Write the table (Parquet, or CSV when ``out`` ends in .csv) and its report beside it.

    Both are written to temporary names, the table is re-read with
    :func:`abzflux.formats.read_site_table`, and only then renamed into place: a failure leaves
    nothing behind. An existing table or report that this importer did not write is not
    replaced unless ``force``. Returns (table path, report path)."""
    out = Path(out)
    rep = report_path(out)
    for p in (out, rep):
        if p.exists() and not force and not _ours(out, rep):
            raise InputError(
                str(p),
                "exists and was not written by `abzflux sites import abcflux`",
                expected="a new path, or --force to replace it",
            )
        if p.exists() and p.is_dir():
            raise InputError(str(p), "is a directory", expected="a file path for the site table")
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.suffix.lower() == ".csv"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{'.csv' if csv else '.parquet'}")
    tmp_rep = rep.with_name(f".{rep.name}.{os.getpid()}.tmp")
    try:
        if csv:
            result.table.to_csv(tmp, index=False)
        else:
            result.table.to_parquet(tmp, index=False)
        try:
            read_site_table(tmp)  # the output must pass the contract reader unchanged
        except InputError as e:
            raise InputError(
                str(out),
                f"the imported table breaks the site-table contract ({e.problem})",
                column=e.column,
                where=e.where,
                expected=e.expected,
            ) from None
        text = result.report.to_markdown() + f"\nTable `{out.name}`: sha256 `{_sha256(tmp)}`\n"
        with open(tmp_rep, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        os.replace(tmp_rep, rep)
    finally:
        for p in (tmp, tmp_rep):
            if p.exists():
                p.unlink()
    return out, rep
