"""The model's predictors: a declared :class:`PredictorSet` (default :data:`PAPER`, the paper's
17), and per-site extraction from the stack.

Names are the model's names (docs/formats.md §2); each predictor's ``source`` is its variable
name in the stack (default: the name). ``month`` is derived from ``time`` and is never stored.
At the 8-km (coarse) resolution the paper uses ERA5-Land air temperature where the 1-km models
use MODIS LST; both are stored as ``lst`` (surface or air temperature, degC) so that one model
definition serves both resolutions; the stack's ``lst`` attribute ``long_name`` says which.

A run config's ``[predictors]`` section (docs/formats.md §2b) selects, drops, renames, re-unit
or adds predictors: :func:`from_declaration` turns it into a :class:`PredictorSet`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from . import units as units_mod
from .errors import ConfigError

log = logging.getLogger(__name__)

#: How a predictor varies: every month, once a year (repeated over the months of its year), not
#: at all (a (y, x) layer), a (time,) series the same over the grid (broadcast), or derived from
#: ``time`` (``month`` only). Monthly, annual and series predictors are "time-varying": the
#: model sees a value per month; the stack may hold them as (time, y, x), one layer per year,
#: (y, x) or (time,) (docs/formats.md §2).
KINDS = ("monthly", "annual", "static", "series", "derived")
TIME_VARYING = ("monthly", "annual", "series")


@dataclass(frozen=True)
class Predictor:
    name: str
    units: str  # contract units: the stack's are converted to these (abzflux.units)
    long_name: str
    kind: str  # one of KINDS
    categorical: bool = False
    source: str = ""  # variable name in the stack ("" = name)
    range: tuple[float, float] | None = None  # physical range in ``units`` (continuous only)
    units_also: tuple[str, ...] = ()  # other spellings taken as the contract units as they are

    @property
    def stack_name(self) -> str:
        return self.source or self.name

    @property
    def stored(self) -> bool:
        """Read from the stack (every kind but ``derived``)."""
        return self.kind != "derived"

    @property
    def time_varying(self) -> bool:
        return self.kind in TIME_VARYING


@dataclass(frozen=True)
class PredictorSet:
    """The model's predictors, in model order (immutable).

    ``also_read``: stack layers read and checked but not modelled (``veg_type`` when the set
    drops it: it still defines the vegetation zones of the budgets and the fallback classes)."""

    predictors: tuple[Predictor, ...]
    also_read: tuple[Predictor, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.predictors)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.predictors if p.categorical)

    @property
    def continuous(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.predictors if not p.categorical)

    @property
    def stack_variables(self) -> tuple[str, ...]:
        """Model predictors read from the stack (model names), in model order."""
        return tuple(p.name for p in self.predictors if p.stored)

    @property
    def bootstrap_drop(self) -> tuple[str, ...]:
        """The factors the bootstrap forests drop: a resample can lose a level (paper, Methods)."""
        return self.categorical

    @property
    def bootstrap_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n not in self.bootstrap_drop)

    @property
    def read(self) -> tuple[Predictor, ...]:
        """Every stack layer read: the stored model predictors, then ``also_read``."""
        return tuple(p for p in self.predictors if p.stored) + self.also_read

    @property
    def by_name(self) -> dict[str, Predictor]:
        return {p.name: p for p in self.predictors + self.also_read}

    def __len__(self) -> int:
        return len(self.predictors)


PREDICTORS: tuple[Predictor, ...] = (
    Predictor("month", "1", "calendar month", "derived", categorical=True),
    Predictor("srad", "W m-2", "downward shortwave radiation (TerraClimate)", "monthly", range=(0.0, 1500.0)),
    Predictor("vpd", "kPa", "vapour pressure deficit (TerraClimate)", "monthly", range=(0.0, 20.0)),
    Predictor("co2", "ppm", "atmospheric CO2 mole fraction (Barrow)", "series", range=(200.0, 1000.0)),
    Predictor("veg_type", "1", "vegetation type (ESA CCI + CAVM classes)", "static", categorical=True),
    Predictor("snow_cover", "%", "snow cover (ERA5-Land)", "monthly", range=(0.0, 100.0)),
    Predictor("soil_temp", "K", "soil temperature 0-7 cm (ERA5-Land)", "monthly", range=(180.0, 340.0)),
    Predictor("soil_moisture", "m3 m-3", "volumetric soil water 0-7 cm (ERA5-Land)", "monthly", range=(0.0, 1.0)),
    Predictor("ndvi", "1", "NDVI (gap-filled monthly mean)", "monthly", range=(-1.0, 1.0)),
    Predictor("lst", "degC", "land surface (1 km) or air (8 km) temperature", "monthly", range=(-90.0, 70.0)),
    Predictor("cti", "1", "compound topographic index", "static"),
    Predictor("nontree_pct", "%", "non-tree vegetation cover", "annual", range=(0.0, 100.0)),
    Predictor("nonveg_pct", "%", "non-vegetated cover", "annual", range=(0.0, 100.0)),
    Predictor("tree_pct", "%", "tree cover", "annual", range=(0.0, 100.0)),
    Predictor("soil_ph", "1", "soil pH 0-5 cm", "static", range=(0.0, 14.0)),
    Predictor(
        "soc_stock", "kg C m-2", "soil organic carbon stock 0-2 m", "static", range=(0.0, 500.0), units_also=("kg m-2",)
    ),
    Predictor("permafrost_prob", "1", "permafrost probability", "static", range=(0.0, 1.0)),
)
# Physical ranges: a value outside one means other units or a raw scale factor (soil temperature
# in degC, VPD in Pa, cover as a 0-1 fraction, NDVI x 10000), which would otherwise train and
# predict on a silently wrong number. Stack units are converted first (abzflux.units).

#: The paper's 17 predictors (the default of every run config).
PAPER = PredictorSet(PREDICTORS)

# Views of the paper's set (what code that knows only the paper's predictors reads).
PREDICTOR_NAMES: tuple[str, ...] = PAPER.names
CATEGORICAL: tuple[str, ...] = PAPER.categorical
STACK_VARIABLES: tuple[str, ...] = PAPER.stack_variables
BY_NAME = PAPER.by_name
BOOTSTRAP_DROP = PAPER.bootstrap_drop
PHYSICAL_RANGE: dict[str, tuple[float, float]] = {p.name: p.range for p in PREDICTORS if p.range is not None}

#: The fields of a ``[predictors.<name>]`` table and the ones a new predictor must give.
DECLARATION_FIELDS = ("source", "units", "long_name", "kind", "categorical", "range")
NEW_REQUIRED = ("units", "long_name", "kind", "categorical")


def _decl_error(file, key: str, problem: str, expected: str | None = None) -> ConfigError:
    return ConfigError(file, problem, column=key, expected=expected)


def _override(base: Predictor | None, name: str, table: dict, file) -> Predictor:
    """A predictor from its ``[predictors.<name>]`` table, over ``base`` (the paper's) if any."""
    key = f"predictors.{name}"
    if not isinstance(table, dict):
        raise _decl_error(
            file, key, f"expected a table, got {table!r}", "[predictors.NAME] with " + ", ".join(DECLARATION_FIELDS)
        )
    bad = [k for k in table if k not in DECLARATION_FIELDS]
    if bad:
        raise _decl_error(file, f"{key}.{bad[0]}", f"unknown key {bad[0]!r}", f"one of {list(DECLARATION_FIELDS)}")
    if base is None:
        missing = [k for k in NEW_REQUIRED if k not in table]
        if not table.get("categorical", False) and "range" not in table:
            missing.append("range")
        if missing:
            raise _decl_error(
                file,
                key,
                f"{name!r} is not one of the paper's predictors and its declaration lacks {missing}",
                f"a new predictor declares {list(NEW_REQUIRED)} (and `range` when continuous); "
                f"the paper's are {list(PAPER.names)}",
            )
    for k in ("source", "units", "long_name", "kind"):
        if k in table and (not isinstance(table[k], str) or not table[k].strip()):
            raise _decl_error(file, f"{key}.{k}", f"expected a non-empty string, got {table[k]!r}")
    if "categorical" in table and not isinstance(table["categorical"], bool):
        raise _decl_error(file, f"{key}.categorical", f"expected true or false, got {table['categorical']!r}")
    kind = table.get("kind", base.kind if base else "")
    if kind not in KINDS:
        raise _decl_error(file, f"{key}.kind", f"invalid kind {kind!r}", f"one of {list(KINDS)}")
    if (kind == "derived") != (name == "month"):
        raise _decl_error(
            file, f"{key}.kind", f"kind {kind!r} for {name!r}", "`derived` for `month` only (derived from time)"
        )
    if name == "month" and (table.get("categorical") is False or "source" in table):
        raise _decl_error(file, key, "`month` is the categorical month of `time`; it has no source")
    categorical_ = table.get("categorical", base.categorical if base else False)
    if "units" in table and not categorical_ and units_mod.parse(table["units"]) is None:
        raise _decl_error(
            file, f"{key}.units", f"units {table['units']!r} cannot be read", "CF / UDUNITS units, e.g. 'W m-2'"
        )
    rng = base.range if base is not None else None
    if "range" in table:
        r = table["range"]
        ok = (
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r)
            and r[0] < r[1]
        )
        if not ok:
            raise _decl_error(
                file, f"{key}.range", f"invalid range {r!r}", "[low, high] in the predictor's units, low < high"
            )
        rng = (float(r[0]), float(r[1]))
    categorical = table.get("categorical", base.categorical if base else False)
    if categorical:
        rng = None
    fields = dict(
        name=name,
        units=table.get("units", base.units if base else ""),
        long_name=table.get("long_name", base.long_name if base else ""),
        kind=kind,
        categorical=categorical,
        source=table.get("source", base.source if base else ""),
        range=rng,
        units_also=base.units_also if base is not None and "units" not in table else (),
    )
    if fields["source"] == name:
        fields["source"] = ""
    return Predictor(**fields)


