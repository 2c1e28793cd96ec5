"""Coverage: the land area the zones define against the land area the upscaling can predict.

A land cell (``land_fraction`` > 0) is predicted in a month only where every predictor the
forests use is finite there (static layers in every month); elsewhere the upscaled flux is NaN
and the cell contributes nothing to the budgets. A NaN layer, a lost Zarr chunk or a NaN
vegetation type therefore shrinks the domain the budgets cover, silently. This module measures
that loss per zone (the budgets' zones: :func:`abzflux.budgets.zone_weights`) and month or year:

- :func:`monthly_coverage`: arrays in, table out (no file access): land area and predicted area
  (km2) per zone and month, the share lost, and the layers responsible;
- :func:`annual_coverage`: per zone and year, the worst month (the smallest predicted area);
- :func:`check_coverage`: a warning (``logging``) above ``budgets.coverage_warn`` and an
  :class:`~abzflux.errors.InputError` above ``budgets.coverage_stop`` (docs/budgets.md);
- :func:`fire_period` / :func:`check_fire_years`: the fire period and the rule that it has every
  month (docs/fire.md), so that no fire or NEE + fire mean covers other years than its label.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dask
import dask.array
import numpy as np
import pandas as pd
import xarray as xr

from . import budgets as budgets_mod
from .errors import InputError

LOG = logging.getLogger(__name__)
M2_PER_KM2 = 1e6
READ_BYTES = 64 * 2**20  # float64 values of the dynamic layers read at a time (layers x months x cells)
COLUMNS = ("zone", "year", "land_km2", "predicted_km2", "share_lost", "worst_month", "variables")


def _lost_area(mask: np.ndarray, wv: np.ndarray) -> np.ndarray:
    """Area (m2) per (row of ``mask``, zone) of the cells set in ``mask`` (rows, cells); only the
    columns with a set cell are multiplied (missing cells are usually few)."""
    cols = mask.any(axis=0)
    if not cols.any():
        return np.zeros((mask.shape[0], wv.shape[0]))
    return mask[:, cols].astype(np.float64) @ wv[:, cols].T


def _read(arrays: list) -> list:
    """The values of DataArrays; the dask-backed ones in one compute (each chunk read once)."""
    lazy = [i for i, a in enumerate(arrays) if isinstance(a.data, dask.array.Array)]
    done = dask.compute(*[arrays[i].data for i in lazy])
    vals = [None if i in lazy else np.asarray(a.values) for i, a in enumerate(arrays)]
    for i, v in zip(lazy, done):
        vals[i] = v
    return vals


def zone_weight_bands(zones: xr.Dataset, veg=None, band: int = 256) -> list:
    """The zones' weights (m2 of land per zone and cell, :func:`abzflux.budgets.zone_weights`) band
    by band of ``band`` rows: a list of (rows, zone names, weights (zone, cell)), for
    :func:`monthly_coverage` calls on the same grid (computed once)."""
    return list(iter_weight_bands(zones, veg, band))


def iter_weight_bands(zones: xr.Dataset, veg=None, band: int = 256):
    """:func:`zone_weight_bands` one band at a time (bounded memory on any grid)."""
    zones = budgets_mod.with_cell_area(zones)
    ny = zones.sizes["y"]
    for i0 in range(0, ny, band):  # bands in a fixed order: sums are reproducible
        ys = slice(i0, min(i0 + band, ny))
        vb = (
            None
            if veg is None
            else np.asarray(veg.isel(y=ys).values if isinstance(veg, xr.DataArray) else np.asarray(veg)[ys])
        )
        w = budgets_mod.zone_weights(zones.isel(y=ys), vb)
        yield ys, [str(z) for z in w.zone.values], w.values.reshape(w.sizes["zone"], -1)


def monthly_coverage(
    layers: Mapping[str, xr.DataArray],
    zones: xr.Dataset,
    veg=None,
    times=None,
    band: int = 256,
    weights: list | None = None,
) -> pd.DataFrame:
    """Land area (km2) the zones define and the area (km2) where every layer is finite, per zone
    and month.

    ``layers``: name -> (time, y, x) or static (y, x) layer on the zones' grid (values only
    matter through ``np.isfinite``); ``times``: the months to measure (default: those of the
    first dynamic layer; dynamic layers are selected on them). ``veg``: vegetation classes
    (y, x) for the vegetation × region zones, as in :func:`abzflux.budgets.zone_weights`.
    ``weights``: :func:`zone_weight_bands` of ``zones`` and ``veg``, when computed already.

    Returns a long table: zone, time, year, month, land_km2, predicted_km2, share_lost (lost /
    land; 0 for a zone without land) and variables (the layers not finite on some of the zone's
    land that month, most area first, ``;``-separated; empty when none). The grid is read in
    bands of ``band`` rows and bounded blocks of months, so memory stays bounded.
    """
    dyn = {k: v.transpose("time", "y", "x") for k, v in layers.items() if "time" in v.dims}
    sta = {k: v.transpose("y", "x") for k, v in layers.items() if "time" not in v.dims}
    if times is None:
        if not dyn:
            raise ValueError("monthly_coverage: no dynamic layer and no times given")
        times = next(iter(dyn.values())).time.values
    times = pd.DatetimeIndex(times)
    dyn = {k: v.sel(time=times) for k, v in dyn.items()}
    names = list(layers)
    nt = len(times)
    zone_names, land, lost, by = None, None, None, None
    bands = weights if weights is not None else iter_weight_bands(zones, veg, band)
    for ys, zn, wv in bands:
        if zone_names is None:
            zone_names = zn
            land = np.zeros(len(zone_names))
            lost = np.zeros((nt, len(zone_names)))
            by = np.zeros((len(names), nt, len(zone_names)))
        land += wv.sum(axis=1)
        onland = (wv > 0).any(axis=0)
        if not onland.any():
            continue
        static_any = np.zeros(onland.shape, bool)
        svals = _read([v.isel(y=ys) for v in sta.values()])
        for k, vals in zip(sta, svals):
            bad = ~np.isfinite(np.asarray(vals, dtype=np.float64)).ravel() & onland
            if bad.any():
                static_any |= bad
                by[names.index(k)] += _lost_area(bad[None], wv)  # every month
        step = max(1, READ_BYTES // max(1, wv.shape[1] * 8 * max(1, len(dyn))))
        for t0 in range(0, nt, step):
            ts = slice(t0, min(t0 + step, nt))
            union = np.broadcast_to(static_any, (ts.stop - t0, static_any.size)).copy()
            # one read of every layer's block (a dask graph computed once, not per layer)
            blocks = _read([v.isel(time=ts, y=ys) for v in dyn.values()])
            for k, block in zip(dyn, blocks):
                bad = ~np.isfinite(np.asarray(block, dtype=np.float64).reshape(ts.stop - t0, -1)) & onland
                if bad.any():
                    union |= bad
                    by[names.index(k), ts] += _lost_area(bad, wv)
            lost[ts] += _lost_area(union, wv)
    nz = len(zone_names)
    zi, ti = np.meshgrid(np.arange(nz), np.arange(nt), indexing="ij")  # zone-major, months within
    zi, ti = zi.ravel(), ti.ravel()
    lz = lost.T.ravel()
    a = land[zi]
    variables = np.full(len(zi), "", dtype=object)
    for k in np.nonzero(by.any(axis=0).T.ravel())[0]:  # only zone-months with a missing layer
        vals = by[:, ti[k], zi[k]]
        variables[k] = ";".join(names[n] for n in sorted(np.nonzero(vals > 0)[0], key=lambda n: -vals[n]))
    return pd.DataFrame(
        {
            "zone": np.asarray(zone_names, dtype=object)[zi],
            "time": times[ti],
            "year": times.year[ti],
            "month": times.month[ti],
            "land_km2": a / M2_PER_KM2,
            "predicted_km2": (a - lz) / M2_PER_KM2,
            "share_lost": np.divide(lz, a, out=np.zeros_like(lz), where=a > 0),
            "variables": variables,
        }
    )


def annual_coverage(monthly: pd.DataFrame) -> pd.DataFrame:
    """Per zone and year, from :func:`monthly_coverage`: land_km2, predicted_km2 and share_lost of
    the year's worst month (the smallest predicted area; ``worst_month`` YYYY-MM, the first of
    equals) and the variables missing in any month of the year (the worst month's first)."""
    m = monthly.reset_index(drop=True)
    worst = m.loc[m.groupby(["zone", "year"], sort=False).share_lost.idxmax().to_numpy()].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "zone": worst.zone,
            "year": worst.year.astype(int),
            "land_km2": worst.land_km2,
            "predicted_km2": worst.predicted_km2,
            "share_lost": worst.share_lost,
            "worst_month": pd.DatetimeIndex(worst.time).strftime("%Y-%m"),
            "variables": worst.variables.astype(str),
        }
    )
    missing = m[m.variables.astype(str) != ""]
    if len(missing):
        union = {}
        for (z, y), g in missing.groupby(["zone", "year"], sort=False):
            union[(z, int(y))] = g.variables
        for i, r in enumerate(out.itertuples()):
            if (r.zone, r.year) in union:
                names = [n for n in r.variables.split(";") if n]
                for v in union[(r.zone, r.year)]:
                    names += [n for n in v.split(";") if n and n not in names]
                out.loc[i, "variables"] = ";".join(names)
    return out[list(COLUMNS)]


