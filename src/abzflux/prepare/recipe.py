"""The ``abzflux prepare`` recipe: a TOML file, parsed and validated key by key.

Paths are relative to the recipe and may be globs (sorted after expansion). Unknown sections or
keys are errors naming the recipe and the key (a typo must not fall back to a default). The
schema is documented in docs/prepare_core.md.
"""

from __future__ import annotations

import glob
import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import predictors as P
from ..errors import InputError
from ..formats import FIRE_VARIABLES, ZONE_VARIABLES
from .layer import FREQUENCIES, RESAMPLING, LayerSpec

#: Output chunk (cells) in y and x when the recipe's ``[output] tile`` is not given.
DEFAULT_TILE = 512
#: Target CRS when ``[grid] crs`` is not given: the paper's North Pole LAEA.
DEFAULT_CRS = "EPSG:6931"
#: Layer groups of a recipe, in the order ``build`` writes them.
GROUPS = ("predictors", "zones", "fire", "references")
#: Zone variables a recipe may give (docs/formats.md §3).
ZONE_NAMES = (*ZONE_VARIABLES, "cell_area")
#: Keys of one layer entry (LayerSpec's fields the recipe sets).
LAYER_KEYS = (
    "product",
    "files",
    "variable",
    "units",
    "scale_factor",
    "add_offset",
    "fill_value",
    "valid_range",
    "crs",
    "frequency",
    "resample",
    "options",
)


@dataclass(frozen=True)
class GridSpec:
    """The target grid: a CRS, cell size and extent (cell edges), or a template file."""

    crs: str = DEFAULT_CRS
    resolution: float | None = None
    extent: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax (edges)
    template: Path | None = None


@dataclass(frozen=True)
class Recipe:
    path: Path
    grid: GridSpec
    years: tuple[int, int]
    tile: int = DEFAULT_TILE
    workers: int | None = None  # threads for the streamed writes (None: dask's default)
    inputs: Mapping[str, Path] = field(default_factory=dict)  # copied into DIR/config.toml
    predictors: Mapping[str, LayerSpec] = field(default_factory=dict)
    zones: Mapping[str, LayerSpec] = field(default_factory=dict)
    fire: Mapping[str, LayerSpec] = field(default_factory=dict)
    references: Mapping[str, LayerSpec] = field(default_factory=dict)
    sha256: str = ""  # of the recipe file's bytes (a changed recipe is refused without --restart)

    def group(self, name: str) -> Mapping[str, LayerSpec]:
        return {"predictors": self.predictors, "zones": self.zones, "fire": self.fire, "references": self.references}[
            name
        ]

    def layers(self) -> list[tuple[str, LayerSpec]]:
        return [(g, spec) for g in GROUPS for spec in self.group(g).values()]


def _err(path: Path, problem: str, key: str | None = None, expected: str | None = None) -> InputError:
    return InputError(path, problem, column=key, expected=expected)


def _check_keys(path: Path, table: Mapping, allowed: tuple[str, ...], where: str) -> None:
    for k in table:
        if k not in allowed:
            raise _err(path, f"unknown key {k!r}", f"{where}.{k}" if where else k, f"one of {sorted(allowed)}")


