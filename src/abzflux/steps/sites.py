"""(a) sites: the training table, site-months with the predictors extracted at the sites."""

from __future__ import annotations

import logging

from .. import _atomic
from .. import layout as L
from ..checks import off_land_message, sites_without_land
from ..context import Context
from ..formats import categories, cell_index, check_sites_in_grid
from ..predictors import extract_at_sites, finish_training_table
from .spec import StepSpec

log = logging.getLogger(__name__)

#: The declared predictor set's config keys ([predictors]): every stage that reads the stack
#: through the set lists them (a changed set never reuses old forests or maps).
PREDICTOR_KEYS = ("predictors.use", "predictors.drop", "predictors.declare")
#: The training-row filters ([sites]).
SITE_KEYS = ("sites.disturbance", "sites.method", "sites.all_fluxes")


def run(ctx: Context) -> None:
    cfg, lay = ctx.cfg, ctx.layout
    table = ctx.sites().copy()
    pred = ctx.predictors()
    zones = ctx.raw_zones()  # the site table keeps the file's permafrost value (Table 1 applies the rule)
    check_sites_in_grid(table, pred, cfg.inputs.sites)
    off = sites_without_land(table, pred, zones, cfg.inputs.sites)
    if off:  # documented rule: dropped, with a warning and a count
        log.warning(off_land_message(off, table))
        table = table[~table.site_id.isin(off)].reset_index(drop=True)
    iy, ix = cell_index(pred, table.lat.to_numpy(), table.lon.to_numpy(), cfg.inputs.sites)
    table["iy"], table["ix"] = iy, ix
    layers = tuple(p.name for p in ctx.predictor_set.read)  # veg_type too: the skill's breakdown
    if all(v in table.columns for v in layers):
        log.info("site table carries every predictor: used as is")
    else:
        n_out = extract_at_sites(table, pred, iy, ix, layers)
        if n_out:
            log.info(
                f"{n_out} site-months fall outside the predictor period; their predictors are NaN "
                "and listwise deletion drops them"
            )
    names = {z: categories(zones[z], cfg.inputs.zones) for z in ("biome", "region")}
    table = finish_training_table(table, zones, iy, ix, names)
    tmp = lay.tmp(L.SITES)
    table.to_parquet(tmp, index=False)
    _atomic.replace(tmp, lay.sites)
    log.info(f"training table: {len(table)} site-months at {table.site_id.nunique()} sites")


SPEC = StepSpec(
    "sites",
    run,
    writes=(L.SITES,),
    config_keys=("run.years",) + PREDICTOR_KEYS + SITE_KEYS,
    inputs=("sites", "predictors", "zones"),
    summary="the training table: site-months with the predictors extracted at the sites",
)
