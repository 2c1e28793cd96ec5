"""(c) upscale: monthly GPP, Reco, NEE (+ bootstrap SD) over every land cell, streamed
tile-year by tile-year into Zarr (:mod:`abzflux.upscale`); resumes a killed run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from .. import layout as L
from .. import upscale as upscale_mod
from ..context import Context
from ..vocab import FLUXES
from .budgets import PERMAFROST_KEYS
from .sites import PREDICTOR_KEYS
from .spec import StepSpec

log = logging.getLogger(__name__)


def run(ctx: Context, progress=None) -> None:
    lay = ctx.layout
    own_bar = progress is None
    if own_bar:
        progress = ctx.progress("upscaling tile-years")
    try:
        pred = ctx.predictors()
        ctx.zones()  # validated (grid, codes) before any chunk runs
        y0, y1 = ctx.years()
        times = pd.DatetimeIndex(pred.time.values)
        sel = np.nonzero((times.year >= y0) & (times.year <= y1))[0]
        models = {f: lay.model(f) for f in FLUXES}
        members = {}
        if lay.bootstrap_json.exists():
            members = {
                f: [lay.member(f, m["member"]) for m in v]
                for f, v in json.loads(lay.bootstrap_json.read_text()).items()
                if f in FLUXES and v
            }
        info = upscale_mod.upscale(
            ctx.cfg.inputs.predictors,
            ctx.cfg.inputs.zones,
            models,
            members,
            ctx.out,
            sel,
            tile=ctx.cfg.run.tile,
            client=ctx.client(),
            progress=progress,
            fingerprint=ctx.cache.get("fingerprint", ""),
            predictor_set=ctx.predictor_set,
            permafrost=(ctx.cfg.budgets.permafrost, ctx.cfg.budgets.permafrost_threshold),
        )
    finally:
        if own_bar and progress is not None:
            progress(None, None)
    log.info(f"upscaled {info['chunks']} tile-years ({info['resumed']} resumed), tile {info['tile']} cells")


SPEC = StepSpec(
    "upscale",
    run,
    writes=(L.UPSCALED,),
    depends=("forest", "bootstrap"),
    reads=("models/", "bootstrap/"),
    config_keys=("run.years", "run.tile") + PREDICTOR_KEYS + PERMAFROST_KEYS,  # member budgets per zone
    inputs=("predictors", "zones"),
    extras=(L.MEMBERS_MONTHLY,),
    summary="monthly GPP, Reco, NEE and bootstrap SD maps, tile-year by tile-year into Zarr",
)