def from_declaration(use, drop, tables: dict, file) -> PredictorSet:
    """The predictor set of a run config's ``[predictors]`` section: ``use`` (names in model
    order; None: the paper's, then new declared ones), ``drop`` (names removed) and ``tables``
    (name -> ``[predictors.<name>]`` table: overrides of a paper predictor, or a new one).
    Raises :class:`ConfigError` naming the key."""
    known = {p.name: p for p in PREDICTORS}
    declared = {n: _override(known.get(n), n, t, file) for n, t in tables.items()}
    pool = {**known, **declared}
    order = list(PAPER.names) + [n for n in declared if n not in known] if use is None else list(use)
    for key, names in (("predictors.use", order), ("predictors.drop", list(drop or []))):
        unknown = [n for n in names if n not in pool]
        if unknown:
            raise ConfigError(
                file,
                f"unknown predictor(s) {unknown}",
                column=key,
                expected=f"the paper's {list(PAPER.names)} or a name declared in a [predictors.NAME] table",
            )
        if len(set(names)) != len(names):
            raise ConfigError(file, f"repeated names in {names}", column=key, expected="each name once")
    chosen = [pool[n] for n in order if n not in set(drop or [])]
    if not chosen:
        raise ConfigError(file, "no predictor left", column="predictors", expected="at least one predictor")
    sources = [p.stack_name for p in chosen if p.stored]
    dup = sorted({s for s in sources if sources.count(s) > 1})
    if dup:
        raise ConfigError(
            file,
            f"stack variable(s) {dup} feed more than one predictor",
            column="predictors",
            expected="one stack variable per predictor",
        )
    also = () if "veg_type" in {p.name for p in chosen} else (pool["veg_type"],)
    return PredictorSet(tuple(chosen), also)


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


