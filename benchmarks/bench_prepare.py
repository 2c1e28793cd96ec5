"""Bounded-memory benchmark of ``abzflux prepare``: one year (12 months) of a synthetic 0.1°
lat/lon source (45-90°N, all longitudes, NetCDF, like ERA5-Land monthly means) prepared onto an
N x N slab of a 1-km EPSG:6931 grid (one predictor, `soil_temp`, degC -> K).

    python benchmarks/bench_prepare.py WORKDIR [N ...]        # default N: 1000 2000

Each N runs in its own process (so peak RSS is that run's own), wall time and peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``) are printed per N, then the projection to
the 10,000 x 10,000 domain (cells scale linearly; memory does not grow with N when streaming is
bounded).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

RES_DEG = 0.1
TILE = 512


def make_source(path: Path) -> None:
    lat = np.arange(90 - RES_DEG / 2, 45, -RES_DEG)
    lon = np.arange(-180 + RES_DEG / 2, 180, RES_DEG)
    t = pd.date_range("2019-01-01", periods=12, freq="MS")
    base = (lat[:, None] * -0.5 + 30 + 5 * np.cos(np.deg2rad(lon))[None, :]).astype(np.float32)
    data = np.stack([base + 10 * np.sin(np.pi * k / 11) for k in range(12)])
    ds = xr.Dataset(
        {"stl1": (("time", "latitude", "longitude"), data, {"units": "degC"})},
        coords={"time": t, "latitude": lat, "longitude": lon},
    )
    enc = {"stl1": {"chunksizes": (1, 450, 900), "zlib": True, "complevel": 1}}
    ds.to_netcdf(path, engine="h5netcdf", encoding=enc)


def recipe(work: Path, n: int) -> Path:
    half = n * 1000 / 2
    # a slab centred on 65°N, 100°E-ish (x > 0 side of the pole), away from the pole
    cx, cy = 2.5e6, 0.0
    r = work / f"recipe_{n}.toml"
    r.write_text(
        f"""[grid]
crs = "EPSG:6931"
resolution = 1000
extent = [{cx - half}, {cy - half}, {cx + half}, {cy + half}]
[time]
years = "2019"
[output]
tile = {TILE}
[predictors.soil_temp]
files = ["src.nc"]
"""
    )
    return r


def child(recipe_path: str, out: str) -> None:
    from abzflux.prepare.build import prepare

    t0 = time.time()
    prepare(recipe_path, out)
    wall = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(json.dumps({"wall_s": wall, "peak_rss_mib": rss}))


def main(work: Path, sizes: list[int]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src.nc"
    if not src.exists():
        make_source(src)
    rows = []
    for n in sizes:
        out = work / f"out_{n}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        r = recipe(work, n)
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(r), str(out)], capture_output=True, text=True, check=True
        )
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        rec.update(n=n, cells=n * n, process_wall_s=time.time() - t0)
        rows.append(rec)
        print(
            f"N={n:>6} ({n * n / 1e6:.1f} M cells x 12 months): prepare {rec['wall_s']:.1f} s, "
            f"process {rec['process_wall_s']:.1f} s, peak RSS {rec['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    big = rows[-1]
    per_cell_month = big["wall_s"] / (big["cells"] * 12)
    full = 10_000 * 10_000
    print(
        f"projection: 10,000 x 10,000 x 12 months = {per_cell_month * full * 12 / 60:.0f} min per predictor-year; "
        f"x 240 months = {per_cell_month * full * 240 / 3600:.1f} h per predictor (same peak RSS: streamed)"
    )


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main(Path(sys.argv[1]), [int(v) for v in sys.argv[2:]] or [1000, 2000])
