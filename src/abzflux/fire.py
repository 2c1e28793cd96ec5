"""Fire: aggregation of fire files onto the analysis grid, and the paper's years-since-fire
bias correction with linear mixed-effects models (Methods, "Model performance in burned
ecosystems").

The bias model, per calendar month: the NEE model's leave-one-site-out residual
(observed − predicted, g C m-2 month-1) at burned sites 0–18 years after the fire against years
since fire, with a correlated random intercept and slope per site, as the paper's
``lmer(residual ~ ysf + (ysf | site), REML = TRUE)`` with lmerTest's Satterthwaite t tests
(:mod:`abzflux.lmm`). Its fixed effects give the expected residual b(t) = intercept + slope × t
at t years after a fire. The correction adds b(t) × burned fraction to the upscaled NEE of a
cell that burned since the fire record began and at most 18 years before, with t = target year −
year of the cell's last burn, for the months whose slope and intercept are both significant.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import xarray as xr

from . import lmm
from .config import FireSettings

log = logging.getLogger(__name__)

#: The paper's window of years since fire for the bias models and the correction (Methods:
#: "from 0 to 18 years since fire"; the GFED record starts in 2002, the correction year is 2020).
MAX_YEARS_SINCE_FIRE: float = FireSettings.max_years_since_fire


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


def fit_bias_models(
    resid: pd.DataFrame, alpha: float = 0.05, max_years_since_fire: float | None = MAX_YEARS_SINCE_FIRE
) -> pd.DataFrame:
    """Per calendar month, ``lmer(residual ~ years_since_fire + (years_since_fire | site_id),
    REML = TRUE)`` on the rows with 0 <= years_since_fire <= ``max_years_since_fire`` (None: no
    upper limit), with lmerTest's t tests (Satterthwaite df; :mod:`abzflux.lmm`). ``resid``: rows
    of burned sites with columns site_id, month, years_since_fire, residual (observed − predicted).

    Returns one row per month: rows and sites in the window, intercept and slope with their SEs,
    df, t and p; the random effects' SDs and correlation, σ and the REML criterion; ``singular``
    (lme4's isSingular, tol 1e-4), ``converged`` (lme4's gradient check), ``note`` (what lme4 /
    lmerTest would warn, or why a month was not fitted) and ``significant``: both p < ``alpha``
    in a converged fit (a singular fit may be significant, as in lmerTest's table)."""
    need = {"site_id", "month", "years_since_fire", "residual"}
    missing = need - set(resid.columns)
    if missing:
        raise ValueError(f"residual table lacks column(s) {sorted(missing)}")
    r = resid.dropna(subset=["years_since_fire", "residual"])
    inside = r.years_since_fire >= 0
    if max_years_since_fire is not None:
        inside &= r.years_since_fire <= max_years_since_fire
    rows = []
    for month, g in r[inside].groupby("month"):
        row: dict = {"month": int(month), "rows": len(g), "sites": g.site_id.nunique()}
        try:
            fit = lmm.lmer_slope(g, "residual", "years_since_fire", "site_id")
        except (ValueError, np.linalg.LinAlgError) as e:
            log.warning("fire bias model, month %d: not fitted (%s)", month, e)
            rows.append(row | {"singular": False, "converged": False, "significant": False, "note": f"not fitted: {e}"})
            continue
        cov = fit.re_cov()
        sd = np.sqrt(np.diag(cov))
        for k, name in ((0, "intercept"), (1, "slope")):
            row.update({name: fit.beta[k], f"{name}_se": fit.se[k], f"{name}_df": fit.df[k]})
            row.update({f"{name}_t": fit.t[k], f"{name}_p": fit.p[k]})
        row.update(
            sd_intercept=sd[0],
            sd_slope=sd[1],
            re_corr=cov[0, 1] / (sd[0] * sd[1]) if sd[0] > 0 and sd[1] > 0 else np.nan,
            sigma=fit.sigma,
            reml=fit.reml,
            singular=fit.singular,
            converged=fit.converged,
            note="; ".join(fit.messages),
        )
        row["significant"] = bool(fit.converged and row["intercept_p"] < alpha and row["slope_p"] < alpha)
        if not fit.converged:
            log.warning("fire bias model, month %d: not converged (%s)", month, row["note"])
        elif fit.singular:
            log.info("fire bias model, month %d: singular fit (a random-effect variance at 0)", month)
        rows.append(row)
    return pd.DataFrame(rows)


def correct_nee(
    nee: xr.DataArray,
    models: pd.DataFrame,
    last_burn: xr.DataArray,
    burned_frac: xr.DataArray,
    target_year: int,
    months=None,
    max_years_since_fire: float | None = MAX_YEARS_SINCE_FIRE,
) -> xr.DataArray:
    """The bias-corrected NEE of ``target_year`` (g C m-2 month-1): for the chosen months
    (default: the models' significant months) and cells with a last burn at most
    ``max_years_since_fire`` years before (None: any), add
    (intercept + slope × (target_year − last burn year)) × burned fraction. Other months, other
    years, unburned cells and cells burned longer ago than the window are returned unchanged."""
    m = models.set_index("month")
    if months is None:
        months = [int(k) for k, s in m["significant"].items() if s]
    out = nee.sel(time=slice(f"{target_year}-01-01", f"{target_year}-12-31")).copy()
    ysf = (target_year - last_burn).where(last_burn.notnull())
    if max_years_since_fire is not None:
        ysf = ysf.where(ysf <= max_years_since_fire)
    t = pd.DatetimeIndex(out.time.values)
    for i, mon in enumerate(t.month):
        if mon not in months:
            continue
        bias = (m.loc[mon, "intercept"] + m.loc[mon, "slope"] * ysf) * burned_frac
        out[i] = out[i] + bias.fillna(0.0).astype(out.dtype)
    return out


def fine_factor(ds: xr.Dataset, like: xr.Dataset) -> int:
    """k when ``ds``'s grid nests k x k cells into each cell of ``like``'s (same origin corner),
    else 1."""
    try:
        d = abs(float(ds.x[1] - ds.x[0]))
        D = abs(float(like.x[1] - like.x[0]))
    except (IndexError, KeyError):
        return 1
    k = int(round(D / d))
    if (
        k <= 1
        or abs(k * d - D) > 1e-6 * D
        or ds.sizes["x"] != k * like.sizes["x"]
        or ds.sizes["y"] != k * like.sizes["y"]
    ):
        return 1
    x0 = float(ds.x.values[:k].mean())
    y0 = float(ds.y.values[:k].mean())
    if abs(x0 - float(like.x[0])) > 1e-6 * D or abs(y0 - float(like.y[0])) > 1e-6 * D:
        return 1
    return k


def emissions_by_zone(annual: pd.DataFrame, first_year: int) -> pd.DataFrame:
    """Fire emissions (Tg C yr-1) by year (rows) and zone (columns) from the fire period on."""
    fr = annual[(annual.flux == "fire") & (annual.year >= first_year)]
    return fr.pivot(index="year", columns="zone", values="tg_c")


def fire_vs_uptake(annual: pd.DataFrame, first_year: int) -> pd.DataFrame | None:
    """Per zone and year of the fire period: NEE, fire, NEE + fire and whether fire emissions
    exceeded the net uptake (None without both fluxes)."""
    w = (
        annual[annual.year >= first_year]
        .pivot_table(index=["zone", "year"], columns="flux", values="tg_c")
        .reset_index()
    )
    if not {"nee", "fire"} <= set(w.columns):
        return None
    w["fire_exceeds_uptake"] = w.fire > -w.nee
    return w[["zone", "year", "nee", "fire", "nee_fire", "fire_exceeds_uptake"]]


def burned_maps(fire: xr.Dataset, first_year: int, target: int) -> tuple[xr.Dataset, xr.DataArray, xr.DataArray]:
    """The cells burned during the fire period (Fig. 2d): last burn year, its burned fraction and
    the summed monthly burned fractions; also returns (last, frac) for the bias correction."""
    ft = pd.DatetimeIndex(fire.time.values)
    last, frac = last_burn_year(fire["burned_fraction"], first_year, min(target, int(ft.year.max())))
    total = fire["burned_fraction"].sel(time=slice(f"{first_year}-01-01", f"{target}-12-31")).fillna(0).sum("time")
    maps = xr.Dataset(
        {
            "last_burn_year": last.astype(np.float32),
            "last_burn_fraction": frac.astype(np.float32),
            "burned_fraction_total": total.astype(np.float32),
        }
    )
    maps["burned_fraction_total"].attrs.update(
        units="1", long_name=f"sum of monthly burned fractions {first_year}-{target}"
    )
    # a calendar year is a label, not a duration: no units (CF: a UDUNITS "year" would be 365.24 days)
    maps["last_burn_year"].attrs = {"long_name": f"calendar year of the last burn {first_year}-{target}"}
    maps["last_burn_fraction"].attrs = {
        "units": "1",
        "long_name": "burned fraction of the cell in its last burn year (at most 1)",
    }
    maps.attrs.update(
        Conventions="CF-1.8",
        title="abzflux: cells burned during the fire period",
        history="abzflux fire: last burn year and burned fractions from the fire input",
    )
    return maps.assign_coords(y=fire.y, x=fire.x), last, frac


def site_residuals(cv_pred: pd.DataFrame, sites: pd.DataFrame, mtry: int) -> pd.DataFrame:
    """The NEE model's leave-one-site-out residuals (chosen mtry) with years since fire, and
    whether the site-month is burned (a fire disturbance with a years-since-fire value)."""
    pr = cv_pred[(cv_pred.flux == "nee") & (cv_pred.mtry == mtry)]
    s = sites[["site_id", "year", "month", "years_since_fire"]]
    r = pr.merge(s, on=["site_id", "year", "month"], how="left").assign(residual=lambda d: d.obs - d.pred)
    r["burned"] = (r.disturbance == "fire") & r.years_since_fire.notna()
    return r


def residual_diagnostics(r: pd.DataFrame) -> pd.DataFrame:
    """Residual mean, SD and count at burned vs unburned site-months, and by years since fire."""
    diag = r.assign(ysf_bin=np.where(r.burned, np.floor(r.years_since_fire.fillna(-1)).clip(upper=30), np.nan))
    return pd.concat(
        [
            diag.groupby("burned").residual.agg(["mean", "std", "size"]).reset_index().assign(by="burned"),
            diag[diag.burned]
            .groupby("ysf_bin")
            .residual.agg(["mean", "std", "size"])
            .reset_index()
            .assign(by="years_since_fire"),
        ],
        ignore_index=True,
    )


def correctable_months(models: pd.DataFrame, months) -> list[int]:
    """The months to correct: ``months`` (``fire.months``) or the significant ones, among those
    with a fitted slope."""
    months = months if months is not None else significant_months(models)
    return [
        m
        for m in months
        if m in set(models.month) and np.isfinite(models.set_index("month").loc[m].get("slope", np.nan))
    ]


def significant_months(models: pd.DataFrame) -> list[int]:
    return [int(m) for m in models.loc[models.significant, "month"]] if len(models) else []


def correction_table(change: pd.Series, annual: pd.DataFrame, target: int) -> pd.DataFrame:
    """NEE of the target year before and after the correction, per zone (Tg C yr-1); ``change``:
    the correction's budget by zone."""
    b = annual[(annual.flux == "nee") & (annual.year == target)].set_index("zone").tg_c.rename("nee_before")
    t = pd.concat([b.reindex(change.index), change], axis=1)
    t["nee_after"] = t.nee_before + t.change
    return t[["nee_before", "nee_after", "change"]].rename_axis("zone").reset_index()
