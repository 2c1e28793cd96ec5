"""In-situ statistics of a site-month table (the paper's in-situ column and text).

Pure functions of a table in the contract of docs/formats.md §1 (for example the output of
``abzflux sites import abcflux``). Annual site fluxes use only site-years with all 12 months of
the flux (the paper's Table 1, in situ). A site's annual flux is the mean over its complete
years; biome statistics are mean ± SD (ddof 1) across sites. Units: g C m-2 yr-1 for annual,
g C m-2 month-1 for monthly values.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .budgets import insitu_annual, site_latitude_correlation
from .trends import site_trends

log = logging.getLogger(__name__)

#: the paper's trend sites have "more than seven years of year-round data"
TREND_MIN_YEARS = 8
#: the paper's values (Virkkala et al. 2025, text and Table 1), for side-by-side reporting
PAPER = {
    "boreal nee": (-42.0, 82.0),
    "tundra nee": (-4.0, 44.0),
    "source_share": 0.29,
    "latitude_r": 0.26,
    "latitude_p": 0.053,
    "trend_sites": 9,
}


def _biome_of(table: pd.DataFrame) -> pd.Series:
    if "biome" not in table.columns:
        return pd.Series("all", index=table.index)
    return table["biome"].astype(object).where(table["biome"].notna(), "unknown").astype(str).str.lower()


def site_annual(table: pd.DataFrame, flux: str = "nee") -> pd.DataFrame:
    """Per site: mean annual ``flux`` (g C m-2 yr-1) over its site-years with 12 months, the
    number of such years, biome and latitude. Sites without a complete year are absent."""
    ins = insitu_annual(table, flux)
    per = ins.groupby("site_id").agg(annual=("annual", "mean"), years=("annual", "size"))
    attrs = table.assign(biome=_biome_of(table)).groupby("site_id").agg(biome=("biome", "first"), lat=("lat", "first"))
    return per.join(attrs).reset_index()


def biome_annual(table: pd.DataFrame) -> pd.DataFrame:
    """Per biome (and ``all``) and flux: sites, site-years, mean and SD (ddof 1) across sites of
    the sites' mean annual flux (g C m-2 yr-1)."""
    rows = []
    for flux in ("nee", "gpp", "reco"):
        s = site_annual(table, flux)
        groups = [("all", s)]
        if "biome" in table.columns:  # without one, "all" is the only group (not listed twice)
            groups += [(b, g) for b, g in s.groupby("biome", sort=True)]
        for b, g in groups:
            rows.append(
                {
                    "biome": b,
                    "flux": flux,
                    "sites": len(g),
                    "site_years": int(g["years"].sum()),
                    "mean": float(g["annual"].mean()) if len(g) else np.nan,
                    "sd": float(g["annual"].std(ddof=1)) if len(g) > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def source_share(table: pd.DataFrame, threshold: float = 0.0) -> dict:
    """Sites whose mean annual NEE (complete years) is > ``threshold`` g C m-2 yr-1: count, share
    of sites, and the range of their NEE (the paper: 29 %, NEE 0 to 142)."""
    s = site_annual(table, "nee")
    src = s[s["annual"] > threshold]
    return {
        "sites": len(s),
        "source_sites": len(src),
        "share": len(src) / len(s) if len(s) else np.nan,
        "source_min": float(src["annual"].min()) if len(src) else np.nan,
        "source_max": float(src["annual"].max()) if len(src) else np.nan,
    }


def monthly_cycle(table: pd.DataFrame) -> pd.DataFrame:
    """Mean seasonal cycle per biome, flux and calendar month (g C m-2 month-1): each site's mean
    for the month over its years first, then the mean and SD across sites (so a long record
    counts as one site), with the number of sites."""
    d = table.assign(biome=_biome_of(table))
    rows = []
    for flux in ("nee", "gpp", "reco"):
        x = d[d[flux].notna()]
        per_site = x.groupby(["biome", "site_id", "month"])[flux].mean().reset_index()
        g = per_site.groupby(["biome", "month"])[flux].agg(["mean", "std", "size"]).reset_index()
        g = g.rename(columns={"std": "sd", "size": "sites"}).assign(flux=flux)
        rows.append(g)
    out = pd.concat(rows, ignore_index=True)
    return out[["biome", "flux", "month", "sites", "mean", "sd"]]


def trends(table: pd.DataFrame, min_years: int = TREND_MIN_YEARS) -> pd.DataFrame:
    """Theil-Sen slope (g C m-2 yr-2) and zyp (Zhang) Mann-Kendall p of annual flux at sites with
    at least ``min_years`` complete years (abzflux.trends.site_trends), per flux."""
    out = []
    for flux in ("nee", "gpp", "reco"):
        t = site_trends(table, min_years=min_years, flux=flux)
        out.append(t.assign(flux=flux))
    return pd.concat(out, ignore_index=True)[
        ["flux", "site_id", "n_years", "first_year", "last_year", "slope", "p", "tau"]
    ]


def summary(table: pd.DataFrame) -> dict:
    """All in-situ statistics of ``table``: biome_annual, source_share, latitude (Pearson r, p of
    site NEE with latitude), monthly_cycle, trends, and the table's size."""
    lat = site_latitude_correlation(table).iloc[0].to_dict()
    return {
        "rows": len(table),
        "sites": int(table["site_id"].nunique()),
        "biome_annual": biome_annual(table),
        "source_share": source_share(table),
        "latitude": lat,
        "monthly_cycle": monthly_cycle(table),
        "trends": trends(table),
    }


def _f(v, fmt="{:.0f}"):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def _short(name: str, width: int | None) -> str:
    name = str(name)
    return name if width is None or len(name) <= width else name[: width - 1] + "…"


def summary_markdown(s: dict, paper: bool = True, site_width: int | None = None) -> str:
    """The statistics of :func:`summary` as markdown, with the paper's values beside them.

    ``site_width``: cut site names longer than this (with "…"), so that a terminal of 80 columns
    shows the site-trend table unwrapped (ABCflux site names reach 80 characters)."""
    out = [
        f"Site-months: {s['rows']}, sites: {s['sites']}.",
        "",
        "### Annual flux per biome (g C m-2 yr-1; per site, mean of complete years)",
        "",
        "| biome | flux | sites | site-years | mean ± SD | paper (Table 1, in situ) |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in s["biome_annual"].itertuples():
        p = PAPER.get(f"{r.biome} {r.flux}") if paper else None
        out.append(
            f"| {r.biome} | {r.flux} | {r.sites} | {r.site_years} | {_f(r.mean)} ± {_f(r.sd)} | "
            f"{f'{p[0]:.0f} ± {p[1]:.0f}' if p else ''} |"
        )
    sh, la = s["source_share"], s["latitude"]
    out += [
        "",
        "### Sources and latitude",
        "",
        "| statistic | value | paper |",
        "|---|---|---|",
        (
            f"| sites with NEE > 0 | {sh['source_sites']} of {sh['sites']} ({_f(100 * sh['share'])} %), "
            f"NEE {_f(sh['source_min'])} to {_f(sh['source_max'])} | 29 %, NEE 0 to 142 |"
        ),
        (
            f"| r of site NEE with latitude | {_f(la['pearson_r'], '{:.2f}')} "
            f"(p = {_f(la['p'], '{:.3g}')}, n = {la['n']}) | 0.26 (P = 0.053) |"
        ),
    ]
    tr = s["trends"]
    nee = tr[tr.flux == "nee"]
    out += [
        "",
        f"### Site trends (≥ {TREND_MIN_YEARS} complete years; Theil–Sen, zyp Zhang Mann–Kendall)",
        "",
        f"NEE: {len(nee)} sites, {int((nee.p < 0.05).sum())} with p < 0.05 (paper: 9 sites, 1 significant).",
        "",
        "| flux | site | years | first–last | slope (g C m-2 yr-2) | p |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in tr.itertuples():
        out.append(
            f"| {r.flux} | {_short(r.site_id, site_width)} | {r.n_years} | {r.first_year}–{r.last_year} | "
            f"{_f(r.slope, '{:.2f}')} | {_f(r.p, '{:.3f}')} |"
        )
    mc = s["monthly_cycle"]
    out += ["", "### Monthly mean cycle (g C m-2 month-1; per site first, then across sites)", ""]
    for flux in ("nee", "gpp", "reco"):
        sub = mc[mc.flux == flux]
        biomes = sorted(sub.biome.unique())
        out += [
            f"{flux}:",
            "",
            "| month | " + " | ".join(f"{b} (sites)" for b in biomes) + " |",
            "|---:|" + "---|" * len(biomes),
        ]
        piv = sub.set_index(["month", "biome"])
        for m in range(1, 13):
            cells = []
            for b in biomes:
                if (m, b) in piv.index:
                    q = piv.loc[(m, b)]
                    cells.append(f"{q['mean']:.1f} ({int(q['sites'])})")
                else:
                    cells.append("–")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


__all__ = ["biome_annual", "monthly_cycle", "site_annual", "source_share", "summary", "summary_markdown", "trends"]