def above(annual: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The zone-years of :func:`annual_coverage` that lose more than ``threshold``, worst first
    (the zones' order among equals)."""
    a = annual[annual.share_lost > threshold]
    return a.iloc[np.argsort(-a.share_lost.to_numpy(), kind="stable")]


def describe(r, what: str) -> str:
    """One zone-year of :func:`annual_coverage` in words."""
    return (
        f"{r.share_lost:.2%} of zone {r.zone}'s land in {r.year} has no {what} "
        f"({_km2(r.predicted_km2)} of {_km2(r.land_km2)} km2 with {what} in {r.worst_month})"
    )


def _km2(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def check_coverage(
    annual: pd.DataFrame,
    warn: float,
    stop: float,
    file,
    what: str = "predictors",
    remedy: str = "fill the gaps, or set land_fraction to 0 where no prediction is wanted",
) -> None:
    """Warn (``logging``, one line) when a zone-year loses more than ``warn`` of its land, and
    raise :class:`InputError` naming the variable(s), the zone, the year and the share when one
    loses more than ``stop`` (the worst zone-year; ``stop`` = 1 never stops)."""
    bad = above(annual, stop)
    if len(bad):
        r = bad.iloc[0]
        more = f" (and {len(bad) - 1} more zone-year(s) above {stop:g})" if len(bad) > 1 else ""
        raise InputError(
            file,
            f"{r.variables or 'a layer'} not finite on land: {describe(r, what)}; the budgets "
            "would silently cover a smaller domain",
            column=r.variables or None,
            where=f"zone {r.zone}, year {r.year}{more}",
            expected=f"finite {what} on every land cell (land_fraction > 0): {remedy}, or raise "
            f"budgets.coverage_stop (now {stop:g}; 1 never stops)",
        )
    w = above(annual, warn)
    if len(w):
        r = w.iloc[0]
        LOG.warning(
            "%s: coverage: %d zone-year(s) lose more than %g of their land to missing %s (budgets."
            "coverage_warn); worst: %s, variable(s) %s",
            file,
            len(w),
            warn,
            what,
            describe(r, what),
            r.variables or "-",
        )


def fire_period(fire_times, first_year: int | None, y0: int, y1: int) -> tuple[int, int, pd.DatetimeIndex]:
    """The fire period of a run of years ``y0``-``y1``: from ``fire.first_year`` (default: the fire
    file's first year), but not before ``y0``, to ``y1``; and the months of it the fire file lacks."""
    t = pd.DatetimeIndex(fire_times)
    f0 = max(int(first_year) if first_year is not None else int(t.year.min()), y0)
    want = pd.date_range(f"{f0}-01-01", f"{y1}-12-01", freq="MS")
    return f0, y1, want.difference(t.to_period("M").to_timestamp())


def check_fire_years(fire_times, first_year: int | None, y0: int, y1: int, file) -> tuple[int, int]:
    """The fire rule (docs/fire.md): fire emissions and NEE + fire are reported for the fire
    period (:func:`fire_period`), which must have every month in the fire file; a record that
    starts after the run's first year is logged (its means cover the fire period only)."""
    t = pd.DatetimeIndex(fire_times)
    f0, f1, missing = fire_period(t, first_year, y0, y1)
    if f0 > y1:
        raise InputError(
            file,
            f"the fire period starts in {f0}, after the run's last year {y1}",
            column="time",
            expected=f"fire months within the run's years {y0}-{y1} (fire.first_year <= {y1})",
        )
    if len(missing):
        months = ", ".join(m.strftime("%Y-%m") for m in missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise InputError(
            file,
            f"{len(missing)} month(s) of the fire period {f0}-{f1} missing from the fire file; "
            "their fire emissions and NEE + fire would silently drop out of the period means",
            column="time",
            where=months,
            expected=f"every month from fire.first_year (default: the fire file's first year) to the "
            f"run's last year {y1}: set fire.first_year past a gap at the start, or run.years "
            "to end where the fire record ends",
        )
    if f0 > y0:
        LOG.warning(
            "%s: fire covers %d-%d of the run's %d-%d: fire and NEE + fire means are over %d-%d "
            "(budgets/period.csv first_year, last_year; summary.md)",
            file,
            f0,
            f1,
            y0,
            y1,
            f0,
            f1,
        )
    return f0, f1


def years_note(period: pd.DataFrame, y0: int, y1: int) -> str:
    """A sentence naming the fluxes whose period means cover other years than ``y0``-``y1``
    (``period``: flux, first_year, last_year per row, e.g. fire and NEE + fire over the fire
    period); empty when every mean covers ``y0``-``y1``."""
    p = period.drop_duplicates(["flux", "first_year", "last_year"])
    p = p[(p.first_year != y0) | (p.last_year != y1)]
    if not len(p):
        return ""
    parts = [f"{r.flux} {int(r.first_year)}–{int(r.last_year)}" for r in p.itertuples()]
    return (
        f"Means over other years than {y0}–{y1}: "
        + ", ".join(parts)
        + " (fire and NEE + fire: the fire period, docs/fire.md)."
    )
