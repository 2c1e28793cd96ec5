"""Source time steps -> the target months (docs/prepare_core.md, "Time").

Every layer's time handling is one weight matrix ``W`` (target months x source steps): a target
month's value is ``sum_i W[m, i] * v_i / sum_i W[m, i]`` over the source steps ``i`` with data
(NaN-aware), so

- **monthly**: ``W`` selects the step of the month (a missing month is an error);
- **daily / 8-day**: ``W[m, i]`` = the number of days of step ``i`` inside month ``m``: an 8-day
  composite starting 28 January counts 4 days in January and 4 in February (day-weighted
  monthly means). A step covers ``[start, start + length)``, cut at 1 January (composites restart
  each year, so the year's last composite is 5 or 6 days long);
- **annual**: the layer of the month's year (``options.year_fallback = {"1994" = 1993}`` names
  a stand-in year for a missing one, as the paper does for AVHRR VCF 1994 and 2000);
- **static**: no time (written as a ``(y, x)`` variable).

Gap filling (``options.gapfill``, NDVI and LST by default) works per cell on the monthly
series, after aggregation and regridding: see :func:`gapfill`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import InputError
from .layer import LayerSpec

#: Default gap filling by predictor (the paper's Methods: NDVI gaps are filled to a continuous
#: series; see docs/prepare_core.md). ``options.gapfill = []`` switches it off.
DEFAULT_GAPFILL: dict[str, tuple[str, ...]] = {"ndvi": ("linear", "lowest"), "lst": ("linear", "climatology")}
GAPFILL_STEPS = ("linear", "climatology", "lowest")
#: Longest interior gap (months) the ``linear`` step interpolates (``options.max_gap``).
DEFAULT_MAX_GAP = 2
STEP_DAYS = {"daily": 1, "8day": 8}


def target_months(years: tuple[int, int]) -> np.ndarray:
    """First-of-month stamps of January of the first year .. December of the last."""
    return pd.date_range(f"{years[0]}-01-01", f"{years[1]}-12-01", freq="MS").values.astype("datetime64[ns]")


def _month_index(t: np.ndarray) -> np.ndarray:
    m = np.asarray(t).astype("datetime64[M]").astype(np.int64)
    return m


def weights(times: np.ndarray | None, frequency: str, months: np.ndarray, spec: LayerSpec) -> np.ndarray | None:
    """``W`` (len(months) x len(times)); None for a static layer. Raises an InputError naming the
    files when a target month (or year) has no source step."""
    files = "; ".join(str(f) for f in spec.files[:3])
    if frequency == "static" or times is None:
        return None
    times = np.asarray(times).astype("datetime64[ns]")
    mi = _month_index(months)
    W = np.zeros((months.size, times.size), dtype=np.float64)
    if frequency == "monthly":
        src = _month_index(times)
        pos = {int(v): i for i, v in enumerate(src)}
        missing = [k for k, v in enumerate(mi) if int(v) not in pos]
        if missing:
            raise InputError(
                files,
                f"{len(missing)} month(s) of the recipe's years missing",
                column=spec.name,
                where=", ".join(str(months[k])[:7] for k in missing[:5]),
                expected="a monthly layer for every month of [time] years",
            )
        for k, v in enumerate(mi):
            W[k, pos[int(v)]] = 1.0
        return W
    if frequency == "annual":
        years = pd.DatetimeIndex(times).year.to_numpy()
        pos = {int(y): i for i, y in enumerate(years)}
        fallback = {int(k): int(v) for k, v in dict(spec.options.get("year_fallback", {})).items()}
        for k, t in enumerate(pd.DatetimeIndex(months)):
            y = int(t.year)
            use = y if y in pos else fallback.get(y)
            if use is None or use not in pos:
                raise InputError(
                    files,
                    f"no layer for year {y}" + (f" (nor its fallback {use})" if use is not None else ""),
                    column=spec.name,
                    expected=f"one layer per year of the recipe's years (have {sorted(pos)[:10]}); or options.year_fallback",
                )
            W[k, pos[use]] = 1.0
        return W
    if frequency in STEP_DAYS:
        start = times.astype("datetime64[D]")
        length = np.timedelta64(STEP_DAYS[frequency], "D")
        jan1 = (start.astype("datetime64[Y]") + np.timedelta64(1, "Y")).astype("datetime64[D]")
        end = np.minimum(start + length, jan1)
        m0 = months.astype("datetime64[D]")
        m1 = (months.astype("datetime64[M]") + np.timedelta64(1, "M")).astype("datetime64[D]")
        lo = np.maximum(start[None, :], m0[:, None])
        hi = np.minimum(end[None, :], m1[:, None])
        W = np.clip((hi - lo).astype(np.int64), 0, None).astype(np.float64)
        empty = np.flatnonzero(W.sum(axis=1) == 0)
        if empty.size:
            raise InputError(
                files,
                f"{empty.size} month(s) of the recipe's years have no {frequency} step",
                column=spec.name,
                where=", ".join(str(months[k])[:7] for k in empty[:5]),
                expected=f"{frequency} steps covering every month of [time] years",
            )
        return W
    raise InputError(
        files,
        f"unsupported frequency {frequency!r}",
        column=spec.name,
        expected="daily, 8day, monthly, annual or static",
    )


def aggregate(values: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``values`` (steps, ...) -> (months, ...): the NaN-aware weighted mean with weights ``W``."""
    v = values.reshape(values.shape[0], -1)
    ok = np.isfinite(v)
    num = W @ np.where(ok, v, 0.0)
    den = W @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out.reshape((W.shape[0],) + values.shape[1:])


