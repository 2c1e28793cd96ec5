"""Budgets: fluxes (g C m-2 month-1) summed over zones and years to Tg C yr-1.

Tg C = Σ flux [g C m-2] × cell_area [m2] × land_fraction × membership / 1e12, where membership
is 1 inside a zone and 0 outside. The permafrost zone's membership is :func:`permafrost_weight`
of the zones file's ``permafrost`` value under the ``[budgets] permafrost`` rule (a mask at a
threshold, or the value as a weight); the run's zones carry it already
(:func:`permafrost_zones`), so every budget, Table 1, source and trend area share use one
definition. Cells whose flux is missing contribute nothing; the share of each zone's area that
had a value is reported as ``coverage``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .domain import BIOMES, REGIONS
from .errors import InputError
from .formats import categories, spacing_area_m2
from .vocab import PERMAFROST_RULES

TG = 1e12  # g per Tg


def permafrost_weight(p, rule: str, threshold: float):
    """The permafrost region's membership of cells or sites with permafrost value ``p`` (0-1;
    NaN = none): ``"mask"`` 1 where ``p > threshold`` else 0; ``"weighted"`` ``p`` itself (the
    threshold unused). A 0/1 zonation gives the same membership under both rules (threshold < 1).
    ``p``: an xarray DataArray, a pandas Series or an array; the result is of the same kind, float64."""
    if rule not in PERMAFROST_RULES:
        raise ValueError(f"permafrost rule must be one of {list(PERMAFROST_RULES)}, got {rule!r}")
    if isinstance(p, (xr.DataArray, pd.Series)):
        v = p.fillna(0).astype(np.float64)
        return v if rule == "weighted" else (v > threshold).astype(np.float64)
    a = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0)
    return a if rule == "weighted" else (a > threshold).astype(np.float64)


def permafrost_zones(zones: xr.Dataset, rule: str, threshold: float) -> xr.Dataset:
    """The zones with ``permafrost`` replaced by its membership (:func:`permafrost_weight`), the
    value every budget multiplies by; the rule is recorded in the variable's attributes."""
    pf = zones["permafrost"]
    w = permafrost_weight(pf, rule, threshold)
    rule_text = rule if rule == "weighted" else f"mask: value > {threshold:g}"
    return zones.assign(permafrost=w.assign_attrs({**pf.attrs, "permafrost_rule": rule_text}))


def _codes(da: xr.DataArray, default: tuple[str, ...]) -> dict[int, str]:
    if da.attrs.get("flag_values") is None or da.attrs.get("flag_meanings") is None:
        return {i + 1: n for i, n in enumerate(default)}
    return categories(da)  # the readers' parser: a CF string "1 2" as well as an array


CONTINENTS = {"north_america": ("alaska", "canada"), "eurasia": ("europe", "siberia")}


def zone_weights(zones: xr.Dataset, veg: xr.DataArray | np.ndarray | None = None) -> xr.DataArray:
    """Effective land area (m2) of every cell in every zone: dims (zone, y, x).

    Zones, in this order: ``domain``; each biome; each region; each ``biome/region``; the
    continents ``north_america`` (Alaska + Canada) and ``eurasia`` (Europe + Siberia) when the
    regions carry those names; ``permafrost``; and with ``veg`` (vegetation class codes on the
    same grid, after recoding) every ``<vegetation class>/<region>`` of
    :data:`abzflux.predictors.VEG_CLASSES` (all classes, present or not, so the list is fixed).
    """
    from .predictors import VEG_CLASSES

    # In memory first: the layers below are dozens of element-wise steps, each a dask graph on a
    # lazily opened file otherwise (seconds per call). A band of zones is smaller than its weights.
    zones = _with_area(zones)[
        [v for v in ("land_fraction", "cell_area", "biome", "region", "permafrost") if v in zones or v == "cell_area"]
    ].load()
    lf = zones["land_fraction"].fillna(0).astype(np.float64)
    area = _with_area(zones)["cell_area"].astype(np.float64)
    base = (lf * area).fillna(0)
    layers = {"domain": base}
    biomes = _codes(zones["biome"], BIOMES)
    regions = _codes(zones["region"], REGIONS)
    for var, codes in (("biome", biomes), ("region", regions)):
        for code, name in codes.items():
            layers[name] = base.where(zones[var] == code, 0.0)
    for bc, bn in biomes.items():
        for rc, rn in regions.items():
            layers[f"{bn}/{rn}"] = base.where((zones["biome"] == bc) & (zones["region"] == rc), 0.0)
    lower = {n.lower(): c for c, n in regions.items()}
    for cont, members in CONTINENTS.items():
        if all(m in lower for m in members):
            layers[cont] = base.where(zones["region"].isin([lower[m] for m in members]), 0.0)
    # the membership as the zones carry it: the run's zones hold permafrost_weight already (permafrost_zones)
    layers["permafrost"] = base * zones["permafrost"].fillna(0).astype(np.float64)
    if veg is not None:
        v = np.asarray(veg)
        for vc, vn in VEG_CLASSES.items():
            inv = v == vc
            for rc, rn in regions.items():
                layers[f"{vn}/{rn}"] = base.where(inv & (zones["region"] == rc).values, 0.0)
    w = xr.concat(list(layers.values()), dim=pd.Index(list(layers), name="zone"))
    return w.transpose("zone", "y", "x").compute()


