"""What carries the modelled budget trends, and how the NEE forest's mtry changes them
(docs/uncertainty.md, "What carries the modelled trend").

    PYTHONPATH=src python benchmarks/trend_attribution.py CONFIG RUN_DIR OUT [--names co2,ndvi] [--mtry 2,5]

CONFIG and RUN_DIR: a finished run (e.g. the demo twin's); nothing is written there. OUT gets
``trend_attribution.csv`` (abzflux.attribution.trend_attribution with the run's final forests),
``truth_trends.csv`` (the twin's true budget trends, when the config has ``inputs.truth``) and,
with ``--mtry``, ``mtry_trends.csv``: the budget trends of forests retrained with each fixed
mtry (the run's other forest settings, no CV, no importance) and upscaled the same way.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from abzflux.attribution import trend_attribution, upscaled_trends
from abzflux.calibrate import annual_trends, truth_annual
from abzflux.config import load_config
from abzflux.context import Context
from abzflux.layout import RunLayout
from abzflux.steps import STEPS
from abzflux.vocab import FLUXES

log = logging.getLogger("trend_attribution")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--names", default=None, help="predictors to hold, comma-separated (default: every time-varying one)"
    )
    ap.add_argument("--mtry", default="", help="also retrain the forests with these fixed mtry values, comma-separated")
    ap.add_argument("--no-attribution", action="store_true", help="only the --mtry part")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(a.config)
    a.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg=cfg, out=a.out / "ctx")
    method = cfg.trends.prewhitening
    if cfg.inputs.truth:
        truth = truth_annual(ctx)
        annual_trends(truth[["zone", "flux", "year", "tg_c"]], method=method).to_csv(
            a.out / "truth_trends.csv", index=False
        )
    models = {f: RunLayout(a.run_dir).model(f) for f in FLUXES}
    names = a.names.split(",") if a.names else None
    t0 = time.perf_counter()
    if not a.no_attribution:
        trend_attribution(ctx, models, a.out / "work", names).to_csv(a.out / "trend_attribution.csv", index=False)
        log.info(f"attribution: {time.perf_counter() - t0:.0f} s")
    rows = []
    spec = {st.name: st for st in STEPS}
    for m in [int(v) for v in a.mtry.split(",") if v]:
        d = a.out / f"mtry{m}"
        d.mkdir(exist_ok=True)
        mcfg = replace(cfg, forest=replace(cfg.forest, mtry=m, cv=False, importance_repeats=0))
        mctx = Context(cfg=mcfg, out=d)
        for name in ("sites", "forest"):
            if not (d / spec[name].writes[0]).exists():
                spec[name].run(mctx)
        ann = upscaled_trends(mctx, Path(cfg.inputs.predictors), {f: RunLayout(d).model(f) for f in FLUXES}, d / "up")
        rows.append(annual_trends(ann, method=method).assign(mtry=m))
        log.info(f"mtry {m}: {time.perf_counter() - t0:.0f} s")
    if rows:
        pd.concat(rows, ignore_index=True).to_csv(a.out / "mtry_trends.csv", index=False)


if __name__ == "__main__":
    main()
