"""Compatibility names: the study's entry points and stage functions under their older names.

The runner is :mod:`abzflux.runner`, the stages are the modules of :mod:`abzflux.steps`, the
run directory's paths :class:`abzflux.layout.RunLayout` (docs/architecture.md). New code
imports from those modules.
"""

from __future__ import annotations

from .budgets import add_extrapolation_sd
from .checks import check_coverage, check_inputs, sites_without_land
from .context import Context
from .layout import RunLayout
from .predictors import training_rows
from .runner import (
    NO_OUTPUT_EFFECT,
    RUN_DIRS,
    RUN_FILES,
    build_stages,
    clean_run_dir,
    code_hash,
    digest_path,
    environment,
    file_hash,
    output_digest,
    output_keys,
    package_versions,
    run_paths,
    run_study,
    validate_study,
)
from .steps import StepSpec
from .steps import bootstrap as _bootstrap
from .steps import budgets as _budgets
from .steps import compare as _compare
from .steps import extrapolation as _extrapolation
from .steps import fire as _fire
from .steps import forest as _forest
from .steps import interpret as _interpret
from .steps import network as _network
from .steps import sites as _sites
from .steps import summary as _summary
from .steps import trends as _trends
from .steps import upscale as _upscale
from .steps.forest import FOREST_KEYS
from .steps.interpret import load_models
from .steps.summary import compare_truth, coverage_summary
from .summary import METHOD_TEXT, render_summary_md, uncertainty_label
from .trends import DRIVERS, TREND_BAND_BYTES, trend_band_rows
from .vocab import FLUXES

Stage = StepSpec
stage_sites = _sites.run
stage_forest = _forest.run
stage_interpret = _interpret.run
stage_bootstrap = _bootstrap.run
stage_extrapolation = _extrapolation.run
stage_network = _network.run
stage_upscale = _upscale.run
stage_budgets = _budgets.run
stage_trends = _trends.run
stage_fire = _fire.run
stage_compare = _compare.run
stage_summary = _summary.run

__all__ = [
    "DRIVERS",
    "FLUXES",
    "FOREST_KEYS",
    "METHOD_TEXT",
    "NO_OUTPUT_EFFECT",
    "RUN_DIRS",
    "RUN_FILES",
    "TREND_BAND_BYTES",
    "Context",
    "RunLayout",
    "Stage",
    "StepSpec",
    "add_extrapolation_sd",
    "build_stages",
    "check_coverage",
    "check_inputs",
    "clean_run_dir",
    "code_hash",
    "compare_truth",
    "coverage_summary",
    "digest_path",
    "environment",
    "file_hash",
    "load_models",
    "output_digest",
    "output_keys",
    "package_versions",
    "render_summary_md",
    "run_paths",
    "run_study",
    "sites_without_land",
    "stage_bootstrap",
    "stage_budgets",
    "stage_compare",
    "stage_extrapolation",
    "stage_network",
    "stage_fire",
    "stage_forest",
    "stage_interpret",
    "stage_sites",
    "stage_summary",
    "stage_trends",
    "stage_upscale",
    "trend_band_rows",
    "training_rows",
    "uncertainty_label",
    "validate_study",
]
