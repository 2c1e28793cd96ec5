"""Budgets: fluxes (g C m-2 month-1) summed over zones and years to Tg C yr-1.

Tg C = Σ flux [g C m-2] × cell_area [m2] × land_fraction × membership / 1e12, where membership
is 1 inside a zone and 0 outside. The permafrost zone uses the zones file's ``permafrost``
value as membership: a 0/1 mask selects the permafrost region; a probability gives the
permafrost-area-weighted budget. Cells whose flux is missing contribute nothing; the share of
each zone's area that had a value is reported as ``coverage``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .domain import BIOMES, REGIONS

TG = 1e12  # g per Tg


def _codes(da: xr.DataArray, default: tuple[str, ...]) -> dict[int, str]:
    vals = da.attrs.get("flag_values")
    names = da.attrs.get("flag_meanings")
    if vals is None or names is None:
        return {i + 1: n for i, n in enumerate(default)}
    return {int(v): n for v, n in zip(np.atleast_1d(vals), str(names).split())}


def zone_weights(zones: xr.Dataset) -> xr.DataArray:
    """Effective land area (m2) of every cell in every zone: dims (zone, y, x).

    Zones: ``domain``, each biome, each region and ``permafrost``.
    """
    lf = zones["land_fraction"].fillna(0).astype(np.float64)
    if "cell_area" in zones:
        area = zones["cell_area"].astype(np.float64)
    else:
        dx = float(abs(zones.x[1] - zones.x[0]))
        dy = float(abs(zones.y[1] - zones.y[0]))
        area = xr.full_like(lf, dx * dy)
    base = (lf * area).fillna(0)
    layers = {"domain": base}
    for var, default in (("biome", BIOMES), ("region", REGIONS)):
        for code, name in _codes(zones[var], default).items():
            layers[name] = base.where(zones[var] == code, 0.0)
    layers["permafrost"] = base * zones["permafrost"].fillna(0).astype(np.float64)
    w = xr.concat(list(layers.values()), dim=pd.Index(list(layers), name="zone"))
    return w.transpose("zone", "y", "x").compute()


def monthly_budgets(fluxes: xr.Dataset, zones: xr.Dataset, band: int = 256) -> pd.DataFrame:
    """Tg C month-1 per zone, month and flux variable; long table.

    Columns: zone, time, year, month, flux, tg_c, coverage (share of the zone's area with a
    value that month). The grid is read in bands of ``band`` rows and the time axis in the
    variable's chunks, so memory stays bounded for any grid size and period.
    """
    for c in ("y", "x"):  # weights are matched to cells by position: the grids must be identical
        if not np.array_equal(np.asarray(fluxes[c].values), np.asarray(zones[c].values)):
            raise ValueError(f"flux grid and zones grid differ along {c!r}")
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
            w = zone_weights(zones.isel(y=ys))
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
                tg[t0:t0 + step] += np.where(valid, block, 0.0) @ wv.T
                cov[t0:t0 + step] += valid.astype(np.float64) @ wv.T
        if total is None:
            total = np.asarray(zone_areas_m2(zones, band).loc[zone_names].values)
        tg /= TG
        cov /= np.where(total > 0, total, 1.0)
        for zi, zone in enumerate(zone_names):
            out.append(pd.DataFrame({"zone": zone, "time": times, "year": times.year, "month": times.month,
                                     "flux": name, "tg_c": tg[:, zi], "coverage": cov[:, zi]}))
    return pd.concat(out, ignore_index=True)


def zone_areas_m2(zones: xr.Dataset, band: int = 256) -> pd.Series:
    """Effective land area (m2) of every zone, summed band by band."""
    ny = zones.sizes["y"]
    total = None
    for i in range(0, ny, band):
        a = zone_weights(zones.isel(y=slice(i, min(i + band, ny)))).sum(("y", "x")).to_series()
        total = a if total is None else total + a
    return total


def annual_from_monthly(monthly: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Sum complete years (12 months) of a monthly budget table to Tg C yr-1 (per ``by`` too)."""
    g = monthly.groupby(["zone", "flux", *by, "year"])
    ann = g.agg(tg_c=("tg_c", "sum"), n_months=("month", "nunique"), coverage=("coverage", "min")).reset_index()
    return ann[ann.n_months == 12].drop(columns="n_months").reset_index(drop=True)


def annual_budgets(fluxes: xr.Dataset, zones: xr.Dataset, fire: xr.Dataset | None = None) -> pd.DataFrame:
    """Annual budgets (Tg C yr-1): columns zone, flux, year, tg_c, coverage, density_g_m2.

    With ``fire``, adds ``fire`` (emissions) and ``nee_fire`` (NEE + fire emissions) for the
    years both cover. ``density_g_m2`` is the area-weighted mean flux, budget / zone area.
    """
    mon = monthly_budgets(fluxes, zones)
    ann = annual_from_monthly(mon)
    if fire is not None and "nee" in fluxes:
        fb = annual_from_monthly(monthly_budgets(fire[["fire_emissions"]], zones))
        fb["flux"] = "fire"
        nee = ann[ann.flux == "nee"].merge(fb, on=["zone", "year"], suffixes=("", "_f"))
        nf = nee.assign(flux="nee_fire", tg_c=nee.tg_c + nee.tg_c_f,
                        coverage=np.minimum(nee.coverage, nee.coverage_f))[["zone", "flux", "year", "tg_c", "coverage"]]
        ann = pd.concat([ann, fb[fb.year.isin(nee.year)], nf], ignore_index=True)
    area = zone_areas_m2(zones)
    ann["density_g_m2"] = ann.tg_c * TG / ann.zone.map(area)
    return ann.sort_values(["flux", "zone", "year"]).reset_index(drop=True)


def zone_areas_km2(zones: xr.Dataset) -> pd.Series:
    """Effective land area of every zone (km2)."""
    return zone_areas_m2(zones) / 1e6
