"""The paper's sensitivity runs (Supplementary Table 5; docs/models.md "Sensitivity runs"): the
forest stage (leave-one-site-out CV skill) re-run on variants of a config, side by side.

A variant changes the declared predictor set (``[predictors] drop``) and / or the training rows
(``[sites]``: disturbance, method, all three fluxes). Each variant runs the sites and forest
steps into ``OUT/<variant>/`` (``sites.parquet``, ``models/``, ``cv/``); ``OUT/sensitivity.csv``
holds one row per variant and flux. The inputs are read and checked once (the stack, zones and
site table), and shared by the variants. A variant whose rows leave fewer than 3 sites for a
flux (no harvest site, say) is listed with that reason and no skill.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import _atomic
from .checks import check_inputs
from .config import Config, SiteSettings
from .context import Context
from .errors import InputError
from .formats import read_site_table
from .layout import CV_SKILL, FOREST_JSON, RunLayout
from .predictors import select_sites
from .steps import forest as forest_step
from .steps import sites as sites_step
from .vocab import FLUXES

log = logging.getLogger(__name__)

#: The table written into the output directory, and the marker that says abzflux wrote it.
TABLE = "sensitivity.csv"
MARKER = "sensitivity.json"
#: The factors the paper's "nofactors" variants drop (subsets can lack factor levels).
FACTORS = ("month", "veg_type")


@dataclass(frozen=True)
class Variant:
    """One sensitivity run: predictors dropped (on top of the config's) and a ``[sites]`` filter
    (replacing the config's; None keeps it)."""

    name: str
    description: str
    drop: tuple[str, ...] = ()
    sites: SiteSettings | None = None


def _undisturbed(*also: str) -> SiteSettings:
    return SiteSettings(disturbance=["none", *also])


#: Supplementary Table 5's variants (workflow.md §2 "Sensitivity runs"): the model as configured,
#: without the two factors, and subsets of the training rows, each with and without the factors.
#: The paper's "Reichstein partitioning only" and "day and night coverage" subsets need site
#: columns the contract does not have (docs/formats.md §1); they are not offered.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("configured", "the model as configured (the paper's: 17 predictors, every site-month)"),
        Variant("no_factors", "without month and vegetation type", drop=FACTORS),
        Variant("undisturbed", "undisturbed sites only (disturbance none or not given)", sites=_undisturbed()),
        Variant("undisturbed_no_factors", "undisturbed sites, without the factors", FACTORS, _undisturbed()),
        Variant("undisturbed_fire", "undisturbed and burned sites, without the factors", FACTORS, _undisturbed("fire")),
        Variant(
            "undisturbed_harvest",
            "undisturbed and harvested sites, without the factors",
            FACTORS,
            _undisturbed("harvest"),
        ),
        Variant(
            "undisturbed_thermokarst",
            "undisturbed and thermokarst sites, without the factors",
            FACTORS,
            _undisturbed("thermokarst"),
        ),
        Variant("ec_only", "eddy-covariance site-months only", sites=SiteSettings(method=["EC"])),
        Variant(
            "ec_only_no_factors",
            "eddy-covariance site-months, without the factors",
            FACTORS,
            SiteSettings(method=["EC"]),
        ),
        Variant("all_fluxes", "site-months with GPP, Reco and NEE all measured", sites=SiteSettings(all_fluxes=True)),
        Variant(
            "all_fluxes_no_factors",
            "site-months with all three fluxes, without the factors",
            FACTORS,
            SiteSettings(all_fluxes=True),
        ),
    )
}
#: What `abzflux sensitivity` runs without --variants.
DEFAULT_VARIANTS = ("configured", "no_factors", "undisturbed", "undisturbed_no_factors", "ec_only", "all_fluxes")

COLUMNS = [
    "variant",
    "flux",
    "rows",
    "sites",
    "predictors",
    "mtry",
    "r2",
    "rmse",
    "mae",
    "bias",
    "pooled_r2",
    "pooled_rmse",
    "note",
    "description",
]


def variant_config(cfg: Config, v: Variant) -> Config:
    """``cfg`` with the variant's predictors dropped and its site filter."""
    drop = list(dict.fromkeys(list(cfg.predictors.drop or []) + list(v.drop))) or None
    if drop is not None:  # the factors of a set that never had them
        present = set(cfg.predictor_set().names) | set(cfg.predictors.drop or [])
        drop = [d for d in drop if d in present] or None
    return replace(
        cfg,
        predictors=replace(cfg.predictors, drop=drop),
        sites=v.sites if v.sites is not None else cfg.sites,
        coarse=None,
    )


