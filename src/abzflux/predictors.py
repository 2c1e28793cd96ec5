"""The paper's 17 predictors: names, units, kinds, and per-site extraction from the stack.

Names are the variable names in the predictor stack (docs/formats.md §2). ``month`` is derived
from ``time`` and is never stored. At the 8-km (coarse) resolution the paper uses ERA5-Land
air temperature where the 1-km models use MODIS LST; both are stored as ``lst`` (surface or air
temperature, degC) so that one model definition serves both resolutions; the stack's ``lst``
attribute ``long_name`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr


@dataclass(frozen=True)
class Predictor:
    name: str
    units: str
    long_name: str
    kind: str  # "dynamic" (time, y, x), "static" (y, x) or "derived" (from time)
    categorical: bool = False


PREDICTORS: tuple[Predictor, ...] = (
    Predictor("month", "1", "calendar month", "derived", categorical=True),
    Predictor("srad", "W m-2", "downward shortwave radiation (TerraClimate)", "dynamic"),
    Predictor("vpd", "kPa", "vapour pressure deficit (TerraClimate)", "dynamic"),
    Predictor("co2", "ppm", "atmospheric CO2 mole fraction (Barrow)", "dynamic"),
    Predictor("veg_type", "1", "vegetation type (ESA CCI + CAVM classes)", "static", categorical=True),
    Predictor("snow_cover", "%", "snow cover (ERA5-Land)", "dynamic"),
    Predictor("soil_temp", "K", "soil temperature 0-7 cm (ERA5-Land)", "dynamic"),
    Predictor("soil_moisture", "m3 m-3", "volumetric soil water 0-7 cm (ERA5-Land)", "dynamic"),
    Predictor("ndvi", "1", "NDVI (gap-filled monthly mean)", "dynamic"),
    Predictor("lst", "degC", "land surface (1 km) or air (8 km) temperature", "dynamic"),
    Predictor("cti", "1", "compound topographic index", "static"),
    Predictor("nontree_pct", "%", "non-tree vegetation cover", "dynamic"),
    Predictor("nonveg_pct", "%", "non-vegetated cover", "dynamic"),
    Predictor("tree_pct", "%", "tree cover", "dynamic"),
    Predictor("soil_ph", "1", "soil pH 0-5 cm", "static"),
    Predictor("soc_stock", "kg C m-2", "soil organic carbon stock 0-2 m", "static"),
    Predictor("permafrost_prob", "1", "permafrost probability", "static"),
)

PREDICTOR_NAMES: tuple[str, ...] = tuple(p.name for p in PREDICTORS)
CATEGORICAL: tuple[str, ...] = tuple(p.name for p in PREDICTORS if p.categorical)
STACK_VARIABLES: tuple[str, ...] = tuple(p.name for p in PREDICTORS if p.kind != "derived")
BY_NAME = {p.name: p for p in PREDICTORS}

# Vegetation classes of the paper's ESA CCI + CAVM map (workflow.md §1). Class 1 (barren
# tundra) is recoded to 31 before training and prediction, as the original workflow did.
VEG_CLASSES: dict[int, str] = {
    21: "graminoid_tundra",
    30: "boreal_mosaic",
    31: "prostrate_shrub_tundra",
    33: "low_shrub_tundra",
    41: "tundra_wetland",
    50: "broadleaf_evergreen",
    60: "broadleaf_deciduous",
    70: "needleleaf_evergreen",
    80: "needleleaf_deciduous",
    90: "mixed_forest",
    120: "sparse_boreal_vegetation",
    160: "boreal_wetland",
}
VEG_RECODE = {1: 31}

# Physical range of each continuous predictor in its contract units. A value outside it means
# other units or a raw scale factor (soil temperature in degC, VPD in Pa, cover as a 0-1
# fraction, NDVI x 10000), which would otherwise train and predict on a silently wrong number.
PHYSICAL_RANGE: dict[str, tuple[float, float]] = {
    "srad": (0.0, 1500.0),
    "vpd": (0.0, 20.0),
    "co2": (200.0, 1000.0),
    "snow_cover": (0.0, 100.0),
    "soil_temp": (180.0, 340.0),
    "soil_moisture": (0.0, 1.0),
    "ndvi": (-1.0, 1.0),
    "lst": (-90.0, 70.0),
    "nontree_pct": (0.0, 100.0),
    "nonveg_pct": (0.0, 100.0),
    "tree_pct": (0.0, 100.0),
    "soil_ph": (0.0, 14.0),
    "soc_stock": (0.0, 500.0),
    "permafrost_prob": (0.0, 1.0),
}

# Units attributes accepted besides the contract's own spelling (formats.parse_units compares
# meanings, so "W/m2" or "m**3 m**-3" need no entry here).
UNITS_ALSO: dict[str, tuple[str, ...]] = {"soc_stock": ("kg m-2",)}

# The bootstrap forests drop the two factors: a resample can lose a level (paper, Methods).
BOOTSTRAP_DROP = ("month", "veg_type")

# Where a prediction cell's vegetation class never occurred in a model's training rows, the
# class is replaced by the first of these similar classes that did (workflow.md §1: "remapped
# or masked"); cells with no trained fallback are masked. Every replacement is logged.
VEG_FALLBACK: dict[int, tuple[int, ...]] = {
    21: (33, 41, 31),
    30: (90, 120, 70),
    31: (33, 21),
    33: (31, 21, 41),
    41: (160, 21, 33),
    50: (70, 90, 60),
    60: (90, 30, 70),
    70: (90, 30, 80),
    80: (70, 90, 120),
    90: (70, 60, 30),
    120: (30, 80, 33),
    160: (41, 30, 120),
}


def training_rows(table: pd.DataFrame, flux: str) -> pd.DataFrame:
    """Listwise deletion for one flux: rows where the flux and all 17 predictors are present."""
    cols = list(PREDICTOR_NAMES) + [flux]
    return table[table[cols].notna().all(axis=1)]


def extract_at_sites(table: pd.DataFrame, pred: xr.Dataset, iy: np.ndarray, ix: np.ndarray) -> int:
    """Add every stack predictor's value at each site-month (grid cell ``iy``, ``ix``, the row's
    month) to ``table`` in place; months outside the stack get NaN. Returns their count."""
    times = pd.DatetimeIndex(pred.time.values)
    key = pd.Series(np.arange(len(times)), index=times.year * 100 + times.month)
    ti = (table.year * 100 + table.month).map(key)
    in_period = ti.notna().to_numpy()
    t_idx = xr.DataArray(np.where(in_period, ti.fillna(0), 0).astype(int), dims="row")
    y_idx, x_idx = xr.DataArray(iy, dims="row"), xr.DataArray(ix, dims="row")
    for v in (n for n in PREDICTOR_NAMES if n != "month"):
        da = pred[v]
        if "time" in da.dims:
            vals = da.isel(time=t_idx, y=y_idx, x=x_idx).values.astype(np.float64)
            vals[~in_period] = np.nan
        else:
            vals = da.isel(y=y_idx, x=x_idx).values.astype(np.float64)
        table[v] = vals
    return int((~in_period).sum())


def finish_training_table(
    table: pd.DataFrame, zones: xr.Dataset, iy: np.ndarray, ix: np.ndarray, zone_names: dict[str, dict]
) -> pd.DataFrame:
    """Recode vegetation, add the optional contract columns, the zone names (``zone_names``:
    variable -> code -> name, for skill breakdowns) and the permafrost flag of each row's cell."""
    if "veg_type" in table:
        table["veg_type"] = table["veg_type"].replace(VEG_RECODE)
    for c in ("method", "disturbance", "years_since_fire"):  # optional contract columns
        if c not in table:
            table[c] = np.nan
    yi, xi = xr.DataArray(iy, dims="row"), xr.DataArray(ix, dims="row")
    for zvar in ("biome", "region"):
        codes = zones[zvar].isel(y=yi, x=xi).values
        table[zvar] = pd.Series(codes).map({float(k): v for k, v in zone_names[zvar].items()}).to_numpy()
    table["permafrost"] = zones["permafrost"].isel(y=yi, x=xi).values.astype(np.float64)
    return table
