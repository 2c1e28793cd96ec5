"""The twin tables of docs/trends.md (seasonal budget trends, driver trends, fire trend maps) from a
finished run's trends/: python scripts/season_trends.py RUN"""

import sys

import numpy as np
import pandas as pd
import xarray as xr

run = sys.argv[1]
st = pd.read_csv(f"{run}/trends/seasonal_budget_trends.csv")
dt = pd.read_csv(f"{run}/trends/driver_trends.csv")
tm = xr.open_zarr(f"{run}/trends/trend_maps.zarr", consolidated=False)
cell = lambda r: "" if pd.isna(r.slope) else f"{r.slope:.3g}" + ("*" if r.p < 0.05 else "")  # noqa: E731
print("| zone | flux | annual | JJA | non-summer | Sep–May | Jan | Apr | May | Jun | Jul | Aug | Sep | Oct |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
seasons = ["annual", "jja", "nonsummer", "nonsummer_crossyear", "m01", "m04", "m05", "m06", "m07", "m08", "m09", "m10"]
for zone in ("domain", "boreal", "tundra"):
    for flux in ("nee", "gpp", "reco", "nee_fire"):
        s = st[(st.zone == zone) & (st.flux == flux)].set_index("season")
        print(f"| {zone} | {flux} | " + " | ".join(cell(s.loc[x]) for x in seasons) + " |")
print()
print("| driver | unit | annual | JJA | non-summer | MAM | SON | DJF |")
print("|---|---|---|---|---|---|---|---|")
for drv, d in dt[dt.zone == "domain"].groupby("driver", sort=True):
    d = d.set_index("season")
    print(
        f"| {drv} | {d.units.iloc[0]} | "
        + " | ".join(cell(d.loc[x]) for x in ("annual", "jja", "nonsummer", "mam", "son", "djf"))
        + " |"
    )
print()
fs, fp = tm.fire_annual_slope.values, tm.fire_annual_p.values
nf, nfp = tm.nee_fire_annual_slope.values, tm.nee_fire_annual_p.values
print(
    f"fire trend cells: {np.isfinite(fs).sum()} of {np.isfinite(nf).sum()}; non-zero slope {(np.nan_to_num(fs) != 0).sum()}; "
    f"p < 0.05 {(np.nan_to_num(fp, nan=1) < 0.05).sum()}; "
    f"years {tm.fire_annual_slope.attrs.get('first_year')}-{tm.fire_annual_slope.attrs.get('last_year')}"
)
print(pd.read_csv(f"{run}/trends/area_shares.csv").to_string(index=False))
