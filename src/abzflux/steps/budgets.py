"""(d) budgets: budgets (Tg C) and densities (g C m-2) of GPP, Reco, NEE, NEE as Reco − GPP, fire
and NEE + fire for every zone (domain, biomes, regions, biome × region, continents, permafrost,
vegetation type × region): monthly, seasonal (annual, JJA, non-summer within-year and
cross-year) for every year and as period means, each with the SD across the bootstrap forests
of the aggregate itself; Table 1; source areas; the decadal monthly comparison (Fig. 3); the
seasonal amplitude; latitude correlations; coverage. Tables in ``budgets/``; the arithmetic is
:mod:`abzflux.budgets`."""

from __future__ import annotations

import logging

import pandas as pd
import xarray as xr

from .. import _atomic
from .. import budgets as budgets_mod
from .. import coverage as coverage_mod
from .. import layout as L
from ..context import Context
from ..formats import grid_crs
from ..uncertainty import zone_extrapolation_sd
from ..vocab import FLUXES
from .spec import StepSpec, fresh_dir

log = logging.getLogger(__name__)

#: The permafrost rule (docs/budgets.md "Permafrost region"): every stage whose outputs depend on
#: the permafrost region (through the run's zones, Context.zones) declares these keys.
PERMAFROST_KEYS = ("budgets.permafrost", "budgets.permafrost_threshold")


def run(ctx: Context) -> None:
    lay, bs = ctx.layout, ctx.cfg.budgets
    zones, veg = ctx.zones(), ctx.veg()
    up = xr.open_zarr(lay.upscaled, consolidated=False)
    out = fresh_dir(lay.tmp(L.BUDGETS))
    mon = budgets_mod.monthly_budgets(up[list(FLUXES) + ["nee_derived"]], zones, veg=veg)
    areas = budgets_mod.zone_areas_m2(zones, veg=veg)
    members = pd.read_parquet(lay.members_monthly) if lay.members_monthly.exists() else None
    fire = ctx.fire()
    if fire is not None:
        fm = budgets_mod.monthly_budgets(fire[["fire_emissions"]], zones, veg=veg)
        mon, members = budgets_mod.with_fire(mon, fm, members)

    tables = budgets_mod.budget_tables(mon, members, areas)
    tables["monthly"].to_csv(out / L.inner(L.BUDGETS_MONTHLY), index=False)
    tables["seasonal"].to_csv(out / L.inner(L.BUDGETS_SEASONAL), index=False)
    period = tables["period"]
    period.to_csv(out / "period.csv", index=False)
    # Table 1
    sites = pd.read_parquet(lay.sites)
    t1 = budgets_mod.table1(sites, period, (bs.permafrost, bs.permafrost_threshold))
    t1.to_csv(out / L.inner(L.TABLE1), index=False)
    y0, y1 = ctx.years()
    note = coverage_mod.years_note(period[period.season == "annual"], y0, y1)
    (out / "table1.md").write_text(budgets_mod.table1_text(t1, y0, y1, note))
    # coverage: what the budgets summed (cells where GPP, Reco and NEE are all finite), per zone and year
    cov_m = coverage_mod.monthly_coverage({f: up[f] for f in FLUXES}, zones, veg=veg)
    cov_m.drop(columns="time").to_csv(out / "coverage_monthly.csv", index=False)
    cov = coverage_mod.annual_coverage(cov_m)
    cov.to_csv(out / L.inner(L.COVERAGE), index=False)
    n_low, n_any = int((cov.share_lost > bs.coverage_warn).sum()), int((cov.share_lost > 0).sum())
    log.info(
        f"coverage: {n_low} zone-year(s) lose more than {bs.coverage_warn:g} of their land (budgets/coverage.csv)"
        if n_low
        else f"coverage: {n_any} zone-year(s) lose up to {cov.share_lost.max():.3g} of their land"
        if n_any
        else "coverage: every zone's land predicted in every month"
    )
    # source areas and latitude
    crs = grid_crs(ctx.predictors(), ctx.cfg.inputs.predictors)
    shares, lat_pix = budgets_mod.map_statistics(
        up[["nee", "nee_derived"]], zones, veg=veg, crs=crs, threshold=bs.source_threshold
    )
    shares.insert(2, "kind", shares.zone.map({z: budgets_mod.zone_kind(z) for z in areas.index}))
    shares.to_csv(out / "source_areas.csv", index=False)
    budgets_mod.insitu_sources(sites, bs.source_threshold).to_csv(out / "source_sites.csv", index=False)
    pd.concat([budgets_mod.site_latitude_correlation(sites), lat_pix], ignore_index=True).to_csv(
        out / "latitude_correlation.csv", index=False
    )
    # decades (Fig. 3)
    decades = budgets_mod.decades(y0, y1, bs.decade_length)
    if len(decades) >= 2:
        budgets_mod.decadal_monthly(
            mon, members, areas, [decades[0], decades[-1]], fluxes=("nee", "gpp", "reco", "nee_derived")
        ).to_csv(out / L.inner(L.DECADAL_MONTHLY), index=False)
    # seasonal amplitude
    amps, changes = budgets_mod.amplitude_tables(mon)
    amps.to_csv(out / "seasonal_amplitude.csv", index=False)
    changes.to_csv(out / "seasonal_amplitude_change.csv", index=False)

    # budgets_annual.csv: the annual rows with coverage (trends, fire and summary read it)
    has_members = tables["seas_members"] is not None
    ext = None
    if has_members and ctx.cfg.uncertainty.extrapolation and lay.extrapolation_sd.exists():
        ext = zone_extrapolation_sd(xr.open_zarr(lay.extrapolation_sd, consolidated=False), zones, veg)
    netw = None
    if has_members and ctx.cfg.uncertainty.network and lay.network_summary.exists():
        netw = (pd.read_csv(lay.network_summary), pd.read_csv(lay.network_period))
    ann, p_sd = budgets_mod.annual_table(mon, areas, tables["seasonal"], period, has_members, ext, netw)
    if p_sd is not None:
        tmp = lay.tmp(L.BUDGETS_PERIOD_SD)
        p_sd.to_csv(tmp, index=False)
        _atomic.replace(tmp, lay.budgets_period_sd)
    else:  # no bootstrap forests: no SD; an older run's table must not be read as this run's
        lay.budgets_period_sd.unlink(missing_ok=True)
    ann.to_csv(out / "annual.csv", index=False)
    tmp = lay.tmp(L.BUDGETS_ANNUAL)
    ann.to_csv(tmp, index=False)
    _atomic.replace(out, lay.budgets)
    _atomic.replace(tmp, lay.budgets_annual)


SPEC = StepSpec(
    "budgets",
    run,
    writes=(L.BUDGETS_ANNUAL, L.BUDGETS),
    depends=("upscale", "sites", "extrapolation", "network"),
    reads=(L.UPSCALED, L.MEMBERS_MONTHLY, L.SITES, L.EXTRAPOLATION_SD, L.NETWORK_SUMMARY, L.NETWORK_PERIOD),
    config_keys=(
        "budgets.source_threshold",
        "budgets.decade_length",
        "budgets.coverage_warn",
        "budgets.coverage_stop",
        "fire.first_year",
        "run.years",
        "uncertainty.extrapolation",
        "uncertainty.network",
    )
    + PERMAFROST_KEYS,
    inputs=("predictors", "zones", "fire"),
    extras=(L.BUDGETS_PERIOD_SD,),
    summary="zone budgets and densities (monthly, seasonal, period), Table 1, source areas, coverage",
)
