"""The study's stages, one module each, in run order (docs/architecture.md).

Each module declares ``SPEC`` (a :class:`StepSpec`: what the step reads and writes and which
config keys and inputs its outputs depend on) and ``run(ctx)``, which reads its inputs and
upstream outputs, calls the science modules, and writes its outputs under temporary names that
are renamed into place when complete. The runner (:mod:`abzflux.runner`) orders, skips and
fingerprints them.
"""

from __future__ import annotations

from . import bootstrap, budgets, compare, extrapolation, fire, forest, interpret, sites, summary, trends, upscale
from .spec import StepSpec

#: Every step, upstream ones first.
STEPS: tuple[StepSpec, ...] = (
    sites.SPEC, forest.SPEC, interpret.SPEC, bootstrap.SPEC, extrapolation.SPEC, upscale.SPEC, budgets.SPEC,
    trends.SPEC, fire.SPEC, compare.SPEC, summary.SPEC,
)

__all__ = ["STEPS", "StepSpec"]
