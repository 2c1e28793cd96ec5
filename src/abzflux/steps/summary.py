"""(g) summary: budgets next to the truth (when the inputs carry one), coverage and the compare
step's headline numbers, as ``summary.md`` and ``summary.json`` (rendering: :mod:`abzflux.summary`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import xarray as xr

from .. import _atomic
from .. import budgets as budgets_mod
from .. import layout as L
from .. import summary as summary_mod
from ..context import Context
from ..formats import open_grid
from .budgets import PERMAFROST_KEYS
from .spec import StepSpec


def run(ctx: Context) -> None:
    lay = ctx.layout
    ann = pd.read_csv(lay.budgets_annual)
    period_sd = pd.read_csv(lay.budgets_period_sd) if lay.budgets_period_sd.exists() else None
    period = summary_mod.period_means(ann, period_sd)
    summary: dict = {"budgets": period.to_dict(orient="records")}
    truth_cmp = None
    if ctx.cfg.inputs.truth is not None:
        truth_cmp, map_r = compare_truth(ctx, ann)
        if period_sd is not None:
            truth_cmp = summary_mod.with_sd(truth_cmp, period_sd)
        summary["truth"] = truth_cmp.to_dict(orient="records")
        summary["nee_map_pearson_r"] = map_r
    info = json.loads(lay.forest_json.read_text())
    summary["uncertainty"] = summary_mod.uncertainty_label(ctx.cfg)
    md = summary_mod.render_summary_md(
        period, truth_cmp, summary.get("nee_map_pearson_r"), info, summary["uncertainty"]
    )
    cov_lines, cov_summary = coverage_summary(ctx, period)
    if cov_lines:
        md += "\n" + "\n".join(cov_lines) + "\n"
        summary["coverage"] = cov_summary
    cmp_lines, cmp_summary = compare_lines(lay.compare)
    if cmp_lines:
        md += "\n" + "\n".join(cmp_lines) + "\n"
        summary["compare"] = cmp_summary
    _atomic.write_text(lay.summary_md, md)
    _atomic.write_text(lay.summary_json, json.dumps(summary, indent=2, default=float))


def coverage_summary(ctx: Context, period: pd.DataFrame, max_rows: int = 20) -> tuple[list, dict]:
    """The summary's coverage section from ``budgets/coverage.csv`` (:func:`abzflux.summary.coverage_lines`)."""
    path = ctx.layout.coverage
    if not path.exists():
        return [], {}
    cov = pd.read_csv(path, dtype={"zone": str, "variables": str}, keep_default_na=False)
    y0, y1 = ctx.years()
    return summary_mod.coverage_lines(cov, ctx.cfg.budgets.coverage_warn, y0, y1, period, max_rows)


def compare_truth(ctx: Context, ann: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Period-mean budgets vs the truth, per zone and flux, and the NEE map correlation."""
    lay = ctx.layout
    truth = open_grid(ctx.cfg.inputs.truth, chunks={"time": 12})  # canonical order, as read_truth checked it
    y0, y1 = ctx.years()
    truth = truth.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    tann = budgets_mod.annual_budgets(truth[["gpp", "reco", "nee"]], ctx.zones(), fire=ctx.fire(), veg=ctx.veg())
    tr = ctx.cfg.trends
    g = summary_mod.truth_table(
        ann, tann, pd.read_csv(lay.budget_trends), tr.prewhitening, tr.preserve_range_for_sig_test
    )
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    r = summary_mod.map_correlation(up["nee"], truth["nee"])
    truth.close()
    return g, r


def compare_lines(d: Path) -> tuple[list, dict]:
    """The compare step's headline numbers (its tables in ``d``, ``compare/``): extrapolation and,
    with products, their metrics."""
    if not (d / L.inner(L.AOA_SD)).exists():
        return [], {}
    out: dict = {}
    lines = ["## Extrapolation and other products", ""]
    sd = pd.read_csv(d / L.inner(L.AOA_SD)).set_index("flux")
    ma = pd.read_csv(d / L.inner(L.MESS_AREA))
    dom = ma[ma.zone == "domain"]
    out["mess_share_extrapolated"] = dict(zip(dom.period, dom.share_extrapolated))
    lines.append(
        "Share of the domain with MESS < 0 (extrapolation): "
        + ", ".join(f"{p} {100 * v:.0f}%" for p, v in zip(dom.period, dom.share_extrapolated))
        + "."
    )
    if "nee" in sd.index:
        r = sd.loc["nee"]
        out["nee_sd_inside_outside_aoa"] = [float(r.inside_mean_sd), float(r.outside_mean_sd)]
        lines.append(
            f"Mean annual NEE bootstrap SD inside / outside the area of applicability: "
            f"{r.inside_mean_sd:.1f} / {r.outside_mean_sd:.1f} g C m-2 yr-1 (ratio {r.ratio:.2f})."
        )
    if (d / L.inner(L.COMPARE_METRICS)).exists():
        m = pd.read_csv(d / L.inner(L.COMPARE_METRICS))
        b = pd.read_csv(d / L.inner(L.COMPARE_BUDGETS))
        b = b[b.zone == "domain"].set_index("product")
        out["products"] = m.to_dict(orient="records")
        lines += [
            "",
            "| product | years | fire subtracted | map r (p) | trend r (p) | domain NEE abzflux | product | ratio "
            "| source area abzflux | product |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m.itertuples():
            bb = b.loc[r.product]
            lines.append(
                f"| {r.product} | {r.first_year}–{r.last_year} | {'yes' if r.fire_subtracted else 'no'} | "
                f"{r.map_r:.2f} ({r.map_p:.2g}) | {r.trend_r:.2f} ({r.trend_p:.2g}) | {bb.abzflux_tg_c:.0f} | "
                f"{bb.product_tg_c:.0f} | "
                f"{bb.ratio:.2f} | {100 * r.source_share_abzflux:.0f}% | {100 * r.source_share_product:.0f}% |"
            )
        grid = str(m["grid"].iloc[0])
        where = "each product's own grid" if grid == "product" else "the analysis grid (compare.grid)"
        lines += [
            "",
            f"Map and trend r on {where}; p from Dutilleul's modified t-test (spatial autocorrelation). "
            "Budgets in Tg C yr-1 over the years and cells both have (analysis grid); details in compare/.",
        ]
    return lines, out


SPEC = StepSpec(
    "summary",
    run,
    writes=(L.SUMMARY_MD, L.SUMMARY_JSON),
    depends=("trends", "compare"),
    reads=(
        L.BUDGETS_ANNUAL,
        L.BUDGETS_PERIOD_SD,
        L.FOREST_JSON,
        L.COVERAGE,
        L.BUDGET_TRENDS,
        L.UPSCALED,
        "compare/",
    ),
    config_keys=("trends.prewhitening", "trends.preserve_range_for_sig_test")  # the truth's trends
    + PERMAFROST_KEYS,  # the truth's zone budgets
    inputs=("truth",),
    summary="summary.md and summary.json: period-mean budgets, models, truth comparison, coverage, extrapolation",
)