def gapfill_steps(spec: LayerSpec) -> tuple[str, ...]:
    """The gap-filling steps of a layer: ``options.gapfill`` or the default for its name."""
    g = spec.options.get("gapfill", DEFAULT_GAPFILL.get(spec.name, ()))
    steps = (g,) if isinstance(g, str) else tuple(g)
    bad = [s for s in steps if s not in GAPFILL_STEPS]
    if bad:
        raise InputError(
            spec.recipe or "<recipe>",
            f"unknown gap-filling step(s) {bad}",
            column=f"{spec.name}.options.gapfill",
            expected=f"a list of {list(GAPFILL_STEPS)}",
        )
    return steps


def gapfill(
    values: np.ndarray, months: np.ndarray, steps: tuple[str, ...], max_gap: int = DEFAULT_MAX_GAP
) -> np.ndarray:
    """Fill NaN months of each cell's monthly series ``values`` (months, ...), in order:

    - ``linear``: interior gaps of at most ``max_gap`` consecutive months, linearly between the
      valid months on either side (short cloud / quality gaps);
    - ``climatology``: the cell's mean of the same calendar month over the other years;
    - ``lowest``: the cell's lowest valid monthly value (long winter gaps: polar night and snow,
      when NDVI is at its minimum; the paper's GIMMS layer is "lowest_gapfilled").

    A cell with no valid month stays NaN (outside the product's coverage).
    """
    out = np.array(values, dtype=np.float64, copy=True)
    shape = out.shape
    v = out.reshape(shape[0], -1)
    for step in steps:
        if step == "linear":
            _linear(v, max_gap)
        elif step == "climatology":
            cal = pd.DatetimeIndex(months).month.to_numpy()
            for m in range(1, 13):
                rows = np.flatnonzero(cal == m)
                if rows.size == 0:
                    continue
                block = v[rows]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
                    mean = np.nanmean(block, axis=0)
                v[rows] = np.where(np.isnan(block), mean[None, :], block)
        elif step == "lowest":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low = np.nanmin(v, axis=0)
            v[:] = np.where(np.isnan(v), low[None, :], v)
    return v.reshape(shape)


def _linear(v: np.ndarray, max_gap: int) -> None:
    """In place: interior runs of <= max_gap NaNs along axis 0, linearly interpolated."""
    n = v.shape[0]
    valid = np.isfinite(v)
    idx = np.arange(n)[:, None]
    # previous and next valid index for every (month, cell)
    prev = np.where(valid, idx, -1)
    np.maximum.accumulate(prev, axis=0, out=prev)
    nxt = np.where(valid, idx, n)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    gap = (~valid) & (prev >= 0) & (nxt < n) & ((nxt - prev - 1) <= max_gap)
    if not gap.any():
        return
    r, c = np.nonzero(gap)
    p, q = prev[r, c], nxt[r, c]
    w = (r - p) / (q - p)
    v[r, c] = v[p, c] * (1 - w) + v[q, c] * w
