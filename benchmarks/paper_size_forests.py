"""A model set of the paper's size for memory measurements, without fitting 60 bootstrap forests.

    python benchmarks/paper_size_forests.py --run RUN --out SET [--members 20] [--old-format OLD]

``RUN`` is a run directory whose ``forest`` stage ran with the paper's settings (500 trees):
its three final forests are copied to ``SET/models``. One bootstrap forest per flux is fitted as
the bootstrap stage fits member 0 (rows resampled with replacement, month and vegetation type
dropped, the run's mtry capped at 15, ``forest.n_estimators`` trees) and written ``--members``
times as ``SET/bootstrap/<flux>_<b>.npz``: separate files of the real size, so that memory
(page cache, mappings, copies) behaves as with 20 distinct members; only their predictions are
alike. ``--old-format OLD`` writes the same set in the compressed ``.npz`` of abzflux <= f02310f
(not mappable) for the before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from abzflux import seeds
from abzflux.forest import FluxForest
from abzflux.predictors import PAPER, training_rows
from abzflux.uncertainty import resample_rows
from abzflux.vocab import FLUXES


def old_save(m: FluxForest, path: Path) -> None:
    meta = {
        "params": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in m.get_params().items()}
        | {"categorical": list(m.categorical)},
        "feature_names": list(m.feature_names_),
        "mtry": int(m.mtry_),
        "levels": {c: [v.item() if isinstance(v, np.generic) else v for v in lv] for c, lv in m.levels_.items()},
    }
    arrays = m.forest_.to_arrays()
    arrays.pop("wcount")
    if m.leaf_draw_ is not None:
        arrays["leaf_draw"] = m.leaf_draw_
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--seed", type=int, default=448)
    ap.add_argument("--old-format", type=Path, default=None)
    a = ap.parse_args()
    run = json.loads((a.run / "run.json").read_text())
    fs = run["config"]["forest"]
    info = json.loads((a.run / "models" / "forest.json").read_text())
    table = pd.read_parquet(a.run / "sites.parquet")
    cols = list(PAPER.bootstrap_names)
    sets = [(a.out, False)] + ([(a.old_format, True)] if a.old_format else [])
    for d, _ in sets:
        (d / "models").mkdir(parents=True, exist_ok=True)
        (d / "bootstrap").mkdir(parents=True, exist_ok=True)
    rec: dict = {}
    for flux in FLUXES:
        final = FluxForest.load(a.run / "models" / f"{flux}.npz")
        rows = training_rows(table, flux, PAPER).reset_index(drop=True)
        idx = resample_rows(rows.site_id.to_numpy(), "rows", seeds.rng(a.seed, "bootstrap_rows", 0), None)
        sample = rows.iloc[idx].reset_index(drop=True)
        m = FluxForest(
            n_estimators=fs["n_estimators"],
            mtry=min(info[flux]["mtry"], len(cols)),
            nodesize=fs["nodesize"],
            categorical=(),
            central=fs["central"],
            random_state=seeds.integer(a.seed, "bootstrap_forest", 0),
        ).fit(sample[cols], sample[flux].to_numpy())
        rec[flux] = [{"member": b} for b in range(a.members)]
        for d, old in sets:
            save = (lambda f, p: old_save(f, p)) if old else (lambda f, p: f.save(p))
            save(final, d / "models" / f"{flux}.npz")
            save(m, d / "bootstrap" / f"{flux}_00.npz")
            for b in range(1, a.members):
                shutil.copyfile(d / "bootstrap" / f"{flux}_00.npz", d / "bootstrap" / f"{flux}_{b:02d}.npz")
        print(flux, "final nodes", final.forest_.n_nodes, "member nodes", m.forest_.n_nodes, flush=True)
    for d, _ in sets:
        (d / "bootstrap" / "bootstrap.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
