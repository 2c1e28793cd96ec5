"""The declared shape of a step: what it reads and writes and what its outputs depend on."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StepSpec:
    """One stage of the study.

    ``writes``: the top-level outputs (run-directory names, :mod:`abzflux.layout`) the step
    always writes; ``extras``: outputs written only in some runs. ``depends``: the upstream
    stages whose fingerprints this stage's fingerprint includes; ``reads``: the upstream outputs
    (paths relative to the run directory) the step reads. ``config_keys`` and ``inputs``: the
    config keys and input files (``inputs.<name>``) the step's outputs depend on directly.
    ``optional``: runs only when that input is given; ``enabled``: runs only when
    ``enabled(config)`` is true."""

    name: str
    run: Callable
    writes: tuple[str, ...]
    depends: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    optional: str | None = None
    extras: tuple[str, ...] = ()
    enabled: Callable | None = None
    enabled_by: str | None = None  # the config key ``enabled`` reads (for the docs)
    summary: str = ""

    # the names the runner used before the steps existed (abzflux.pipeline.Stage)
    @property
    def outputs(self) -> tuple[str, ...]:
        return self.writes

    @property
    def func(self) -> Callable:
        return self.run


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (a step's ``<output>.tmp``)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def with_progress(ctx, label: str, func: Callable, *args, **kw):
    """Call ``func(..., progress=update)`` with a progress bar from the context's factory, ended
    afterwards."""
    prog = ctx.progress(label)
    try:
        return func(*args, progress=prog, **kw)
    finally:
        if prog is not None:
            prog(None, None)
