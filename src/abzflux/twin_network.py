"""A twin's sites on a given (e.g. the real ABCflux) site network.

``abzflux twin --network FILE`` replaces the twin's synthetic site placement by a site table in
the project's contract (docs/formats.md §1), e.g. one written by ``abzflux sites import
abcflux``: every site of the table is put on the twin's grid cell that holds its location, with
its own months, method and disturbance labels, and the twin's truth at that cell and month (plus
the twin's measurement-error model) as its fluxes. This module does the geometry and the
calendar (pure table work, no random numbers); :mod:`abzflux.twin` samples the truth.

The rules (docs/twin.md, "Sites on a real network"):

* **Cells.** A site's cell is the grid cell whose square contains its (lat, lon) on the twin's
  grid (:func:`abzflux.formats.cell_index`, as the pipeline extracts its predictors). Sites
  outside the grid, or in a cell without domain land (land fraction 0: outside the boreal/tundra
  domain, or water/ice), are excluded, counted, logged and listed in ``twin.json``.
* **Years.** Each site keeps its calendar months, its gaps and its record length. A record that
  lies inside the twin's years keeps its real years. Otherwise the whole record is shifted by the
  smallest whole number of years that brings it inside (records starting before the first year
  move later, records ending after the last year move earlier). A record longer than the twin's
  period is shifted by the smallest whole number of years that makes it cover the period, and the
  months outside the period are dropped (counted as truncated).
* **Fluxes present.** A site-month reports GPP, Reco or NEE in the twin exactly when the network
  table has that flux there (the real network's partitioning gaps); site-months with none of the
  three are dropped (counted).
* **Fire.** ``years_since_fire`` is kept: the shift moves the fire with the record, so the
  burn-scar legacy the twin models (:func:`abzflux.twin.fire_legacy`) is taken at the site's real
  years since fire. Fire-labelled rows without ``years_since_fire`` get no legacy (counted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import InputError
from .formats import SITE_REQUIRED, cell_index, read_site_table
from .vocab import FLUXES

log = logging.getLogger(__name__)

#: Formats of ``abzflux twin --network FILE``: a site table in the contract, or a raw ABCflux file.
NETWORK_FORMATS = ("contract", "abcflux")
#: Disturbance labels whose effect the twin models on a site's observed fluxes (docs/twin.md):
#: harvest lowers GPP, thermokarst / permafrost thaw raises Reco, fire adds the burn-scar legacy.
HARVEST_LABELS = ("harvest",)
THAW_LABELS = ("thermokarst", "permafrost thaw", "permafrost_thaw", "thaw")
#: Exclusion reasons, as written to twin.json.
OUTSIDE_GRID = "outside the grid extent"
NO_DOMAIN_LAND = "in a cell without domain land (outside the boreal/tundra domain, or water/ice)"


@dataclass
class NetworkPlacement:
    """A network mapped onto one twin's grid and years.

    ``sites``: one row per placed site (``site`` 0.., ``site_id``, ``lat``, ``lon``, ``iy``,
    ``ix``, ``shift_years``). ``records``: one row per kept site-month (``site``, ``year``,
    ``month`` in the twin's years, ``method``, ``disturbance``, ``years_since_fire``,
    ``fire_time`` (decimal year of the fire in the twin's years, NaN if none), ``has_gpp``,
    ``has_reco``, ``has_nee``). ``report``: counts and excluded sites, for twin.json."""

    sites: pd.DataFrame
    records: pd.DataFrame
    report: dict = field(default_factory=dict)


def read_network(path, fmt: str = "contract") -> pd.DataFrame:
    """The network table of ``abzflux twin --network FILE``: a contract site table (CSV or
    Parquet, :func:`abzflux.formats.read_site_table`) or, with ``fmt="abcflux"``, a raw ABCflux
    file read by ``abzflux.abcflux.read_abcflux`` with its defaults (terrestrial ABZ rows)."""
    if fmt not in NETWORK_FORMATS:
        raise InputError(str(path), f"unknown network format {fmt!r}", expected=" or ".join(NETWORK_FORMATS))
    if fmt == "abcflux":
        try:
            from .abcflux import (
                read_abcflux,  # the importer, loaded only when asked for
            )
        except ImportError as e:
            raise InputError(
                str(path),
                f"cannot read ABCflux files here ({e})",
                expected="a site table from `abzflux sites import abcflux` with --network-format contract",
            ) from None
        table = read_abcflux(path).table
    else:
        table = read_site_table(path)
    out = check_network(table, str(path))
    out.attrs["source"] = str(path)
    return out


def check_network(table: pd.DataFrame, file: str = "<network table>") -> pd.DataFrame:
    """A contract-shaped network table, checked and normalised for placement.

    Needs ``site_id, lat, lon, year, month`` and at least one of ``gpp, reco, nee``; ``method``,
    ``disturbance`` and ``years_since_fire`` are optional. One location per site and one row per
    site-month, as the contract wants. Returns a copy with lower-case column names, ``method`` in
    {"EC", "chamber", NaN}, ``disturbance`` lower case ("none" where empty)."""
    df = table.copy()
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in SITE_REQUIRED if c not in df.columns]
    if not any(f in df.columns for f in FLUXES):
        missing.append("gpp/reco/nee (at least one)")
    if missing:
        raise InputError(
            file,
            f"missing required column(s): {', '.join(missing)}",
            column=", ".join(missing),
            expected="a site table in the contract (docs/formats.md §1)",
        )
    if len(df) == 0:
        raise InputError(file, "the network table has no rows", expected="one row per site and month")
    df["site_id"] = df["site_id"].astype(str).str.strip()
    for c in ("lat", "lon", "year", "month", *FLUXES, "years_since_fire"):
        if c in df.columns:
            v = pd.to_numeric(df[c], errors="coerce")
            bad = v.isna() & df[c].notna() | (v.isna() & (c in SITE_REQUIRED))
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(
                    file,
                    f"{int(bad.sum())} non-numeric or missing value(s)",
                    column=c,
                    where=f"row {i + 1} (site {df.site_id.iloc[i]})",
                    expected="numbers",
                )
            df[c] = v.astype(np.float64)
    for c in FLUXES:
        if c not in df.columns:
            df[c] = np.nan
    df["year"] = df["year"].astype(np.int64)
    df["month"] = df["month"].astype(np.int64)
    bad = ~df["month"].between(1, 12)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(file, "month out of range", column="month", where=f"row {i + 1}", expected="1..12")
    dup = df.duplicated(["site_id", "year", "month"], keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            file,
            f"{int(dup.sum())} rows share a site-month",
            column="site_id, year, month",
            where=f"row {i + 1} (site {df.site_id.iloc[i]})",
            expected="one row per site and month",
        )
    g = df.groupby("site_id")
    spread = np.maximum(g.lat.max() - g.lat.min(), g.lon.max() - g.lon.min())
    if (spread > 1e-6).any():
        s = spread[spread > 1e-6].index[0]
        raise InputError(
            file,
            f"{int((spread > 1e-6).sum())} site(s) have several locations",
            column="lat, lon",
            where=f"site {s}",
            expected="a single lat/lon per site_id",
        )
    if "method" in df.columns:
        m = df["method"].astype(object).where(df["method"].notna(), "").map(lambda v: str(v).strip().lower())
        df["method"] = m.map({"ec": "EC", "eddy covariance": "EC", "chamber": "chamber"}).astype(object)
    else:
        df["method"] = np.nan
    if "disturbance" in df.columns:
        d = df["disturbance"].astype(object).where(df["disturbance"].notna(), "").map(lambda v: str(v).strip().lower())
        df["disturbance"] = d.where(d != "", "none").astype(object)
    else:
        df["disturbance"] = "none"
    if "years_since_fire" not in df.columns:
        df["years_since_fire"] = np.nan
    return df.sort_values(["site_id", "year", "month"], kind="mergesort").reset_index(drop=True)


def year_shift(y0: int, y1: int, first: int, last: int) -> int:
    """Whole years added to a record spanning years ``y0..y1`` for a twin over ``first..last``.

    Inside: 0. Fits (y1 - y0 <= last - first): the smallest shift that brings it inside. Longer
    than the period: the smallest shift that makes it cover the whole period (the months outside
    are then dropped by the caller).

    >>> year_shift(2005, 2008, 2001, 2020), year_shift(1995, 1998, 2001, 2020), year_shift(2019, 2022, 2001, 2020)
    (0, 6, -2)
    >>> year_shift(1995, 2022, 2011, 2020), year_shift(2012, 2030, 2011, 2020), year_shift(1990, 2005, 2011, 2020)
    (0, -1, 15)
    """
    if y1 - y0 <= last - first:
        return first - y0 if y0 < first else (last - y1 if y1 > last else 0)
    return first - y0 if y0 > first else (last - y1 if y1 < last else 0)


def place_network(
    table: pd.DataFrame, zones, first_year: int, last_year: int, *, file: str = "<network table>"
) -> NetworkPlacement:
    """Map a checked network table (:func:`check_network`) onto a twin's grid and years.

    ``zones``: the twin's zones Dataset (``land_fraction`` on its y/x grid with its CRS). Rows of
    the result are in the table's site order; sites are numbered 0.. in that order."""
    loc = table.drop_duplicates("site_id")[["site_id", "lat", "lon"]].reset_index(drop=True)
    iy, ix = cell_index(zones, loc.lat.to_numpy(), loc.lon.to_numpy(), file)
    lf = np.nan_to_num(zones["land_fraction"].values.astype(np.float64))
    outside = iy < 0
    no_land = ~outside & (lf[np.maximum(iy, 0), np.maximum(ix, 0)] <= 0)
    reason = np.where(outside, OUTSIDE_GRID, np.where(no_land, NO_DOMAIN_LAND, ""))
    keep = reason == ""
    n_rows_site = table.groupby("site_id", sort=False).size()
    excluded = [
        {"site_id": s, "lat": float(a), "lon": float(b), "site_months": int(n_rows_site[s]), "reason": r}
        for s, a, b, r in zip(loc.site_id, loc.lat, loc.lon, reason)
        if r
    ]
    sites = loc[keep].assign(iy=iy[keep], ix=ix[keep]).reset_index(drop=True)
    sites.insert(0, "site", np.arange(len(sites)))
    rec = table.merge(sites[["site_id", "site"]], on="site_id", how="inner")
    span = rec.groupby("site").year.agg(["min", "max"])
    shift = pd.Series(
        [year_shift(int(a), int(b), first_year, last_year) for a, b in zip(span["min"], span["max"])],
        index=span.index,
        dtype=np.int64,
    )
    sites["shift_years"] = shift.reindex(sites.site).fillna(0).astype(np.int64).to_numpy()
    rec["year"] = rec.year + shift.reindex(rec.site).to_numpy()
    inside = rec.year.between(first_year, last_year)
    n_truncated = int((~inside).sum())
    rec = rec[inside]
    has = {f: rec[f].notna().to_numpy() for f in FLUXES}
    any_flux = has["gpp"] | has["reco"] | has["nee"]
    n_no_flux = int((~any_flux).sum())
    rec = rec[any_flux].reset_index(drop=True)
    fire = rec.disturbance.eq("fire").to_numpy()
    ysf = rec.years_since_fire.to_numpy(np.float64)
    t_obs = rec.year.to_numpy() + (rec.month.to_numpy() - 0.5) / 12
    rec["fire_time"] = np.where(fire & np.isfinite(ysf), t_obs - ysf, np.nan)
    records = pd.DataFrame(
        {
            "site": rec.site.to_numpy(),
            "year": rec.year.to_numpy(np.int64),
            "month": rec.month.to_numpy(np.int64),
            "method": rec.method.to_numpy(object),
            "disturbance": rec.disturbance.to_numpy(object),
            "years_since_fire": ysf,
            "fire_time": rec.fire_time.to_numpy(),
            **{f"has_{f}": rec[f].notna().to_numpy() for f in FLUXES},
        }
    )
    used = np.unique(records.site)
    dropped_all = sorted(set(sites.site) - set(used))  # every month outside the period or without flux
    if dropped_all:
        sites = sites[sites.site.isin(used)]
        renum = {old: new for new, old in enumerate(sites.site)}
        sites = sites.assign(site=sites.site.map(renum)).reset_index(drop=True)
        records["site"] = records.site.map(renum).to_numpy()
    report = {
        "source": file,
        "first_year": int(first_year),
        "last_year": int(last_year),
        "sites_in_table": len(loc),
        "site_months_in_table": len(table),
        "sites_excluded": len(excluded),
        "sites_outside_grid": int(outside.sum()),
        "sites_without_domain_land": int(no_land.sum()),
        "site_months_of_excluded_sites": int(sum(e["site_months"] for e in excluded)),
        "sites_shifted": int((sites.shift_years != 0).sum()),
        "site_months_truncated": n_truncated,
        "site_months_without_flux": n_no_flux,
        "sites_placed": len(sites),
        "site_months_placed": len(records),
        "sites_without_months": len(dropped_all),
        "fire_rows_without_years_since_fire": int((fire & ~np.isfinite(ysf)).sum()),
        "excluded": excluded,
    }
    if excluded:
        log.warning(
            "%s: %d of %d network sites excluded (%d %s, %d %s), %d site-months",
            file,
            len(excluded),
            len(loc),
            report["sites_outside_grid"],
            OUTSIDE_GRID,
            report["sites_without_domain_land"],
            NO_DOMAIN_LAND,
            report["site_months_of_excluded_sites"],
        )
    log.info(
        "%s: %d sites, %d site-months placed on the twin's grid for %d-%d (%d sites shifted, %d site-months truncated)",
        file,
        report["sites_placed"],
        report["site_months_placed"],
        first_year,
        last_year,
        report["sites_shifted"],
        n_truncated,
    )
    return NetworkPlacement(sites=sites, records=records, report=report)