def _check_out(out: Path) -> None:
    """``out`` is new, empty, or a directory this module wrote (its marker): never write over
    someone else's files."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise InputError(
            out,
            "exists and holds files abzflux's sensitivity command did not write",
            expected="a new or empty directory, or the --out of an earlier `abzflux sensitivity` run",
        )


def _rows(name: str, v: Variant, lay: RunLayout, p: int, note: str = "") -> list[dict]:
    if note:
        return [
            {"variant": name, "flux": f, "predictors": p, "note": note, "description": v.description} for f in FLUXES
        ]
    info = json.loads((lay / FOREST_JSON).read_text())
    skill = pd.read_csv(lay / CV_SKILL).set_index("flux") if (lay / CV_SKILL).exists() else None
    out = []
    for f in FLUXES:
        s = skill.loc[f] if skill is not None and f in skill.index else None
        out.append(
            {
                "variant": name,
                "flux": f,
                "rows": info[f]["rows"],
                "sites": info[f]["sites"],
                "predictors": p,
                "mtry": info[f]["mtry"],
                "r2": float(s.caret_Rsquared) if s is not None else np.nan,
                "rmse": float(s.caret_RMSE) if s is not None else np.nan,
                "mae": float(s.caret_MAE) if s is not None else np.nan,
                "bias": float(s.pooled_bias) if s is not None else np.nan,
                "pooled_r2": float(s.pooled_R2) if s is not None else np.nan,
                "pooled_rmse": float(s.pooled_RMSE) if s is not None else np.nan,
                "note": "" if s is not None else "forest.cv = false: no cross-validated skill",
                "description": v.description,
            }
        )
    return out


def run_sensitivity(cfg: Config, out, variants=DEFAULT_VARIANTS, progress_factory=None) -> pd.DataFrame:
    """Run the forest stage for each variant (names of :data:`VARIANTS`) into ``out/<variant>``
    and write ``out/sensitivity.csv`` (one row per variant and flux: rows, sites, predictors,
    mtry, caret site-mean R², RMSE, MAE, pooled bias, pooled R² and RMSE). Returns the table."""
    out = Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(
            cfg.source,
            f"unknown sensitivity variant(s) {unknown}",
            column="--variants",
            expected=f"some of {list(VARIANTS)}",
        )
    _check_out(out)
    base = Context(cfg=cfg, out=out)
    check_inputs(base)  # every input read and checked once, before anything is written
    raw_sites = read_site_table(cfg.inputs.sites)  # each variant filters it (its [sites])
    out.mkdir(parents=True, exist_ok=True)
    _atomic.write_text(out / MARKER, json.dumps({"variants": list(variants), "config": cfg.to_dict()}, indent=2))
    rows: list[dict] = []
    prog = progress_factory("sensitivity variants") if progress_factory else None
    try:
        for i, name in enumerate(variants):
            rows += _variant(cfg, base, raw_sites, out, name, progress_factory)
            if prog is not None:
                prog(i + 1, len(variants))
    finally:
        if prog is not None:
            prog(None, None)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    tmp = out / (TABLE + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out / TABLE)
    return table


def _variant(cfg: Config, base: Context, raw_sites, out: Path, name: str, progress_factory) -> list[dict]:
    """One variant's sites and forest steps into ``out/<name>``; its rows of the table."""
    v = VARIANTS[name]
    vcfg = variant_config(cfg, v)
    pset = vcfg.predictor_set()
    ctx = Context(cfg=vcfg, out=out / name, progress_factory=progress_factory)
    ctx.cache["pset"] = pset
    ctx.cache["pred"] = base.predictors()[[p.name for p in pset.read]]  # the variants only drop
    ctx.cache["zones"] = base.zones()
    ctx.cache["zones_raw"] = base.raw_zones()
    ctx.cache["sites"] = select_sites(raw_sites, vcfg.sites, cfg.inputs.sites)
    vdir = out / name
    shutil.rmtree(vdir, ignore_errors=True)  # a previous run's variant (the marker says it is ours)
    vdir.mkdir()
    log.info(f"[{name}] {v.description}: {len(pset)} predictors, {len(ctx.cache['sites'])} site-months")
    try:
        sites_step.run(ctx)
        forest_step.run(ctx)
    except InputError as e:
        log.warning(f"[{name}] no skill: {e.problem}")
        return _rows(name, v, ctx.layout, len(pset), note=e.problem)
    finally:
        ctx.close()
    return _rows(name, v, ctx.layout, len(pset))
