"""Fire: aggregation of fire files onto the analysis grid, and the paper's years-since-fire
bias correction with linear mixed-effects models (Methods, "Model performance in burned
ecosystems").

The bias model, per calendar month: the NEE model's leave-one-site-out residual
(observed − predicted, g C m-2 month-1) at burned sites against years since fire, with a random
intercept and a random slope per site (statsmodels ``MixedLM``, REML). Its fixed effects give
the expected residual b(t) = intercept + slope × t at t years after a fire. The correction adds
b(t) × burned fraction to the upscaled NEE of a cell that burned since the fire record began,
with t = target year − year of the cell's last burn, for the months whose slope and intercept
are both significant.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr


def aggregate_fire(fire: xr.Dataset, factor: int) -> xr.Dataset:
    """Aggregate a fire dataset on a finer equal-area grid by an integer ``factor`` per axis:
    emissions (g C m-2 month-1) and burned fraction become area-weighted means of the fine
    cells (so a coarse cell's emissions in g C equal the sum of its fine cells'), with the fine
    cells' ``cell_area`` when present. Missing fine cells count as no fire; a coarse cell with
    no fine cell at all is NaN."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    if factor == 1:
        return fire
    area = fire["cell_area"] if "cell_area" in fire else xr.ones_like(fire["burned_fraction"].isel(time=0, drop=True))
    area = area.astype(np.float64)
    out = {}
    has = fire["burned_fraction"].notnull()
    for v in ("fire_emissions", "burned_fraction"):
        w = (fire[v].fillna(0) * area).coarsen(y=factor, x=factor, boundary="exact").sum()
        a = area.coarsen(y=factor, x=factor, boundary="exact").sum()
        any_cell = has.coarsen(y=factor, x=factor, boundary="exact").any()
        out[v] = (w / a).where(any_cell)
        out[v].attrs = dict(fire[v].attrs)
    ds = xr.Dataset(out)
    ds["cell_area"] = area.coarsen(y=factor, x=factor, boundary="exact").sum()
    return ds


def last_burn_year(burned_fraction: xr.DataArray, first_year: int, last_year: int) -> tuple[xr.DataArray, xr.DataArray]:
    """For every cell: the last calendar year in [first_year, last_year] with any burn, and the
    burned fraction of that year (the yearly sum of monthly burned fractions, capped at 1).
    Cells that never burned: NaN year and fraction 0."""
    bf = burned_fraction.sel(time=slice(f"{first_year}-01-01", f"{last_year}-12-31")).fillna(0)
    yearly = bf.groupby("time.year").sum().clip(max=1.0)
    burned = yearly > 0
    years = xr.DataArray(yearly.year.values, dims="year")
    last = years.where(burned).max("year")
    frac = yearly.where(yearly.year == last).max("year").fillna(0.0).where(last.notnull(), 0.0)
    return last, frac


def fit_bias_models(resid: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per calendar month, MixedLM of ``residual`` on ``years_since_fire`` with a random
    intercept and slope by ``site_id`` (REML). ``resid``: rows of burned sites with columns
    site_id, month, years_since_fire, residual (observed − predicted).

    Returns one row per month: intercept, slope, their SEs and p-values, the number of rows and
    sites, whether the fit converged, and ``significant`` (both p < alpha)."""
    import statsmodels.formula.api as smf

    need = {"site_id", "month", "years_since_fire", "residual"}
    missing = need - set(resid.columns)
    if missing:
        raise ValueError(f"residual table lacks column(s) {sorted(missing)}")
    rows = []
    for month, g in resid.dropna(subset=["years_since_fire", "residual"]).groupby("month"):
        r = {"month": int(month), "rows": len(g), "sites": g.site_id.nunique()}
        if g.site_id.nunique() < 3 or len(g) < 6:
            rows.append(r | {"converged": False, "significant": False, "note": "too few sites or rows"})
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = smf.mixedlm("residual ~ years_since_fire", g, groups=g["site_id"],
                                  re_formula="~years_since_fire").fit(reml=True)
            except (np.linalg.LinAlgError, ValueError) as e:
                rows.append(r | {"converged": False, "significant": False, "note": f"fit failed: {e}"})
                continue
        fe, p, se = fit.fe_params, fit.pvalues, fit.bse_fe
        r.update(intercept=float(fe["Intercept"]), slope=float(fe["years_since_fire"]),
                 intercept_se=float(se["Intercept"]), slope_se=float(se["years_since_fire"]),
                 intercept_p=float(p["Intercept"]), slope_p=float(p["years_since_fire"]),
                 converged=bool(fit.converged),
                 note="; ".join(sorted({str(w.message).split("\n")[0][:80] for w in caught})) or "")
        r["significant"] = bool(r["intercept_p"] < alpha and r["slope_p"] < alpha)
        rows.append(r)
    return pd.DataFrame(rows)


def correct_nee(nee: xr.DataArray, models: pd.DataFrame, last_burn: xr.DataArray, burned_frac: xr.DataArray,
                target_year: int, months=None) -> xr.DataArray:
    """The bias-corrected NEE of ``target_year`` (g C m-2 month-1): for the chosen months
    (default: the models' significant months) and cells with a last burn, add
    (intercept + slope × (target_year − last burn year)) × burned fraction. Other months, other
    years and unburned cells are returned unchanged."""
    m = models.set_index("month")
    if months is None:
        months = [int(k) for k, s in m["significant"].items() if s]
    out = nee.sel(time=slice(f"{target_year}-01-01", f"{target_year}-12-31")).copy()
    ysf = (target_year - last_burn).where(last_burn.notnull())
    t = pd.DatetimeIndex(out.time.values)
    for i, mon in enumerate(t.month):
        if mon not in months:
            continue
        bias = (m.loc[mon, "intercept"] + m.loc[mon, "slope"] * ysf) * burned_frac
        out[i] = out[i] + bias.fillna(0.0).astype(out.dtype)
    return out
