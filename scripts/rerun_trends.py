"""Rerun only the trends stage of a finished run in place (e.g. a copy of a demo run after a change
to the trends code, without the upstream stages that a code change would rerun) and print its time:
python scripts/rerun_trends.py CONFIG RUN"""

import sys
import time
from pathlib import Path

from abzflux.config import load_config
from abzflux.context import Context
from abzflux.steps.trends import run as stage_trends

ctx = Context(cfg=load_config(sys.argv[1]), out=Path(sys.argv[2]))
t0 = time.perf_counter()
stage_trends(ctx, progress=lambda done, total: None)
print(f"trends stage: {time.perf_counter() - t0:.1f} s")
