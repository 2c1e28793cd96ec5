"""The run summary (``summary.md``, ``summary.json``): period-mean budgets, the models, the
comparison with a twin's truth, coverage and the compare step's headline numbers. Pure
functions of tables; the summary step (:mod:`abzflux.steps.summary`) reads and writes them."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import xarray as xr

from . import coverage as coverage_mod
from . import trends as trends_mod
from .config import Config


def period_means(ann: pd.DataFrame, period_sd: pd.DataFrame | None) -> pd.DataFrame:
    """Period-mean budget and density per zone and flux (with the period-mean SD when given)."""
    period = (
        ann.groupby(["zone", "flux"])
        .agg(
            tg_c=("tg_c", "mean"),
            density=("density_g_m2", "mean"),
            first_year=("year", "min"),
            last_year=("year", "max"),
        )
        .reset_index()
    )
    if period_sd is not None:
        period = period.merge(period_sd, on=["zone", "flux"], how="left")
    return period


def truth_table(
    ann: pd.DataFrame,
    truth_annual: pd.DataFrame,
    budget_trends: pd.DataFrame,
    method: str = "zhang",
    preserve_range_for_sig_test: bool = False,
) -> pd.DataFrame:
    """Period-mean budgets and budget trends (Tg C yr-2) vs the truth's, per zone and flux. The
    estimate's trends come from the trends step (``budget_trends``); the truth's are computed
    with the same trend code and zyp options."""
    est = ann.copy()
    est.loc[est.flux == "nee_derived", "flux"] = "nee (reco-gpp)"
    t2 = truth_annual[truth_annual.flux == "nee"].assign(flux="nee (reco-gpp)")
    tann = pd.concat([truth_annual, t2])
    m = est.merge(tann, on=["zone", "flux", "year"], suffixes=("", "_truth"))
    g = m.groupby(["zone", "flux"]).agg(estimate=("tg_c", "mean"), truth=("tg_c_truth", "mean")).reset_index()
    bt = budget_trends.replace({"flux": {"nee_derived": "nee (reco-gpp)"}})
    est_tr = bt.set_index(["zone", "flux"]).slope
    truth_tr = {
        (z, f): trends_mod.trend_series(
            d.tg_c.to_numpy(), d.year.to_numpy(), method, preserve_range_for_sig_test=preserve_range_for_sig_test
        )["slope"]
        for (z, f), d in tann.sort_values("year").groupby(["zone", "flux"])
    }
    g["trend"] = [est_tr.get((z, f), np.nan) for z, f in zip(g.zone, g.flux)]
    g["trend_truth"] = [truth_tr.get((z, f), np.nan) for z, f in zip(g.zone, g.flux)]
    g["error"] = g.estimate - g.truth
    g["rel_error"] = g.error / g.truth.abs()
    return g


def with_sd(truth_cmp: pd.DataFrame, period_sd: pd.DataFrame) -> pd.DataFrame:
    """The truth comparison with the period-mean SD (``sd``): the total (bootstrap +
    extrapolation and network terms) when the run has a term."""
    sd = period_sd.assign(flux=period_sd.flux.replace({"nee_derived": "nee (reco-gpp)"}))
    col = "period_mean_tg_c_sd_total" if "period_mean_tg_c_sd_total" in sd else "period_mean_tg_c_sd"
    return truth_cmp.merge(sd[["zone", "flux", col]], on=["zone", "flux"], how="left").rename(columns={col: "sd"})


def map_correlation(estimate: xr.DataArray, truth: xr.DataArray) -> float:
    """Pearson r of the mean annual maps (cells finite in both)."""
    a = mean_annual(estimate)
    b = mean_annual(truth)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def mean_annual(da: xr.DataArray) -> np.ndarray:
    ann = da.groupby("time.year").sum(min_count=12)
    return ann.mean("year").values.ravel()


def coverage_lines(
    cov: pd.DataFrame, warn: float, y0: int, y1: int, period: pd.DataFrame, max_rows: int = 20
) -> tuple[list, dict]:
    """The summary's coverage section: the zone-years of ``budgets/coverage.csv`` (``cov``) that
    lose more than ``budgets.coverage_warn`` of their land (or "full coverage"), and the fluxes
    whose period means cover other years than the run's (fire and NEE + fire: the fire period)."""
    bad = coverage_mod.above(cov, warn)
    top = float(cov.share_lost.max()) if len(cov) else 0.0
    lines = ["## Coverage", ""]
    if not len(bad):
        lines.append(
            f"Full coverage: the upscaling predicted every zone's land in every month of {y0}–{y1}"
            + (f" (largest loss {top:.3%}, below budgets.coverage_warn = {warn:g})" if top > 0 else "")
            + " (budgets/coverage.csv)."
        )
    else:
        lines += [
            (
                f"**{len(bad)} zone-year(s) lose more than {warn:g} of their land** (budgets.coverage_warn): "
                "there the budgets sum only the predicted area (cells where a predictor is missing have no "
                "flux; budgets/coverage.csv)."
            ),
            "",
            "| zone | year | land (km²) | predicted (km²) | lost | worst month | missing |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in bad.head(max_rows).itertuples():
            lines.append(
                f"| {r.zone} | {r.year} | {r.land_km2:,.0f} | {r.predicted_km2:,.0f} | {r.share_lost:.2%} | "
                f"{r.worst_month} | {r.variables or '-'} |"
            )
        if len(bad) > max_rows:
            lines.append(f"\n... and {len(bad) - max_rows} more.")
    note = coverage_mod.years_note(period, y0, y1)
    if note:
        lines += ["", note]
    out = {
        "warn_threshold": warn,
        "full_coverage": not len(bad),
        "max_share_lost": top,
        "above_warn": bad.to_dict(orient="records"),
        "years_note": note,
    }
    return lines, out


ZONE_ORDER = [
    "domain",
    "boreal",
    "tundra",
    "alaska",
    "canada",
    "europe",
    "siberia",
    "north_america",
    "eurasia",
    "permafrost",
]
FLUX_ORDER = ["gpp", "reco", "nee", "nee (reco-gpp)", "nee_derived", "fire", "nee_fire"]


def order(df: pd.DataFrame) -> pd.DataFrame:
    """The summary's zones (domain, biomes, regions, continents, permafrost), in order; the
    other zones are in budgets/."""
    df = df[df.zone.isin(ZONE_ORDER)]
    z = {n: i for i, n in enumerate(ZONE_ORDER)}
    f = {n: i for i, n in enumerate(FLUX_ORDER)}
    return (
        df.assign(_z=df.zone.map(z).fillna(99), _f=df.flux.map(f).fillna(99))
        .sort_values(["_f", "_z"])
        .drop(columns=["_z", "_f"])
    )


def uncertainty_label(cfg: Config) -> str:
    """The uncertainty method of a run as the calibration names it: ``rows``, ``sites``,
    ``blocks`` (the bootstrap's resampling unit), with ``+extrap`` for the extrapolation term,
    ``+network`` for the network-simulation term and ``+dist`` for its distance part."""
    return label_of(asdict(cfg.uncertainty))


def label_of(u: dict) -> str:
    """:func:`uncertainty_label` of an ``[uncertainty]`` table as ``run.json`` records it (runs
    from before a setting existed: the row bootstrap, no terms)."""
    net = ("+network" + ("+dist" if u.get("network_distance") else "")) if u.get("network") else ""
    return u.get("method", "rows") + ("+extrap" if u.get("extrapolation") else "") + net


#: What each added term of the ± is (the method label's suffixes).
TERM_TEXT = {
    "extrap": "the extrapolation term that grows with the dissimilarity index",
    "network": "the network-simulation term (RMS error of forests refitted on site data drawn from the run's "
    "own maps at the real site-months)",
}


METHOD_TEXT = {
    "rows": "the SD across bootstrap forests trained on resampled site-months (the paper's method)",
    "sites": "the SD across bootstrap forests trained on resampled whole sites (cluster bootstrap)",
    "blocks": "the SD across bootstrap forests trained on resampled spatial blocks of sites",
}


def render_summary_md(period: pd.DataFrame, truth: pd.DataFrame | None, map_r, info: dict, method: str = "rows") -> str:
    lines = ["# abzflux run summary", ""]
    y0, y1 = int(period.first_year.min()), int(period.last_year.max())
    lines += [
        "## Models",
        "",
        "| flux | rows | sites | mtry | in-sample R² | in-sample RMSE |",
        "|---|---|---|---|---|---|",
    ]
    for f, v in info.items():
        lines.append(
            f"| {f} | {v['rows']} | {v['sites']} | {v['mtry']} | {v['in_sample_r2']:.3f} | {v['in_sample_rmse']:.1f} |"
        )
    if any(v.get("central", "mean") != "mean" for v in info.values()):  # the default's text is unchanged
        lines += [
            "",
            'Central value: the quantile regression forest\'s median (`[forest] central = "qrf_median"`), '
            "in the cross-validation (skill, mtry), the final forests, importance, partial dependence and the maps.",
        ]
    lines += ["", f"## Budgets, mean {y0}–{y1} (Tg C yr-1)", ""]
    if truth is not None:
        has_sd = "sd" in truth.columns
        lines += [
            "| flux | zone | estimate | ± SD | truth | error | error % | error / SD | trend (Tg C yr-2) | true trend |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in order(truth).itertuples():
            sd = getattr(r, "sd", np.nan) if has_sd else np.nan
            lines.append(
                f"| {r.flux} | {r.zone} | {r.estimate:.1f} | {sd:.1f} | {r.truth:.1f} | {r.error:+.1f} | "
                f"{100 * r.rel_error:+.1f} | {r.error / sd if sd > 0 else np.nan:+.1f} | "
                f"{r.trend:+.2f} | {r.trend_truth:+.2f} |"
            )
        base, *terms = method.split("+")
        lines += [
            "",
            f"± ({method}) is {METHOD_TEXT.get(base, base)} of each forest's period-mean budget"
            + (", combined in quadrature with " + " and ".join(TERM_TEXT.get(t, t) for t in terms) if terms else "")
            + "; error / SD shows how far the truth lies outside it "
            "(docs/uncertainty.md).",
            "",
            f"Pearson r of the mean annual NEE map against the truth: {map_r:.3f}",
            "",
            "NEE is a small residual of two large fluxes; where the site network is sparse (Siberia, "
            "the high Arctic) the model extrapolates, and the NEE budget error can be large. "
            "It is reported here, not tuned away.",
        ]
    else:
        lines += ["| flux | zone | budget | density (g C m-2 yr-1) |", "|---|---|---|---|"]
        for r in order(period).itertuples():
            lines.append(f"| {r.flux} | {r.zone} | {r.tg_c:.1f} | {r.density:.1f} |")
    return "\n".join(lines) + "\n"
