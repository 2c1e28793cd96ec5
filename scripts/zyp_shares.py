"""Share of the domain's land with a significant (p < 0.05) annual NEE / GPP / Reco trend, by zyp option."""
import sys
import numpy as np, xarray as xr
from abzflux import trends as T
from abzflux.formats import open_dataset
run, zones = sys.argv[1], sys.argv[2]
up = xr.open_zarr(f"{run}/upscaled.zarr", consolidated=False)
lf = open_dataset(zones)["land_fraction"].fillna(0).values
print("| prewhitening | preserve_range_for_sig_test | NEE | GPP | Reco |")
print("|---|---|---|---|---|")
for method in ("zhang", "yuepilon"):
    for preserve in (False, True):
        cells = []
        for flux in ("nee", "gpp", "reco"):
            ann = T.period_series(up[flux].load())["annual"]
            t = T.trend_grid(ann, "year", method=method, preserve_range_for_sig_test=preserve)
            sig = (t["p"].values < 0.05) & np.isfinite(t["p"].values)
            cells.append(f"{(lf * sig).sum() / lf.sum():.1%}")
        print(f"| {method} | {str(preserve).lower()} | " + " | ".join(cells) + " |")
