"""The tiny twin's whole study (300 km, 2019-2020, 30 sites; 40 trees, mtry grid [2, 9]) and its
output digest, with whichever abzflux is importable: run it with two checkouts' ``src`` on
``PYTHONPATH`` to check that a change leaves the default config's outputs bit-identical
(docs/formats.md §2b).

    PYTHONPATH=<checkout>/src python benchmarks/tiny_twin_digest.py WORKDIR
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from abzflux.config import load_config
from abzflux.runner import run_study
from abzflux.twin import TwinSpec, make_twin

TINY = TwinSpec(resolution_km=300, first_year=2019, last_year=2020, seed=448, n_sites=30, n_site_months=400)
FOREST = "[forest]\nn_estimators = 40\nmtry_grid = [2, 9]\nimportance_repeats = 3\npdp_points = 11\npdp_rows = 200\nn_bootstrap = 3\n"


def main(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    make_twin(out / "twin", TINY)
    text = (out / "twin" / "config.toml").read_text()
    (out / "twin" / "cfg.toml").write_text(text[: text.index("[forest]")] + FOREST)
    rec = run_study(load_config(out / "twin" / "cfg.toml"), out / "run")
    stages = {k: v.get("digest") for k, v in rec["stages"].items()}
    (out / "digests.json").write_text(json.dumps(stages, indent=1))
    print(f"output_digest {rec['output_digest']} ({time.perf_counter() - t0:.0f} s; per stage: {out / 'digests.json'})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
