"""The study's stages, one module each, in run order (docs/architecture.md).

Each module declares ``SPEC`` (a :class:`StepSpec`: what the step reads and writes and which
config keys and inputs its outputs depend on) and ``run(ctx)``, which reads its inputs and
upstream outputs, calls the science modules, and writes its outputs under temporary names that
are renamed into place when complete. The runner (:mod:`abzflux.runner`) orders, skips and
fingerprints them.
"""

from __future__ import annotations

from . import (
    bootstrap,
    budgets,
    compare,
    extrapolation,
    fire,
    forest,
    interpret,
    network,
    sites,
    summary,
    trends,
    upscale,
)
from .spec import StepSpec

#: Every step, upstream ones first.
STEPS: tuple[StepSpec, ...] = (
    sites.SPEC,
    forest.SPEC,
    interpret.SPEC,
    bootstrap.SPEC,
    extrapolation.SPEC,
    upscale.SPEC,
    network.SPEC,
    budgets.SPEC,
    trends.SPEC,
    fire.SPEC,
    compare.SPEC,
    summary.SPEC,
)

__all__ = ["STEPS", "StepSpec", "lineage", "stage_table"]


def lineage(specs=STEPS) -> dict[str, tuple[tuple, tuple]]:
    """Per stage: the config keys and inputs of the stage and every stage upstream of it (what
    its outputs depend on, directly or through upstream outputs; the runner's fingerprints and
    run-directory conflicts use it)."""
    out: dict[str, tuple[set, set]] = {}
    for st in specs:  # upstream stages come first
        keys, inputs = set(st.config_keys), set(st.inputs)
        for d in st.depends:
            keys |= out[d][0]
            inputs |= out[d][1]
        out[st.name] = (keys, inputs)
    return {k: (tuple(sorted(a)), tuple(sorted(b))) for k, (a, b) in out.items()}


def _code(items) -> str:
    return ", ".join(f"`{i}`" for i in items) or "–"


def stage_table() -> str:
    """The stage graph as a markdown table, generated from the specs (docs/architecture.md
    holds this text between its ``stage table`` markers; tests/test_architecture.py checks it)."""
    lines = [
        "| stage | module | config keys | inputs | upstream stages | upstream outputs read | outputs written | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in STEPS:
        runs = (
            f"with `inputs.{st.optional}`" if st.optional else f"when `{st.enabled_by}`" if st.enabled_by else "always"
        )
        writes = _code(st.writes) + (" (+ " + _code(st.extras) + " in some runs)" if st.extras else "")
        lines.append(
            f"| {st.name} | `steps/{st.name}.py` | {_code(st.config_keys)} | "
            f"{_code(f'inputs.{i}' for i in st.inputs)} | {', '.join(st.depends) or '–'} | "
            f"{_code(st.reads)} | {writes} | {runs} |"
        )
    lines += [
        "",
        "Every config key and input a stage's outputs depend on (its own and its upstream stages'; "
        "a change reruns the stage):",
        "",
        "| stage | config keys | inputs |",
        "|---|---|---|",
    ]
    for name, (keys, inputs) in lineage().items():
        lines.append(f"| {name} | {_code(keys)} | {_code(f'inputs.{i}' for i in inputs)} |")
    return "\n".join(lines) + "\n"
