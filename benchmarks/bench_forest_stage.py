"""Time the forest stage alone (after the sites stage) of a run config, with whichever abzflux
is importable: the current package (steps) or one from before the restructure (pipeline, at
430ee01 or earlier: ``PYTHONPATH=<clone>/src``), so that old and new code can be raced on one
machine.

    python benchmarks/bench_forest_stage.py TWIN/config.toml WORKDIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from abzflux.config import load_config


def main(config: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    cfg = load_config(config)
    try:
        from abzflux import steps
        from abzflux.context import Context

        ctx = Context(cfg=cfg, out=out)
        sites, forest, code = steps.sites.run, steps.forest.run, "steps"
    except ImportError:  # before the restructure
        from abzflux.pipeline import Context as OldContext
        from abzflux.pipeline import stage_forest, stage_sites

        ctx = OldContext(cfg=cfg, out=out, log=lambda *a, **k: None)
        sites, forest, code = stage_sites, stage_forest, "pipeline"
    sites(ctx)
    t = time.perf_counter()
    forest(ctx)
    print(f"forest stage ({code} code): {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
