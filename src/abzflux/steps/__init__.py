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

__all__ = ["STEPS", "StepSpec", "stage_table"]


def _code(items) -> str:
    return ", ".join(f"`{i}`" for i in items) or "–"


def stage_table() -> str:
    """The stage graph as a markdown table, generated from the specs (docs/architecture.md
    holds this text between its ``stage table`` markers; tests/test_architecture.py checks it)."""
    lines = ["| stage | module | config keys | inputs | upstream stages | upstream outputs read | outputs written "
             "| runs |", "|---|---|---|---|---|---|---|---|"]
    for st in STEPS:
        runs = (f"with `inputs.{st.optional}`" if st.optional else f"when `{st.enabled_by}`" if st.enabled_by
                else "always")
        writes = _code(st.writes) + (" (+ " + _code(st.extras) + " in some runs)" if st.extras else "")
        lines.append(f"| {st.name} | `steps/{st.name}.py` | {_code(st.config_keys)} | "
                     f"{_code(f'inputs.{i}' for i in st.inputs)} | {', '.join(st.depends) or '–'} | "
                     f"{_code(st.reads)} | {writes} | {runs} |")
    return "\n".join(lines) + "\n"
