"""The tiny twin (benchmarks/tiny_twin_digest.py) with a fractional permafrost map (the twin's
permafrost probability on land) under three ``[budgets]`` permafrost rules: the permafrost zone's
NEE budget and density, Table 1's in-situ permafrost group, the source-area share, and whether
Table 1's sites and the budgets' cells agree on the region (docs/budgets.md "Permafrost region").

    PYTHONPATH=src python benchmarks/permafrost_rules.py WORKDIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abzflux import budgets
from abzflux.config import load_config
from abzflux.runner import run_study
from abzflux.twin import make_twin

sys.path.insert(0, str(Path(__file__).parent))
from tiny_twin_digest import FOREST, TINY  # noqa: E402

RULES = {"mask > 0 (default)": ("mask", 0.0), "weighted": ("weighted", 0.0), "mask > 0.5": ("mask", 0.5)}


def main(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    tw = out / "twin"
    make_twin(tw, TINY)
    z = xr.load_dataset(tw / "zones.nc")
    p = xr.open_zarr(tw / "predictors.zarr", consolidated=False)["permafrost_prob"]
    p = p.isel(time=0) if "time" in p.dims else p
    land = z.land_fraction.fillna(0).values > 0
    z["permafrost"] = (("y", "x"), np.where(land, np.clip(p.values, 0, 1), 0).astype(np.float32), z.permafrost.attrs)
    (tw / "zones.nc").unlink()
    z.to_netcdf(tw / "zones.nc")
    v = z.permafrost.values[land]
    print(f"land cells {v.size}: value > 0 {(v > 0).sum()}, > 0.5 {(v > 0.5).sum()}, mean {v.mean():.3f}")
    text = (tw / "config.toml").read_text()
    print(
        "| rule | NEE budget (Tg C yr-1) | density (g C m-2 yr-1) | Table 1 sites, mean | source share | sites = cells |"
    )
    print("|---|---|---|---|---|---|")
    for i, (label, (rule, thr)) in enumerate(RULES.items()):
        extra = f'[budgets]\npermafrost = "{rule}"\npermafrost_threshold = {thr}\n'
        (tw / f"cfg{i}.toml").write_text(text[: text.index("[forest]")] + FOREST + extra)
        run = out / f"run{i}"
        run_study(load_config(tw / f"cfg{i}.toml"), run)
        per = pd.read_csv(run / "budgets/period.csv")
        nee = per[(per.zone == "permafrost") & (per.flux == "nee") & (per.season == "annual")].iloc[0]
        t1 = pd.read_csv(run / "budgets/table1.csv")
        t1 = t1[(t1.group == "permafrost") & (t1.flux == "nee") & (t1.season == "annual")].iloc[0]
        src = pd.read_csv(run / "budgets/source_areas.csv")
        share = src[(src.zone == "permafrost") & (src.flux == "nee")].source_share.iloc[0]
        s = pd.read_parquet(run / "sites.parquet").drop_duplicates("site_id")
        w = budgets.zone_weights(budgets.permafrost_zones(z, rule, thr)).sel(zone="permafrost").values
        agree = (
            (w[s.iy.to_numpy(), s.ix.to_numpy()] > 0) == (budgets.permafrost_weight(s.permafrost, rule, thr) > 0)
        ).all()
        print(
            f"| {label} | {nee.tg_c:.1f} | {nee.density:.1f} | {int(t1.insitu_sites)}, {t1.insitu_mean:.1f} | "
            f"{share:.3f} | {bool(agree)} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