def zone_kind(name: str) -> str:
    """Kind of a zone name from :func:`zone_weights`: domain, biome, region, biome_region,
    continent, permafrost or veg_region."""
    from .predictors import VEG_CLASSES

    if name in ("domain", "permafrost"):
        return name
    if name in CONTINENTS:
        return "continent"
    if "/" in name:
        return "veg_region" if name.split("/")[0] in VEG_CLASSES.values() else "biome_region"
    return "biome" if name in BIOMES else "region"


def _with_area(zones: xr.Dataset) -> xr.Dataset:
    """Zones with a ``cell_area`` (from the grid spacing when the file has none), so that any
    band of rows can be weighted on its own."""
    if "cell_area" in zones:
        return zones
    # |dx * dy| in m2 from the CRS's axis units (formats.read_zones refuses a grid without
    # cell_area whose CRS is not equal-area). An in-memory grid without any CRS: x/y in metres.
    try:
        area = spacing_area_m2(zones)
    except InputError:
        area = float(abs(zones.x[1] - zones.x[0])) * float(abs(zones.y[1] - zones.y[0]))
    return zones.assign(cell_area=xr.full_like(zones["land_fraction"], area, dtype=np.float64))


def with_cell_area(zones: xr.Dataset) -> xr.Dataset:
    """Zones with a ``cell_area`` variable (m2), from the grid when the file has none (public
    name of the rule the budgets use, so that a band of rows can be weighted on its own)."""
    return _with_area(zones)


def monthly_budgets(fluxes: xr.Dataset, zones: xr.Dataset, band: int = 256, veg=None) -> pd.DataFrame:
    """Tg C month-1 per zone, month and flux variable; long table.

    Columns: zone, time, year, month, flux, tg_c, coverage (share of the zone's area with a
    value that month). The grid is read in bands of ``band`` rows and the time axis in the
    variable's chunks, so memory stays bounded for any grid size and period.
    """
    for c in ("y", "x"):  # weights are matched to cells by position: the grids must be identical
        if not np.array_equal(np.asarray(fluxes[c].values), np.asarray(zones[c].values)):
            raise ValueError(f"flux grid and zones grid differ along {c!r}")
    zones = _with_area(zones)
    ny = zones.sizes["y"]
    bands = [slice(i, min(i + band, ny)) for i in range(0, ny, band)]
    zone_names, total = None, None
    out = []
    for name, da in fluxes.data_vars.items():
        if "time" not in da.dims:
            continue
        da = da.transpose("time", "y", "x")
        times = pd.DatetimeIndex(da.time.values)
        step = max(int(da.chunksizes["time"][0]) if da.chunks else len(times), 1)
        tg = np.zeros((len(times), 0))
        cov = None
        for ys in bands:  # bands in a fixed order: sums are reproducible
            w = zone_weights(zones.isel(y=ys), None if veg is None else _band(veg, ys))
            if zone_names is None:
                zone_names = list(w.zone.values)
            wv = w.values.reshape(w.sizes["zone"], -1)
            if tg.shape[1] == 0:
                tg = np.zeros((len(times), wv.shape[0]))
                cov = np.zeros_like(tg)
            for t0 in range(0, len(times), step):
                block = np.asarray(da.isel(time=slice(t0, t0 + step), y=ys).values, dtype=np.float64)
                block = block.reshape(block.shape[0], -1)
                valid = np.isfinite(block)
                tg[t0 : t0 + step] += np.where(valid, block, 0.0) @ wv.T
                cov[t0 : t0 + step] += valid.astype(np.float64) @ wv.T
        if total is None:
            total = np.asarray(zone_areas_m2(zones, band, veg).loc[zone_names].values)
        tg /= TG
        cov /= np.where(total > 0, total, 1.0)
        for zi, zone in enumerate(zone_names):
            out.append(
                pd.DataFrame(
                    {
                        "zone": zone,
                        "time": times,
                        "year": times.year,
                        "month": times.month,
                        "flux": name,
                        "tg_c": tg[:, zi],
                        "coverage": cov[:, zi],
                    }
                )
            )
    return pd.concat(out, ignore_index=True)


def _band(veg, ys: slice):
    return veg.isel(y=ys).values if isinstance(veg, xr.DataArray) else np.asarray(veg)[ys]


def zone_areas_m2(zones: xr.Dataset, band: int = 256, veg=None) -> pd.Series:
    """Effective land area (m2) of every zone, summed band by band."""
    zones = _with_area(zones)
    ny = zones.sizes["y"]
    total = None
    for i in range(0, ny, band):
        ys = slice(i, min(i + band, ny))
        a = zone_weights(zones.isel(y=ys), None if veg is None else _band(veg, ys)).sum(("y", "x")).to_series()
        total = a if total is None else total + a
    return total