def _number(path: Path, v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise _err(path, f"expected a finite number, got {v!r}", key)
    return float(v)


def _string(path: Path, v: Any, key: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _err(path, f"expected a non-empty string, got {v!r}", key)
    return v


def parse_years(path: Path, text: Any, key: str = "time.years") -> tuple[int, int]:
    s = str(text)
    try:
        a, b = (int(v) for v in s.split("-")) if "-" in s else (int(s), int(s))
    except ValueError:
        raise _err(path, f"invalid years {text!r}", key, '"FIRST-LAST", e.g. "2001-2020"') from None
    if a > b:
        raise _err(path, f"first year {a} after last year {b}", key)
    if not (1900 <= a and b <= 2100):
        raise _err(path, f"years {a}-{b} out of range", key, "years in 1900..2100")
    return a, b


def resolve_files(path: Path, patterns: Any, key: str) -> tuple[Path, ...]:
    """The recipe's file patterns (relative to the recipe; globs) as sorted existing paths."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise _err(path, f"expected a path or a list of paths, got {patterns!r}", key)
    base = path.resolve().parent
    out: list[Path] = []
    for pat in patterns:
        full = Path(pat) if Path(pat).is_absolute() else base / pat
        if glob.has_magic(str(full)):
            hits = sorted(Path(p) for p in glob.glob(str(full)))
            if not hits:
                raise InputError(
                    full, "file not found: the pattern matches no file", column=key, expected="source files"
                )
            out.extend(hits)
        else:
            if not full.exists():
                raise InputError(full, "file not found", column=key, expected="an existing source file")
            out.append(full)
    return tuple(dict.fromkeys(out))


def _layer(path: Path, group: str, name: str, raw: Any) -> LayerSpec:
    where = f"{group}.{name}"
    if not isinstance(raw, dict):
        raise _err(path, f"expected a table, got {raw!r}", where)
    _check_keys(path, raw, LAYER_KEYS, where)
    if "files" not in raw:
        raise _err(path, "missing key 'files'", where, "files = [...] (paths relative to the recipe; globs allowed)")
    kw: dict[str, Any] = {}
    for k in ("product", "variable", "units", "crs"):
        if k in raw:
            kw[k] = _string(path, raw[k], f"{where}.{k}")
    for k in ("scale_factor", "add_offset", "fill_value"):
        if k in raw:
            kw[k] = _number(path, raw[k], f"{where}.{k}")
    if "valid_range" in raw:
        vr = raw["valid_range"]
        if not isinstance(vr, list) or len(vr) != 2:
            raise _err(path, f"expected [low, high], got {vr!r}", f"{where}.valid_range")
        lo, hi = (_number(path, v, f"{where}.valid_range") for v in vr)
        if lo > hi:
            raise _err(path, f"low {lo} above high {hi}", f"{where}.valid_range")
        kw["valid_range"] = (lo, hi)
    for k, choices in (("frequency", FREQUENCIES), ("resample", RESAMPLING)):
        if k in raw and raw[k] not in choices:
            raise _err(path, f"invalid value {raw[k]!r}", f"{where}.{k}", f"one of {list(choices)}")
        if k in raw:
            kw[k] = raw[k]
    if "crs" in kw:
        import pyproj

        try:
            pyproj.CRS.from_user_input(kw["crs"])
        except pyproj.exceptions.CRSError:
            raise _err(
                path, f"unknown CRS {kw['crs']!r}", f"{where}.crs", 'a CRS pyproj reads, e.g. "EPSG:4326"'
            ) from None
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise _err(path, f"expected a table, got {options!r}", f"{where}.options")
    files = resolve_files(path, raw["files"], f"{where}.files")
    return LayerSpec(name=name, files=files, options=options, recipe=path, **kw)


def _grid(path: Path, raw: Any) -> GridSpec:
    if not isinstance(raw, dict):
        raise _err(path, "missing section [grid]", "grid", "crs, resolution and extent, or template")
    _check_keys(path, raw, ("crs", "resolution", "extent", "template"), "grid")
    crs = _string(path, raw.get("crs", DEFAULT_CRS), "grid.crs")
    if "template" in raw:
        if "resolution" in raw or "extent" in raw:
            raise _err(path, "template and resolution/extent both given", "grid", "one of them")
        (tpl,) = resolve_files(path, raw["template"], "grid.template")[:1]
        return GridSpec(crs=crs, template=tpl)
    for k in ("resolution", "extent"):
        if k not in raw:
            raise _err(path, f"missing key {k!r}", f"grid.{k}", "resolution (cell size) and extent, or template")
    res = _number(path, raw["resolution"], "grid.resolution")
    if res <= 0:
        raise _err(path, f"resolution {res} is not positive", "grid.resolution")
    ext = raw["extent"]
    if not isinstance(ext, list) or len(ext) != 4:
        raise _err(path, f"expected [xmin, ymin, xmax, ymax], got {ext!r}", "grid.extent")
    e = tuple(_number(path, v, "grid.extent") for v in ext)
    if not (e[0] < e[2] and e[1] < e[3]):
        raise _err(path, f"empty extent {list(e)}", "grid.extent", "xmin < xmax and ymin < ymax")
    return GridSpec(crs=crs, resolution=res, extent=(e[0], e[1], e[2], e[3]))


def load_recipe(path) -> Recipe:
    """Read and validate a recipe; every error names the recipe and the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "recipe file not found", expected="a recipe TOML file (docs/prepare_core.md)")
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid TOML: {e}") from None
    _check_keys(path, raw, ("grid", "time", "inputs", "output", *GROUPS), "")
    grid = _grid(path, raw.get("grid"))
    time = raw.get("time", {})
    _check_keys(path, time, ("years",), "time")
    if "years" not in time:
        raise _err(path, "missing key 'years'", "time.years", '"FIRST-LAST", e.g. "2001-2020"')
    years = parse_years(path, time["years"])
    out = raw.get("output", {})
    _check_keys(path, out, ("tile", "workers"), "output")
    tile = out.get("tile", DEFAULT_TILE)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
        raise _err(path, f"{tile!r} is out of range", "output.tile", "an integer >= 8")
    workers = out.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise _err(path, f"{workers!r} is out of range", "output.workers", "an integer >= 1")
    inputs_raw = raw.get("inputs", {})
    _check_keys(path, inputs_raw, ("sites",), "inputs")
    inputs = {k: resolve_files(path, v, f"inputs.{k}")[0] for k, v in inputs_raw.items()}
    groups: dict[str, dict[str, LayerSpec]] = {}
    allowed = {
        "predictors": P.STACK_VARIABLES,
        "zones": ZONE_NAMES,
        "fire": FIRE_VARIABLES,
        "references": None,
    }
    for g in GROUPS:
        table = raw.get(g, {})
        if not isinstance(table, dict):
            raise _err(path, f"expected a table of layers, got {table!r}", g)
        names = allowed[g]
        if names is not None:
            _check_keys(path, table, tuple(names), g)
        groups[g] = {name: _layer(path, g, name, entry) for name, entry in table.items()}
    if not groups["predictors"] and not groups["zones"]:
        raise _err(path, "no [predictors.*] or [zones.*] layers", None, "at least one layer to prepare")
    return Recipe(
        path=path,
        grid=grid,
        years=years,
        tile=tile,
        workers=workers,
        inputs=inputs,
        predictors=groups["predictors"],
        zones=groups["zones"],
        fire=groups["fire"],
        references=groups["references"],
        sha256=hashlib.sha256(data).hexdigest(),
    )
