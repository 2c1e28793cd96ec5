"""Compare a prepared stack and its study with the directly written twin (docs/prepare.md).

    python scripts/prepare_recovery.py TWIN_DIR PREPARED_DIR [RUN_DIRECT RUN_PREPARED]

TWIN_DIR holds the contract twin (predictors.zarr, zones.*); PREPARED_DIR is `abzflux prepare`'s
output on the raw twin. Prints (markdown) per predictor: Pearson r, mean bias (prepared - twin)
and RMSE over land cells and all shared months; zones: share of land cells with the same
biome / region, land-fraction r; and, given the two run directories, the domain/biome/region
budgets against the truth and the NEE map r of both runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from abzflux.formats import open_dataset


def _open(d: Path, stem: str) -> xr.Dataset:
    for suffix in (".zarr", ".nc"):
        if (d / f"{stem}{suffix}").exists():
            return open_dataset(d / f"{stem}{suffix}")
    raise FileNotFoundError(d / stem)


def predictors(twin: Path, prep: Path) -> list[str]:
    a, b = _open(twin, "predictors"), _open(prep, "predictors")
    land = _open(twin, "zones")["land_fraction"].values > 0
    times = np.intersect1d(a.time.values, b.time.values)
    rows = ["| predictor | units | r | bias (prepared − twin) | RMSE | twin SD |", "|---|---|---|---|---|---|"]
    for v in a.data_vars:
        if v not in b or v == "spatial_ref" or a[v].ndim < 2:
            continue
        x, y = a[v], b[v]
        if "time" in x.dims:
            x, y = x.sel(time=times), y.sel(time=times)
        x, y = np.asarray(x.values, float), np.asarray(y.values, float)
        m = np.broadcast_to(land, x.shape) & np.isfinite(x) & np.isfinite(y)
        if v == "veg_type":
            rows.append(f"| {v} | class | same class in {np.mean(x[m] == y[m]):.1%} of land cell-values | | | |")
            continue
        r = np.corrcoef(x[m], y[m])[0, 1]
        d = y[m] - x[m]
        units = a[v].attrs.get("units", "")
        rows.append(f"| {v} | {units} | {r:.3f} | {d.mean():.3g} | {np.sqrt((d**2).mean()):.3g} | {x[m].std():.3g} |")
    za, zb = _open(twin, "zones"), _open(prep, "zones")
    ok = land & np.isfinite(zb["land_fraction"].values)
    for z in ("biome", "region"):
        rows.append(f"| zone {z} | code | same code in {np.mean(za[z].values[ok] == zb[z].values[ok]):.1%} of land cells | | | |")
    lf_a, lf_b = za["land_fraction"].values, zb["land_fraction"].values
    m = np.isfinite(lf_a) & np.isfinite(lf_b)
    rows.append(f"| zone land_fraction | 1 | {np.corrcoef(lf_a[m], lf_b[m])[0, 1]:.3f} | {np.mean(lf_b[m] - lf_a[m]):.3g} | | |")
    return rows


def runs(direct: Path, prepared: Path) -> list[str]:
    s = [json.loads((d / "summary.json").read_text()) for d in (direct, prepared)]
    rows = [
        "| zone | flux | truth (Tg C yr-1) | direct twin | prepared from raw |",
        "|---|---|---|---|---|",
    ]
    keyed = [{(r["zone"], r["flux"]): r for r in si["truth"]} for si in s]
    for zone in ("domain", "boreal", "tundra", "alaska", "canada", "europe", "siberia"):
        for flux in ("gpp", "reco", "nee"):
            a, b = keyed[0].get((zone, flux)), keyed[1].get((zone, flux))
            if a and b:
                rows.append(f"| {zone} | {flux} | {a['truth']:.0f} | {a['estimate']:.0f} | {b['estimate']:.0f} |")
    rows.append(f"| NEE map r (mean annual) | | | {s[0]['nee_map_pearson_r']:.3f} | {s[1]['nee_map_pearson_r']:.3f} |")
    return rows


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    out = predictors(args[0], args[1])
    if len(args) == 4:
        out += [""] + runs(args[2], args[3])
    print("\n".join(out))