def annual_from_monthly(monthly: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Sum complete years (12 months) of a monthly budget table to Tg C yr-1 (per ``by`` too)."""
    g = monthly.groupby(["zone", "flux", *by, "year"])
    ann = g.agg(tg_c=("tg_c", "sum"), n_months=("month", "nunique"), coverage=("coverage", "min")).reset_index()
    return ann[ann.n_months == 12].drop(columns="n_months").reset_index(drop=True)


def annual_budgets(fluxes: xr.Dataset, zones: xr.Dataset, fire: xr.Dataset | None = None, veg=None) -> pd.DataFrame:
    """Annual budgets (Tg C yr-1): columns zone, flux, year, tg_c, coverage, density_g_m2.

    With ``fire``, adds ``fire`` (emissions) and ``nee_fire`` (NEE + fire emissions) for the
    years both cover. ``density_g_m2`` is the area-weighted mean flux, budget / zone area.
    """
    mon = monthly_budgets(fluxes, zones, veg=veg)
    ann = annual_from_monthly(mon)
    if fire is not None and "nee" in fluxes:
        fb = annual_from_monthly(monthly_budgets(fire[["fire_emissions"]], zones, veg=veg))
        fb["flux"] = "fire"
        nee = ann[ann.flux == "nee"].merge(fb, on=["zone", "year"], suffixes=("", "_f"))
        nf = nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.tg_c_f, coverage=np.minimum(nee.coverage, nee.coverage_f))[
            ["zone", "flux", "year", "tg_c", "coverage"]
        ]
        ann = pd.concat([ann, fb[fb.year.isin(nee.year)], nf], ignore_index=True)
    area = zone_areas_m2(zones, veg=veg)
    ann["density_g_m2"] = ann.tg_c * TG / ann.zone.map(area)
    return ann.sort_values(["flux", "zone", "year"]).reset_index(drop=True)


def zone_areas_km2(zones: xr.Dataset) -> pd.Series:
    """Effective land area of every zone (km2)."""
    return zone_areas_m2(zones) / 1e6


# --------------------------------------------------------------------------- seasons and tables
JJA = (6, 7, 8)
NONSUMMER = (1, 2, 3, 4, 5, 9, 10, 11, 12)


def seasonal_from_monthly(monthly: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Seasonal sums (Tg C per season) of a monthly table (zone, flux, *by, year, month, tg_c).

    Seasons, labelled by ``year``:

    - ``annual``: January–December, complete years only;
    - ``jja``: June–August;
    - ``nonsummer``: the within-year non-summer, January–May + September–December of the same
      calendar year, so that annual = jja + nonsummer;
    - ``nonsummer_crossyear``: one continuous cold season, September–December of the previous
      year + January–May of ``year`` (the paper's "September–May"); the first year has none.

    A season is reported only when all its months are present.
    """
    keys = ["zone", "flux", *by]
    m = monthly[keys + ["year", "month", "tg_c"]]
    parts = []
    for season, months, shift in (
        ("annual", range(1, 13), False),
        ("jja", JJA, False),
        ("nonsummer", NONSUMMER, False),
        ("nonsummer_crossyear", NONSUMMER, True),
    ):
        sub = m[m.month.isin(list(months))]
        if shift:
            sub = sub.assign(year=np.where(sub.month >= 9, sub.year + 1, sub.year))
        g = sub.groupby(keys + ["year"], sort=True).agg(tg_c=("tg_c", "sum"), n=("month", "nunique")).reset_index()
        g = g[g.n == len(months)].drop(columns="n")
        parts.append(g.assign(season=season))
    return pd.concat(parts, ignore_index=True)[keys + ["season", "year", "tg_c"]]


def exact_nee_fire(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Set every ``nee_fire`` row's tg_c to the same table's ``nee`` + ``fire`` for the same keys,
    so that NEE + fire equals NEE plus fire emissions exactly at every aggregation level (a sum
    of monthly NEE + fire differs from the sum of the two sums in the last bits)."""
    if not {"nee", "fire", "nee_fire"} <= set(df.flux):
        return df
    a = df[df.flux == "nee"].set_index(keys).tg_c
    b = df[df.flux == "fire"].set_index(keys).tg_c
    mask = (df.flux == "nee_fire").to_numpy()
    idx = df.loc[mask].set_index(keys).index
    df = df.copy()
    df.loc[mask, "tg_c"] = (a.reindex(idx) + b.reindex(idx)).to_numpy()
    return df


def period_stats(est: pd.DataFrame, members: pd.DataFrame | None, areas: pd.Series) -> pd.DataFrame:
    """Period means per zone, flux and season: budget (Tg C yr-1) with the SD across bootstrap
    members of each member's own period mean; density (g C m-2 yr-1) with the SD across years.
    ``est`` and ``members`` come from :func:`seasonal_from_monthly` (members with ``member``)."""
    keys = ["zone", "flux", "season"]
    est = est.assign(density=est.tg_c * TG / est.zone.map(areas))
    g = est.groupby(keys, sort=False).agg(
        first_year=("year", "min"),
        last_year=("year", "max"),
        n_years=("year", "nunique"),
        tg_c=("tg_c", "mean"),
        density=("density", "mean"),
        density_sd_years=("density", "std"),
    )
    g = g.reset_index()
    if members is not None and len(members):
        sd = members.groupby(keys + ["member"]).tg_c.mean().groupby(keys).std(ddof=1).rename("tg_c_sd").reset_index()
        g = g.merge(sd, on=keys, how="left")
        g["density_sd_bootstrap"] = g.tg_c_sd * TG / g.zone.map(areas)
    return g


def insitu_annual(sites: pd.DataFrame, flux: str) -> pd.DataFrame:
    """Site-years with all 12 months of ``flux`` summed (g C m-2 yr-1), plus the within-year
    JJA and non-summer sums of those years; one row per site-year."""
    d = sites[sites[flux].notna()]
    g = d.groupby(["site_id", "year"])
    full = g.month.nunique()
    full = full[full == 12].index
    d = d.set_index(["site_id", "year"]).loc[full].reset_index()
    out = d.groupby(["site_id", "year"]).agg(annual=(flux, "sum")).reset_index()
    out["jja"] = d[d.month.isin(JJA)].groupby(["site_id", "year"])[flux].sum().to_numpy()
    out["nonsummer"] = out.annual - out.jja
    return out


def _site_stats(v: pd.Series, w: np.ndarray | None) -> dict:
    """Mean, SD and count of per-site values; ``w``: membership weights (None: every site)."""
    if w is None or np.isin(w, (0.0, 1.0)).all():  # a selection: plain mean and SD (ddof 1)
        s = v if w is None else v[w == 1.0]
        return {"insitu_mean": s.mean(), "insitu_sd": s.std(ddof=1), "insitu_sites": len(s)}
    ok = (w > 0) & v.notna().to_numpy()
    x, ww = v.to_numpy()[ok], w[ok]
    sw = ww.sum()
    mean = float((ww * x).sum() / sw) if sw > 0 else np.nan
    den = sw - (ww**2).sum() / sw if sw > 0 else 0.0  # reliability weights: ddof 1 for 0/1 weights
    sd = float(np.sqrt((ww * (x - mean) ** 2).sum() / den)) if den > 0 else np.nan
    return {"insitu_mean": mean, "insitu_sd": sd, "insitu_sites": int(ok.sum())}


def table1(
    sites: pd.DataFrame,
    period: pd.DataFrame,
    permafrost: tuple[str, float],
    groups=(
        ("all", None),
        ("boreal", ("biome", "boreal")),
        ("tundra", ("biome", "tundra")),
        ("permafrost", ("permafrost", True)),
        ("non-permafrost", ("permafrost", False)),
    ),
) -> pd.DataFrame:
    """The paper's Table 1: in situ next to upscaled, per group, flux and season.

    In situ: site-years with 12 months summed, averaged per site, then mean ± SD across sites
    (g C m-2 yr-1). Upscaled: the zone's density mean ± SD across years (g C m-2 yr-1) and budget
    ± bootstrap SD (Tg C yr-1), for NEE, NEE + fire, GPP, Reco and NEE as Reco − GPP.
    Group zones: all → domain; non-permafrost → no upscaled value (no such zone).

    ``permafrost``: the ``[budgets]`` (rule, threshold); a site's membership of the permafrost
    group is :func:`permafrost_weight` of the raw permafrost value of its cell (``sites``'
    ``permafrost`` column), of the non-permafrost group 1 − that: under ``"mask"`` a selection,
    under ``"weighted"`` weights (weighted mean, and SD with reliability weights; ``insitu_sites``
    counts the sites with a weight > 0). The same cells as the budgets' permafrost zone."""
    rule, threshold = permafrost
    zone_of = {"all": "domain", "boreal": "boreal", "tundra": "tundra", "permafrost": "permafrost"}
    rows = []
    p = period.set_index(["zone", "flux", "season"])
    for flux in ("gpp", "reco", "nee", "nee_derived", "nee_fire"):
        site_flux = {"nee_derived": None, "nee_fire": None}.get(flux, flux)
        ins = insitu_annual(sites, site_flux) if site_flux and site_flux in sites else None
        if ins is not None:
            attrs = sites.groupby("site_id").agg(biome=("biome", "first"), permafrost=("permafrost", "first"))
            per_site = ins.groupby("site_id")[["annual", "jja", "nonsummer"]].mean().join(attrs)
            pw = permafrost_weight(per_site["permafrost"], rule, threshold).to_numpy()
        for gname, cond in groups:
            for season in ("annual", "jja", "nonsummer"):
                r = {"group": gname, "flux": flux, "season": season}
                if ins is not None:
                    w = None
                    if cond is not None:
                        col, val = cond
                        if col == "permafrost":
                            w = pw if val else 1.0 - pw
                        else:
                            w = (per_site[col] == val).to_numpy(np.float64)
                    r.update(_site_stats(per_site[season], w))
                key = (zone_of.get(gname), flux, season)
                if key in p.index:
                    q = p.loc[key]
                    r.update(
                        density=q.density,
                        density_sd_years=q.density_sd_years,
                        budget=q.tg_c,
                        budget_sd=q.get("tg_c_sd", np.nan),
                        first_year=q.first_year,
                        last_year=q.last_year,
                    )
                rows.append(r)
    return pd.DataFrame(rows)


def table1_markdown(t: pd.DataFrame) -> str:
    """Table 1 as markdown: value ± SD, in situ and upscaled side by side."""

    def pm(a, b, fmt="{:.0f}"):
        return "" if pd.isna(a) else (fmt.format(a) + ("" if pd.isna(b) else " ± " + fmt.format(b)))

    lines = [
        "| group | flux | season | in situ (g C m-2 yr-1) | sites | upscaled (g C m-2 yr-1) | budget (Tg C yr-1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in t.itertuples():
        lines.append(
            f"| {r.group} | {r.flux} | {r.season} | {pm(getattr(r, 'insitu_mean', np.nan), getattr(r, 'insitu_sd', np.nan))} "
            f"| {'' if pd.isna(getattr(r, 'insitu_sites', np.nan)) else int(r.insitu_sites)} "
            f"| {pm(getattr(r, 'density', np.nan), getattr(r, 'density_sd_years', np.nan))} "
            f"| {pm(getattr(r, 'budget', np.nan), getattr(r, 'budget_sd', np.nan))} |"
        )
    return "\n".join(lines) + "\n"


def mean_annual_map(da: xr.DataArray) -> np.ndarray:
    """Mean over complete years of the annual sum of a monthly flux (g C m-2 yr-1), per cell."""
    ann = da.groupby("time.year").sum(min_count=12)
    return np.asarray(ann.mean("year").values, dtype=np.float64)


def map_statistics(
    fluxes: xr.Dataset, zones: xr.Dataset, veg=None, crs=None, threshold: float = 0.0, band: int = 256
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From the monthly maps, band by band (bounded memory): the share of each zone's effective
    area whose mean annual flux is > ``threshold`` (source areas, per flux variable), and the
    Pearson correlation of the pixels' mean annual flux with latitude (unweighted, cells with a
    value; needs ``crs``). Returns (source_shares, pixel_latitude_r)."""
    from pyproj import Transformer
    from scipy import stats

    zones = _with_area(zones)
    ny = zones.sizes["y"]
    acc, lat_acc = {}, {}
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True) if crs is not None else None
    names = None
    for i in range(0, ny, band):
        ys = slice(i, min(i + band, ny))
        w = zone_weights(zones.isel(y=ys), None if veg is None else _band(veg, ys))
        names = list(w.zone.values)
        wv = w.values.reshape(w.sizes["zone"], -1)
        lat = None
        if tr is not None:
            xx, yy = np.meshgrid(zones.x.values, zones.y.values[ys])
            lat = tr.transform(xx, yy)[1].ravel()
        for v in fluxes.data_vars:
            m = mean_annual_map(fluxes[v].isel(y=ys)).ravel()
            ok = np.isfinite(m)
            src = ok & (m > threshold)
            a = acc.setdefault(v, np.zeros((2, wv.shape[0])))
            a[0] += wv[:, src].sum(1)
            a[1] += wv[:, ok].sum(1)
            if lat is not None:
                x, y = lat[ok], m[ok]
                s_ = lat_acc.setdefault(v, np.zeros(6))
                s_ += [len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
    rows = []
    for v, a in acc.items():
        rows.append(
            pd.DataFrame(
                {
                    "flux": v,
                    "zone": names,
                    "threshold_g_m2_yr": threshold,
                    "source_area_km2": a[0] / 1e6,
                    "area_with_value_km2": a[1] / 1e6,
                    "source_share": a[0] / np.where(a[1] > 0, a[1], np.nan),
                }
            )
        )
    lat_rows = []
    for v, (n, sx, sy, sxx, syy, sxy) in lat_acc.items():
        r = (n * sxy - sx * sy) / np.sqrt((n * sxx - sx * sx) * (n * syy - sy * sy))
        t = r * np.sqrt((n - 2) / max(1 - r * r, 1e-300))
        lat_rows.append(
            {"data": "pixels", "flux": v, "n": int(n), "pearson_r": float(r), "p": float(2 * stats.t.sf(abs(t), n - 2))}
        )
    return pd.concat(rows, ignore_index=True), pd.DataFrame(lat_rows)


def insitu_sources(sites: pd.DataFrame, threshold: float = 0.0) -> pd.DataFrame:
    """Sites whose mean annual NEE (site-years with 12 months) is > threshold: per region, the
    number of sites, of source sites, the share of the region's sites that are sources and the
    region's share of all source sites (the paper: 44 % of source sites in Alaska)."""
    ins = insitu_annual(sites, "nee").groupby("site_id").annual.mean()
    reg = sites.groupby("site_id").region.first().reindex(ins.index).fillna("outside")
    df = pd.DataFrame({"nee": ins, "region": reg, "source": ins > threshold})
    g = df.groupby("region").agg(sites=("nee", "size"), source_sites=("source", "sum")).reset_index()
    tot = pd.DataFrame([{"region": "all", "sites": len(df), "source_sites": int(df.source.sum())}])
    g = pd.concat([g, tot], ignore_index=True)
    g["source_share_of_sites"] = g.source_sites / g.sites
    g["share_of_all_source_sites"] = g.source_sites / max(int(df.source.sum()), 1)
    g["threshold_g_m2_yr"] = threshold
    return g


def decadal_monthly(
    monthly: pd.DataFrame,
    members: pd.DataFrame | None,
    areas: pd.Series,
    decades: list[tuple[int, int]],
    zones=("boreal", "tundra"),
    fluxes=("nee", "gpp", "reco"),
) -> pd.DataFrame:
    """The paper's Fig. 3: mean monthly flux density (g C m-2 month-1) per zone and calendar
    month for each decade, the difference between the last and the first decade, and the SD
    across bootstrap members of each (each member's decadal mean first)."""

    def dens(df):
        df = df[df.zone.isin(zones) & df.flux.isin(fluxes)]
        return df.assign(d=df.tg_c * TG / df.zone.map(areas))

    def per_decade(df, by=()):
        out = []
        for a, b in decades:
            sub = df[(df.year >= a) & (df.year <= b)]
            g = sub.groupby(["zone", "flux", *by, "month"]).d.mean().rename(f"{a}-{b}")
            out.append(g)
        t = pd.concat(out, axis=1)
        t["difference"] = t[f"{decades[-1][0]}-{decades[-1][1]}"] - t[f"{decades[0][0]}-{decades[0][1]}"]
        return t

    est = per_decade(dens(monthly))
    cols = list(est.columns)
    res = est.reset_index().melt(
        id_vars=["zone", "flux", "month"], value_vars=cols, var_name="period", value_name="g_c_m2_month"
    )
    if members is not None and len(members):
        mt = per_decade(dens(members), by=("member",))
        sd = (
            mt.groupby(["zone", "flux", "month"])
            .std(ddof=1)
            .reset_index()
            .melt(id_vars=["zone", "flux", "month"], value_vars=cols, var_name="period", value_name="sd_bootstrap")
        )
        res = res.merge(sd, on=["zone", "flux", "month", "period"], how="left")
    return res.sort_values(["flux", "zone", "period", "month"]).reset_index(drop=True)


def seasonal_amplitude(monthly: pd.DataFrame, zone: str = "domain", flux: str = "nee") -> tuple[pd.DataFrame, dict]:
    """Seasonal amplitude of a zone's monthly flux per year: maximum − minimum of the 12
    monthly budgets (Tg C month-1). Its change over the period is the Theil–Sen slope times
    (last − first year), as a % of the Theil–Sen line's value in the first year."""
    from .trends import trend_series

    d = monthly[(monthly.zone == zone) & (monthly.flux == flux)]
    g = d.groupby("year").tg_c.agg(["max", "min", "size"])
    g = g[g["size"] == 12]
    amp = (g["max"] - g["min"]).rename("amplitude_tg_c_month").reset_index()
    years = amp.year.to_numpy()
    r = trend_series(amp.amplitude_tg_c_month.to_numpy(), years)
    slope = r["slope"]
    start = float(np.median(amp.amplitude_tg_c_month.to_numpy() - slope * (years - years[0])))
    change = slope * (years[-1] - years[0])
    info = {
        "zone": zone,
        "flux": flux,
        "first_year": int(years[0]),
        "last_year": int(years[-1]),
        "slope_tg_c_month_per_yr": slope,
        "p": r["p"],
        "start_value": start,
        "change_tg_c_month": change,
        "change_percent": 100 * change / start if start else np.nan,
    }
    return amp, info


def site_latitude_correlation(sites: pd.DataFrame) -> pd.DataFrame:
    """Pearson r (two-sided p) of the sites' mean annual NEE (site-years with 12 months) with
    their latitude."""
    from scipy.stats import pearsonr

    ins = insitu_annual(sites, "nee").groupby("site_id").annual.mean()
    lat = sites.groupby("site_id").lat.first().reindex(ins.index)
    if len(ins) < 3:
        return pd.DataFrame([{"data": "sites", "flux": "nee", "n": len(ins), "pearson_r": np.nan, "p": np.nan}])
    r = pearsonr(lat.to_numpy(float), ins.to_numpy(float))
    return pd.DataFrame(
        [{"data": "sites", "flux": "nee", "n": len(ins), "pearson_r": float(r.statistic), "p": float(r.pvalue)}]
    )


# ---------------------------------------------------------------------------- the budgets step's tables
KEYS = ["zone", "time", "year", "month"]


def with_fire(
    monthly: pd.DataFrame, fire_monthly: pd.DataFrame, members: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Add fire (``fire_monthly``: zone-month fire emission budgets, Tg C) and NEE + fire to the
    monthly budgets, over their months; the bootstrap members get NEE + fire with the same
    emissions (fire carries no bootstrap uncertainty)."""
    fm = fire_monthly.assign(flux="fire")
    fm = fm[fm.time.isin(monthly.time.unique())]
    fire = fm[KEYS + ["tg_c"]]
    nee = monthly[monthly.flux == "nee"].merge(fire.rename(columns={"tg_c": "fire"}), on=KEYS)
    monthly = pd.concat(
        [monthly, fm, nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.fire).drop(columns="fire")], ignore_index=True
    )
    if members is not None:
        nee = members[members.flux == "nee"].merge(fire.rename(columns={"tg_c": "fire"}), on=KEYS)
        members = pd.concat(
            [members, nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.fire).drop(columns="fire")], ignore_index=True
        )
    return monthly, members


def density(df: pd.DataFrame, areas: pd.Series) -> pd.Series:
    """g C m-2 of each row's budget (Tg C) over its zone's land area (m2)."""
    return df.tg_c * TG / df.zone.map(areas)


def budget_tables(monthly: pd.DataFrame, members: pd.DataFrame | None, areas: pd.Series) -> dict[str, Any]:
    """The monthly, seasonal (every year) and period tables of ``budgets/``, with densities and
    the SD across the bootstrap members (when given); also the seasonal budgets (``seas``) and
    the members' (``seas_members``) that the other tables are built from."""
    kinds = {z: zone_kind(z) for z in areas.index}
    mo = monthly.assign(density_g_m2=density(monthly, areas))
    if members is not None:
        sd = members.groupby(["zone", "flux", "time"]).tg_c.std(ddof=1).rename("tg_c_sd").reset_index()
        mo = mo.merge(sd, on=["zone", "flux", "time"], how="left")
    mo.insert(1, "kind", mo.zone.map(kinds))
    seas = exact_nee_fire(seasonal_from_monthly(monthly), ["zone", "season", "year"])
    seas_m = seasonal_from_monthly(members, by=("member",)) if members is not None else None
    st = seas.assign(density_g_m2=density(seas, areas))
    if seas_m is not None:
        sd = seas_m.groupby(["zone", "flux", "season", "year"]).tg_c.std(ddof=1).rename("tg_c_sd").reset_index()
        st = st.merge(sd, on=["zone", "flux", "season", "year"], how="left")
    st.insert(1, "kind", st.zone.map(kinds))
    period = period_stats(seas, seas_m, areas)
    period.insert(1, "kind", period.zone.map(kinds))
    return {"monthly": mo.drop(columns="time"), "seasonal": st, "period": period, "seas": seas, "seas_members": seas_m}


def annual_table(
    monthly: pd.DataFrame,
    areas: pd.Series,
    seasonal: pd.DataFrame,
    period: pd.DataFrame,
    has_members: bool,
    extrapolation: pd.DataFrame | None = None,
    network: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``budgets_annual.csv`` (annual budgets with coverage, density and, with bootstrap members,
    their SD) and the period-mean SD table ``budgets_period_sd.csv`` (None without members).
    ``extrapolation``: zone-month extrapolation SD terms (:func:`add_extrapolation_sd`);
    ``network``: the network simulation's (zone-year, period) error summaries
    (:func:`add_network_sd`)."""
    ann = exact_nee_fire(annual_from_monthly(monthly.assign(coverage=monthly.coverage.fillna(1.0))), ["zone", "year"])
    ann["density_g_m2"] = density(ann, areas)
    p_sd = None
    if has_members:
        a_sd = seasonal[seasonal.season == "annual"][["zone", "flux", "year", "tg_c_sd"]]
        ann = ann.merge(a_sd, on=["zone", "flux", "year"], how="left")
        p_sd = period[period.season == "annual"][["zone", "flux", "tg_c_sd"]].rename(
            columns={"tg_c_sd": "period_mean_tg_c_sd"}
        )
        if extrapolation is not None:
            ann, p_sd = add_extrapolation_sd(ann, p_sd, extrapolation)
        if network is not None:
            ann, p_sd = add_network_sd(ann, p_sd, *network)
    return ann.sort_values(["flux", "zone", "year"]).reset_index(drop=True), p_sd


def table1_text(t1: pd.DataFrame, y0: int, y1: int, note: str | None) -> str:
    """``budgets/table1.md``."""
    return (
        f"# Table 1: average Arctic–boreal CO2 fluxes, {y0}–{y1}\n\n"
        "In situ: site-years with 12 months, averaged per site, mean ± SD across sites. "
        "Upscaled: area-weighted density, mean ± SD across years; budget ± SD across the "
        "bootstrap forests. nonsummer = January–May + September–December of the same year "
        "(annual = jja + nonsummer).\n\n" + (note + "\n\n" if note else "") + table1_markdown(t1)
    )


def decades(y0: int, y1: int, length: int) -> list[tuple[int, int]]:
    """Whole periods of ``length`` years from ``y0`` within ``y1`` (Fig. 3 compares the first and last)."""
    return [(a, a + length - 1) for a in range(y0, y1 + 1, length) if a + length - 1 <= y1]


def amplitude_tables(monthly: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NEE's seasonal amplitude per year and its change, for the domain, biomes and permafrost."""
    amps, changes = [], []
    for z in ("domain", "boreal", "tundra", "permafrost"):
        amp, info = seasonal_amplitude(monthly, zone=z, flux="nee")
        amps.append(amp.assign(zone=z))
        changes.append(info)
    return pd.concat(amps, ignore_index=True), pd.DataFrame(changes)


def add_extrapolation_sd(ann: pd.DataFrame, p_sd: pd.DataFrame, ext: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annual and period-mean budgets get the extrapolation SD term (``tg_c_sd_extrap``) and the
    total ``tg_c_sd_total = sqrt(bootstrap SD² + extrapolation SD²)`` (the two independent).
    The zone-month terms are added over the months of a year and averaged over the years: the
    error is taken as fully correlated in time as in space (conservative). NEE + fire carries
    NEE's term (fire has none); Reco − GPP carries none (its GPP and Reco errors are not
    modelled jointly), so its total is its bootstrap SD."""
    a = ext.groupby(["zone", "flux", "year"]).tg_c_sd_extrap.sum().reset_index()
    a = pd.concat([a, a[a.flux == "nee"].assign(flux="nee_fire")], ignore_index=True)
    ann = ann.merge(a, on=["zone", "flux", "year"], how="left")
    ann["tg_c_sd_total"] = np.sqrt(ann.tg_c_sd**2 + ann.tg_c_sd_extrap.fillna(0.0) ** 2)
    p = a.groupby(["zone", "flux"]).tg_c_sd_extrap.mean().rename("period_mean_tg_c_sd_extrap").reset_index()
    p_sd = p_sd.merge(p, on=["zone", "flux"], how="left")
    p_sd["period_mean_tg_c_sd_total"] = np.sqrt(
        p_sd.period_mean_tg_c_sd**2 + p_sd.period_mean_tg_c_sd_extrap.fillna(0.0) ** 2
    )
    return ann, p_sd


def add_network_sd(
    ann: pd.DataFrame, p_sd: pd.DataFrame, summary: pd.DataFrame, period: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annual and period-mean budgets get the network-simulation term (``tg_c_sd_network``,
    ``period_mean_tg_c_sd_network``): the RMS over the replicates of estimate − surrogate truth
    of that zone, flux and year (``summary``) or of the period mean (``period``), so a
    systematic error of the method found in the simulation counts as well as the spread
    (:mod:`abzflux.network`). The total adds the terms in quadrature:
    ``tg_c_sd_total = sqrt(bootstrap SD² + extrapolation SD² + network term²)`` (absent terms 0).
    NEE + fire carries NEE's term (fire has none); Reco − GPP has its own (the replicates' GPP and
    Reco forests give it)."""
    a = summary[["zone", "flux", "year", "rms_error"]].rename(columns={"rms_error": "tg_c_sd_network"})
    a = pd.concat([a, a[a.flux == "nee"].assign(flux="nee_fire")], ignore_index=True)
    ann = ann.drop(columns=["tg_c_sd_network"], errors="ignore").merge(a, on=["zone", "flux", "year"], how="left")
    ext = ann["tg_c_sd_extrap"].fillna(0.0) if "tg_c_sd_extrap" in ann else 0.0
    ann["tg_c_sd_total"] = np.sqrt(ann.tg_c_sd**2 + ext**2 + ann.tg_c_sd_network.fillna(0.0) ** 2)
    p = period[["zone", "flux", "rms_error"]].rename(columns={"rms_error": "period_mean_tg_c_sd_network"})
    p = pd.concat([p, p[p.flux == "nee"].assign(flux="nee_fire")], ignore_index=True)
    p_sd = p_sd.drop(columns=["period_mean_tg_c_sd_network"], errors="ignore").merge(p, on=["zone", "flux"], how="left")
    pext = p_sd["period_mean_tg_c_sd_extrap"].fillna(0.0) if "period_mean_tg_c_sd_extrap" in p_sd else 0.0
    p_sd["period_mean_tg_c_sd_total"] = np.sqrt(
        p_sd.period_mean_tg_c_sd**2 + pext**2 + p_sd.period_mean_tg_c_sd_network.fillna(0.0) ** 2
    )
    return ann, p_sd