def training_rows(table: pd.DataFrame, flux: str, pset: PredictorSet = PAPER) -> pd.DataFrame:
    """Listwise deletion for one flux: rows where the flux and every predictor of the set are present."""
    cols = list(pset.names) + [flux]
    return table[table[cols].notna().all(axis=1)]


def extract_at_sites(
    table: pd.DataFrame, pred: xr.Dataset, iy: np.ndarray, ix: np.ndarray, names: tuple[str, ...] = STACK_VARIABLES
) -> int:
    """Add every stack predictor's value at each site-month (grid cell ``iy``, ``ix``, the row's
    month) to ``table`` in place (``names``: the stack variables, model names); months outside the
    stack get NaN. Returns their count."""
    times = pd.DatetimeIndex(pred.time.values)
    key = pd.Series(np.arange(len(times)), index=times.year * 100 + times.month)
    ti = (table.year * 100 + table.month).map(key)
    in_period = ti.notna().to_numpy()
    t_idx = xr.DataArray(np.where(in_period, ti.fillna(0), 0).astype(int), dims="row")
    y_idx, x_idx = xr.DataArray(iy, dims="row"), xr.DataArray(ix, dims="row")
    for v in names:
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


def select_sites(table: pd.DataFrame, settings, file) -> pd.DataFrame:
    """The site-months a ``[sites]`` section keeps (``settings``: config.SiteSettings): rows whose
    ``disturbance`` ("none" when not given) and ``method`` are listed, and with all three fluxes
    when ``all_fluxes``. Logs what it dropped; an unchanged table when nothing is set."""
    keep = np.ones(len(table), bool)
    why = []
    if settings.disturbance is not None:
        d = table["disturbance"] if "disturbance" in table else pd.Series("none", index=table.index)
        d = d.fillna("none").astype(str).str.strip().str.lower().replace("", "none")
        ok = d.isin(settings.disturbance).to_numpy()
        why.append(f"disturbance in {settings.disturbance}")
        keep &= ok
    if settings.method is not None:
        m = table["method"] if "method" in table else pd.Series(np.nan, index=table.index)
        keep &= m.isin(settings.method).to_numpy()
        why.append(f"method in {settings.method}")
    if settings.all_fluxes:
        keep &= table[["gpp", "reco", "nee"]].notna().all(axis=1).to_numpy()
        why.append("GPP, Reco and NEE all present")
    if not why:
        return table
    out = table[keep].reset_index(drop=True)
    log.info(
        f"{file}: [sites] keeps {len(out)} of {len(table)} site-months at {out.site_id.nunique()} of "
        f"{table.site_id.nunique()} sites ({'; '.join(why)})"
    )
    return out
