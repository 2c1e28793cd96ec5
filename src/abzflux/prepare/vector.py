"""Zones from polygon layers, rasterised onto the target grid with exact cell-coverage fractions.

``rasterise_zone(spec, target)`` reads a GeoPackage / Shapefile (any OGR vector format) with
pyogrio, reprojects the polygons to the target grid's CRS (pyproj, densified first so that
long straight edges in lat/lon stay curved in the projection) and computes, for every target
cell, the exact fraction of its area that each polygon covers (exactextract). From those
fractions it builds the zone variable named by ``spec.name`` (docs/formats.md §3):

- ``biome``: the class covering most of the cell (RESOLVE ``BIOME_NUM`` 6 boreal, 11 tundra);
- ``region``: alaska / canada / europe / siberia from country polygons (the paper's rule: the
  USA is Alaska, Canada is Canada, every other country's land goes to Siberia east of the Urals
  (``options.ural_lon``, default 60°E, judged at the cell centre) and to Europe west of it, so
  Greenland is Europe), or an explicit ``options.map``;
- ``permafrost``: a zonation's classes mapped to values (IPA extent classes) and averaged by
  coverage, or a 0/1 mask;
- ``land_fraction``: the covered share of each cell (land polygons), or, from a finer
  land-cover raster, the share of its cells that are land (:func:`land_fraction_from_raster`).

Why exactextract and not ``rasterio.features.rasterize``: rasterize burns a cell in or out by its
centre (or by any touch with ``all_touched``), so a coastal or border cell is all-or-nothing and
zone areas are off by up to half a cell per boundary cell: at 8 or 100 km that is a large share of
a small zone. exactextract computes the exact polygon-cell intersection area, so a polygon over
half a cell gives 0.5, land fractions sum to the polygons' area, and the majority rule for
classes sees the real shares.

Work is done per tile of the target grid (``TILE`` cells square): only polygons that meet the
tile (an STRtree query) are clipped to it and measured, so memory stays bounded on the 1-km grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from ..domain import BIOMES, REGIONS
from ..errors import InputError
from ..formats import grid_crs
from .layer import LayerSpec

log = logging.getLogger(__name__)

#: Target-grid tile (cells along y and x) measured at a time.
TILE = 1024

#: File suffixes read as polygon layers; everything else given to ``land_fraction`` is a raster.
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite", ".zip")

#: The paper's biome classes in RESOLVE Ecoregions2017 (``BIOME_NUM``).
PAPER_BIOME_CLASSES = {6: "boreal", 11: "tundra"}

#: The paper's Ural boundary: Siberia is the land east of this longitude (degrees east).
URAL_LON = 60.0

#: Countries that the paper's region rule names (ISO / Natural Earth ADM0_A3 codes and names).
NORTH_AMERICA = {
    "USA": "alaska",
    "United States of America": "alaska",
    "United States": "alaska",
    "CAN": "canada",
    "Canada": "canada",
}

#: IPA permafrost extent classes (``EXTENT`` in permaice.shp) -> permafrost fraction of the land:
#: the middle of each class's documented range (continuous 90-100 %, discontinuous 50-90 %,
#: sporadic 10-50 %, isolated 0-10 %).
IPA_EXTENT_VALUES = {
    "C": 0.95,
    "D": 0.70,
    "S": 0.30,
    "I": 0.05,
    "Continuous": 0.95,
    "Discontinuous": 0.70,
    "Sporadic": 0.30,
    "Isolated": 0.05,
}

#: ESA CCI land cover: 210 water bodies, 220 permanent snow and ice (not land for the budgets).
ESA_CCI_NOT_LAND = (210, 220)

#: Densification of polygon edges before reprojection, in degrees, for geographic sources.
DENSIFY_DEG = 0.1


def is_vector(spec: LayerSpec) -> bool:
    """True when the entry's files are polygon layers (read by :func:`rasterise_zone`)."""
    return bool(spec.files) and all(Path(f).suffix.lower() in VECTOR_SUFFIXES for f in spec.files)


# ------------------------------------------------------------------------------------------
# the target grid
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The target grid in north-up form: ``x`` ascending, ``y`` descending (row 0 is the top)."""

    crs: pyproj.CRS
    x: np.ndarray
    y: np.ndarray
    dx: float
    dy: float
    flip_x: bool  # the target's x is descending
    flip_y: bool  # the target's y is ascending

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (
            float(self.x[0] - self.dx / 2),
            float(self.y[-1] - self.dy / 2),
            float(self.x[-1] + self.dx / 2),
            float(self.y[0] + self.dy / 2),
        )

    def to_target(self, a: np.ndarray) -> np.ndarray:
        """A north-up array in the target's own axis order."""
        if self.flip_y:
            a = a[::-1, :]
        if self.flip_x:
            a = a[:, ::-1]
        return np.ascontiguousarray(a)

    def tiles(self, size: int = TILE) -> Iterator[tuple[slice, slice, tuple[float, float, float, float]]]:
        ny, nx = self.y.size, self.x.size
        for r0 in range(0, ny, size):
            for c0 in range(0, nx, size):
                rs, cs = slice(r0, min(r0 + size, ny)), slice(c0, min(c0 + size, nx))
                xmin = float(self.x[cs.start] - self.dx / 2)
                xmax = float(self.x[cs.stop - 1] + self.dx / 2)
                ymax = float(self.y[rs.start] + self.dy / 2)
                ymin = float(self.y[rs.stop - 1] - self.dy / 2)
                yield rs, cs, (xmin, ymin, xmax, ymax)


def target_grid(target: xr.Dataset, file: str = "<target grid>") -> Grid:
    """The :class:`Grid` of a target dataset (1-D ``y``/``x`` cell centres + ``spatial_ref``)."""
    crs = grid_crs(target, file)
    for ax in ("y", "x"):
        if ax not in target.coords or target[ax].ndim != 1 or target[ax].size < 2:
            raise InputError(file, f"no 1-D `{ax}` coordinate with 2 or more cells", column=ax,
                             expected="the target grid's cell centres")  # fmt: skip
    x = np.asarray(target["x"].values, dtype=np.float64)
    y = np.asarray(target["y"].values, dtype=np.float64)
    flip_x, flip_y = bool(x[1] < x[0]), bool(y[1] > y[0])
    x = x[::-1] if flip_x else x
    y = y[::-1] if flip_y else y
    return Grid(crs, x, y, float(x[1] - x[0]), float(y[0] - y[1]), flip_x, flip_y)


# ------------------------------------------------------------------------------------------
# reading polygons
# ------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Polygons in the target CRS, one attribute value each, and the files they came from."""

    geoms: np.ndarray  # shapely geometries
    values: np.ndarray  # object array: the attribute (None without a field)
    files: list[str]


def _layer_name(path: Path, spec: LayerSpec) -> str | None:
    import pyogrio

    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError and GDAL errors
        raise InputError(path, f"cannot be opened as a vector layer ({exc})", column=spec.name,
                         expected="a GeoPackage, Shapefile or other OGR vector file") from exc  # fmt: skip
    wanted = spec.options.get("layer")
    if wanted is not None:
        if str(wanted) not in layers:
            raise InputError(path, f"no layer {wanted!r}", column=spec.name, expected=f"one of {layers}")
        return str(wanted)
    if len(layers) > 1:
        raise InputError(path, f"{len(layers)} layers and no options.layer", column=spec.name,
                         expected=f"options.layer = one of {layers}")  # fmt: skip
    return None


def read_features(spec: LayerSpec, grid: Grid, field: str | None) -> Features:
    """The entry's polygons in the grid's CRS with their ``field`` values; only those whose
    bounding box meets the grid are read. Errors name the file, layer and field."""
    import pyogrio
    import shapely

    geoms, values, files = [], [], []
    tbox = shapely.box(*grid.bounds)
    for path in (Path(f) for f in spec.files):
        if not path.exists():
            raise InputError(
                path, "file not found", column=spec.name, expected="a polygon layer (GeoPackage, Shapefile)"
            )
        layer = _layer_name(path, spec)
        where = f"layer {layer}" if layer else None
        info = pyogrio.read_info(path, layer=layer)
        fields = [str(f) for f in info["fields"]]
        if field is not None and field not in fields:
            raise InputError(path, f"no field {field!r}", column=spec.name, where=where,
                             expected=f"options.field = one of {fields}")  # fmt: skip
        src_crs_text = info.get("crs") or spec.crs
        if not src_crs_text:
            raise InputError(path, "no CRS (no .prj / SRS)", column=spec.name, where=where,
                             expected="a layer with a CRS, or `crs` in the recipe")  # fmt: skip
        try:
            src_crs = pyproj.CRS.from_user_input(src_crs_text)
            to_src = pyproj.Transformer.from_crs(grid.crs, src_crs, always_xy=True)
            to_dst = pyproj.Transformer.from_crs(src_crs, grid.crs, always_xy=True)
            bbox: tuple[float, float, float, float] | None = to_src.transform_bounds(*grid.bounds, densify_pts=51)
        except (pyproj.exceptions.CRSError, pyproj.exceptions.ProjError) as exc:
            raise InputError(path, f"unknown CRS {src_crs_text!r} ({exc})", column=spec.name, where=where,
                             expected="a CRS that PROJ knows (EPSG code or WKT)") from exc  # fmt: skip
        if bbox is None or not np.all(np.isfinite(bbox)) or bbox[0] >= bbox[2]:
            bbox = None  # crossing the antimeridian of a projected source: read everything
        _meta, _fids, wkb, field_data = pyogrio.raw.read(path, layer=layer, columns=[field] if field else [], bbox=bbox)
        g = shapely.from_wkb(wkb)
        vals = field_data[0] if field else np.full(len(g), None, dtype=object)
        keep = ~shapely.is_missing(g) & ~shapely.is_empty(g)
        g, vals = g[keep], np.asarray(vals, dtype=object)[keep]
        if bbox is not None:
            g = shapely.clip_by_rect(g, *bbox)  # far-away parts (Antarctica) never projected
        if src_crs.is_geographic:
            g = shapely.segmentize(g, float(spec.options.get("densify", DENSIFY_DEG)))
        elif spec.options.get("densify"):
            g = shapely.segmentize(g, float(spec.options["densify"]))

        def project(xy: np.ndarray, to_dst: pyproj.Transformer = to_dst) -> np.ndarray:
            px, py = to_dst.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([px, py])

        g = shapely.transform(g, project)
        b = shapely.bounds(g)
        finite = np.isfinite(b).all(axis=1) & ~shapely.is_empty(g)
        if (~finite).any():
            log.warning("%s: %d polygon(s) cannot be projected to the target CRS; left out", path, int((~finite).sum()))
        g, vals = _polygonal(shapely.make_valid(g[finite], method="structure", keep_collapsed=False)), vals[finite]
        hit = shapely.intersects(g, tbox)
        geoms.append(g[hit])
        values.append(vals[hit])
        files.append(str(path))
    all_g = np.concatenate(geoms) if geoms else np.array([], dtype=object)
    all_v = np.concatenate(values) if values else np.array([], dtype=object)
    if all_g.size == 0:
        raise InputError("; ".join(files), "no polygon overlaps the target grid", column=spec.name,
                         expected=f"polygons within the grid's extent {tuple(round(v) for v in grid.bounds)} "
                         f"({grid.crs.name})")  # fmt: skip
    return Features(all_g, all_v, files)


# ------------------------------------------------------------------------------------------
# coverage fractions
# ------------------------------------------------------------------------------------------


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Only the polygonal parts of each geometry (a collection's lines and points dropped)."""
    import shapely

    out = np.asarray(geoms, dtype=object).copy()
    kinds = shapely.get_type_id(out)
    for i in np.flatnonzero(kinds == shapely.GeometryType.GEOMETRYCOLLECTION):
        parts = shapely.get_parts(out[i])
        polys = [q for q in parts if shapely.get_type_id(q) in (3, 6)]  # Polygon, MultiPolygon
        flat = [r for q in polys for r in shapely.get_parts(q)]
        out[i] = shapely.multipolygons(flat) if flat else shapely.Polygon()
    return out


def coverage_tiles(
    features: Features, keys: np.ndarray, nkeys: int, grid: Grid, tile: int = TILE
) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """For each tile of the (north-up) grid: ``(rows, cols, cover)`` with ``cover[k]`` the fraction
    of each cell's area covered by the polygons whose key is ``k`` (``keys[i] < 0``: left out)."""
    import shapely
    from exactextract import exact_extract
    from exactextract.feature import JSONFeatureSource
    from exactextract.raster import NumPyRasterSource

    use = keys >= 0
    geoms, keys = features.geoms[use], keys[use]
    tree = shapely.STRtree(geoms)
    for rs, cs, (xmin, ymin, xmax, ymax) in grid.tiles(tile):
        th, tw = rs.stop - rs.start, cs.stop - cs.start
        cover = np.zeros((nkeys, th * tw), dtype=np.float64)
        idx = tree.query(shapely.box(xmin, ymin, xmax, ymax), predicate="intersects")
        if idx.size:
            pad = 0.5 * max(grid.dx, grid.dy)
            parts = _polygonal(shapely.clip_by_rect(geoms[idx], xmin - pad, ymin - pad, xmax + pad, ymax + pad))
            feats = [
                {"type": "Feature", "properties": {"k": int(keys[i])}, "geometry": shapely.geometry.mapping(p)}
                for i, p in zip(idx, parts, strict=True)
                if not p.is_empty and p.area > 0
            ]
            if feats:
                raster = NumPyRasterSource(np.zeros((th, tw), dtype=np.float32), xmin, ymin, xmax, ymax)
                for f in exact_extract(raster, JSONFeatureSource(feats), ["cell_id", "coverage"], include_cols=["k"]):
                    p = f["properties"]
                    np.add.at(cover[p["k"]], np.asarray(p["cell_id"], dtype=np.int64), p["coverage"])
        yield rs, cs, np.minimum(cover, 1.0).reshape(nkeys, th, tw)


def _cell_lon(grid: Grid, rs: slice, cs: slice) -> np.ndarray:
    xx, yy = np.meshgrid(grid.x[cs], grid.y[rs])
    tr = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, _lat = tr.transform(xx, yy)
    return np.asarray(lon)


def _norm(v: Any) -> Any:
    """Attribute values compared as numbers when numeric (RESOLVE's BIOME_NUM is 6.0), else text."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        s = v.strip()
        try:
            return float(s)
        except ValueError:
            return s
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _keys(values: np.ndarray, lookup: Callable[[Any], int | None], spec: LayerSpec, features: Features,
          field: str, unknown: str, expected: str) -> np.ndarray:  # fmt: skip
    """Each polygon's key, -1 for values to leave out; an unknown value is an error when
    ``unknown == "error"``, left out (logged) when ``"ignore"``."""
    keys = np.full(values.size, -1, dtype=np.int64)
    bad: dict[Any, int] = {}
    for i, v in enumerate(values):
        nv = _norm(v)
        if nv is None or nv == "":
            continue
        k = lookup(nv)
        if k is None:
            bad[v] = bad.get(v, 0) + 1
        else:
            keys[i] = k
    if bad:
        shown = ", ".join(repr(b) for b in list(bad)[:5]) + (" …" if len(bad) > 5 else "")
        if unknown == "error":
            raise InputError("; ".join(features.files), f"unknown class(es) {shown} in field {field!r}",
                             column=spec.name, where=f"{sum(bad.values())} polygon(s) over the target grid",
                             expected=expected)  # fmt: skip
        log.info("%s: polygons with %s in %s left out", spec.name, shown, field)
    if values.size and (keys < 0).all():
        raise InputError("; ".join(features.files), f"no polygon over the target grid has a class in field {field!r}",
                         column=spec.name, expected=expected or "classes listed in the recipe")  # fmt: skip
    return keys


def _dataarray(values: np.ndarray, grid: Grid, target: xr.Dataset, spec: LayerSpec, features_files: Sequence[str],
               **attrs: Any) -> xr.DataArray:  # fmt: skip
    da = xr.DataArray(
        grid.to_target(values).astype(np.float32, copy=False),
        dims=("y", "x"),
        coords={"y": target["y"].values, "x": target["x"].values},
        name=spec.name,
    )
    da.attrs = {
        "units": "1",
        "frequency": "static",
        "source_files": "; ".join(features_files),
        "crs_wkt": grid.crs.to_wkt(),
        **attrs,
    }
    return da


def _codes(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """Class names in code order (1, 2, ...): the preferred order first, then the rest sorted."""
    uniq = list(dict.fromkeys(names))
    return [n for n in preferred if n in uniq] + sorted(n for n in uniq if n not in preferred)


def _majority(cover: np.ndarray) -> np.ndarray:
    """Code (1-based key) covering most of each cell; NaN where nothing covers it."""
    code = cover.argmax(axis=0).astype(np.float32) + 1.0
    code[cover.sum(axis=0) <= 0] = np.nan
    return code


# ------------------------------------------------------------------------------------------
# zones
# ------------------------------------------------------------------------------------------


def _biome(spec: LayerSpec, target: xr.Dataset, grid: Grid) -> xr.DataArray:
    field = str(spec.options.get("field", "BIOME_NUM"))
    classes = {_norm(k): str(v) for k, v in dict(spec.options.get("classes", PAPER_BIOME_CLASSES)).items()}
    names = _codes(list(classes.values()), BIOMES)
    feats = read_features(spec, grid, field)
    keys = _keys(feats.values, lambda v: names.index(classes[v]) if v in classes else None, spec, feats, field,
                 str(spec.options.get("others", "ignore")), f"codes in options.classes {sorted(map(str, classes))}")  # fmt: skip
    out = np.full((grid.y.size, grid.x.size), np.nan, dtype=np.float32)
    for rs, cs, cover in coverage_tiles(feats, keys, len(names), grid):
        out[rs, cs] = _majority(cover)
    return _dataarray(out, grid, target, spec, feats.files, flag_values=np.arange(1, len(names) + 1, dtype=np.int8),
                      flag_meanings=" ".join(names), long_name="biome (class covering most of the cell)")  # fmt: skip


def east_of(lon: np.ndarray, boundary: float) -> np.ndarray:
    """True where a longitude lies within 180° east of ``boundary`` (so Chukotka at -170° is east
    of the Urals at 60°E, Iceland at -20° is west)."""
    return ((np.asarray(lon) - boundary) % 360.0) < 180.0


def _region(spec: LayerSpec, target: xr.Dataset, grid: Grid) -> xr.DataArray:
    field = str(spec.options.get("field", "ADM0_A3"))
    rule = str(spec.options.get("rule", "map" if "map" in spec.options else "paper"))
    feats = read_features(spec, grid, field)
    if rule == "paper":
        ural = float(spec.options.get("ural_lon", URAL_LON))
        names = list(REGIONS)
        na = {_norm(k): names.index(v) for k, v in NORTH_AMERICA.items()}
        lon_rule = len(names)  # everything else: Europe or Siberia by the cell centre's longitude
        keys = _keys(feats.values, lambda v: na.get(v, lon_rule), spec, feats, field, "error", "")
        nkeys = len(names) + 1
    elif rule == "map":
        mapping = {_norm(k): str(v) for k, v in dict(spec.options.get("map", {})).items()}
        if not mapping:
            raise InputError(spec.recipe or "<recipe>", "options.rule = 'map' without options.map", column=spec.name,
                             expected="options.map = {<field value> = <region name>, ...}")  # fmt: skip
        names = _codes(list(mapping.values()), REGIONS)
        keys = _keys(feats.values, lambda v: names.index(mapping[v]) if v in mapping else None, spec, feats, field,
                     str(spec.options.get("others", "error")), f"values listed in options.map ({len(mapping)} given)")  # fmt: skip
        nkeys, lon_rule, ural = len(names), -1, URAL_LON
    else:
        raise InputError(spec.recipe or "<recipe>", f"options.rule = {rule!r}", column=spec.name,
                         expected="'paper' or 'map'")  # fmt: skip
    out = np.full((grid.y.size, grid.x.size), np.nan, dtype=np.float32)
    eu, si = names.index("europe") if "europe" in names else -1, names.index("siberia") if "siberia" in names else -1
    for rs, cs, cover in coverage_tiles(feats, keys, nkeys, grid):
        if lon_rule >= 0 and cover[lon_rule].any():
            east = east_of(_cell_lon(grid, rs, cs), ural)
            cover[si] += np.where(east, cover[lon_rule], 0.0)
            cover[eu] += np.where(east, 0.0, cover[lon_rule])
        out[rs, cs] = _majority(cover[: len(names)])
    return _dataarray(out, grid, target, spec, feats.files, flag_values=np.arange(1, len(names) + 1, dtype=np.int8),
                      flag_meanings=" ".join(names), long_name="region (class covering most of the cell)",
                      region_rule=rule if rule == "map" else f"paper (Ural at {ural:g} E)")  # fmt: skip


def _permafrost(spec: LayerSpec, target: xr.Dataset, grid: Grid) -> xr.DataArray:
    field = str(spec.options.get("field", "EXTENT"))
    table = {_norm(k): float(v) for k, v in dict(spec.options.get("values", IPA_EXTENT_VALUES)).items()}
    ignore = {_norm(v) for v in spec.options.get("ignore", [])}
    for k, v in table.items():
        if not 0.0 <= v <= 1.0:
            raise InputError(spec.recipe or "<recipe>", f"options.values[{k!r}] = {v}", column=spec.name,
                             expected="values in 0-1")  # fmt: skip
    levels = sorted(set(table.values()))
    feats = read_features(spec, grid, field)
    keys = _keys(feats.values, lambda v: -1 if v in ignore else (levels.index(table[v]) if v in table else None),
                 spec, feats, field, str(spec.options.get("others", "error")),
                 f"values in options.values {sorted(map(str, table))} or options.ignore")  # fmt: skip
    mode = str(spec.options.get("mode", "fraction"))
    per = str(spec.options.get("per", "covered"))
    if mode not in ("fraction", "mask") or per not in ("covered", "cell"):
        raise InputError(spec.recipe or "<recipe>", f"options.mode = {mode!r}, options.per = {per!r}",
                         column=spec.name, expected="mode 'fraction' | 'mask', per 'covered' | 'cell'")  # fmt: skip
    threshold = float(spec.options.get("threshold", 0.5))
    vals = np.asarray(levels)[:, None, None]
    out = np.zeros((grid.y.size, grid.x.size), dtype=np.float32)
    for rs, cs, cover in coverage_tiles(feats, keys, len(levels), grid):
        total = cover.sum(axis=0)
        denom = np.maximum(total, 1e-12) if per == "covered" else np.ones_like(total)
        if mode == "fraction":
            res = (cover * vals).sum(axis=0) / denom
        else:
            res = (cover[np.asarray(levels) > 0].sum(axis=0) / denom >= threshold).astype(np.float64)
        res[total <= 0] = 0.0
        out[rs, cs] = np.clip(res, 0.0, 1.0)
    return _dataarray(out, grid, target, spec, feats.files,
                      long_name=f"permafrost ({mode}; {field} -> {dict(sorted(table.items(), key=str))})")  # fmt: skip


def _land_fraction_polygons(spec: LayerSpec, target: xr.Dataset, grid: Grid) -> xr.DataArray:
    field = spec.options.get("field")
    feats = read_features(spec, grid, str(field) if field else None)
    keys = np.zeros(feats.geoms.size, dtype=np.int64)
    if field is not None and "values" in spec.options:  # only polygons whose field is a land value
        land = {_norm(v) for v in spec.options["values"]}
        keys = np.where([_norm(v) in land for v in feats.values], 0, -1).astype(np.int64)
    out = np.zeros((grid.y.size, grid.x.size), dtype=np.float32)
    for rs, cs, cover in coverage_tiles(feats, keys, 1, grid):
        out[rs, cs] = cover[0]
    return _dataarray(out, grid, target, spec, feats.files, long_name="land fraction (polygon coverage)")


#: Most source cells (along y and x) read at a time by :func:`land_fraction_from_raster`.
MAX_SOURCE_WINDOW = 4096


def _raster_tile(grid: Grid, src: Any, src_crs: Any, dst_crs: Any) -> int:
    """Target tile size such that a tile's source window stays within ``MAX_SOURCE_WINDOW``
    cells a side (a coarse target over a fine raster gets small tiles)."""
    from rasterio.warp import transform_bounds

    x0, y0 = float(grid.x[0]), float(grid.y[0])
    try:
        b = transform_bounds(dst_crs, src_crs, x0 - grid.dx / 2, y0 - grid.dy / 2, x0 + grid.dx / 2, y0 + grid.dy / 2)
        per_cell = max(abs(b[2] - b[0]) / abs(src.res[0]), abs(b[3] - b[1]) / abs(src.res[1]), 1.0)
    except Exception:  # a corner cell outside the source CRS's domain: keep the default
        return TILE
    if not np.isfinite(per_cell):
        return TILE
    return int(np.clip(MAX_SOURCE_WINDOW // per_cell, 16, TILE))


def land_fraction_from_raster(spec: LayerSpec, target: xr.Dataset) -> xr.DataArray:
    """Share of each target cell's area that a finer land-cover raster calls land: a source cell
    is land unless its code is in ``options.water_values`` (default ESA CCI 210 water bodies and
    220 permanent snow and ice). The 0/1 land map is averaged onto the target grid (GDAL
    ``average``, area-weighted), one target tile at a time. Source cells without data count as
    not land (``options.nodata = "water"``, the default: the map's edge is the domain's edge), or
    are left out of the share (``"ignore"``)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window
    from rasterio.windows import from_bounds as window_from_bounds

    grid = target_grid(target)
    water = [float(v) for v in spec.options.get("water_values", ESA_CCI_NOT_LAND)]
    nodata_rule = str(spec.options.get("nodata", "water"))
    if nodata_rule not in ("water", "ignore"):
        raise InputError(spec.recipe or "<recipe>", f"options.nodata = {nodata_rule!r}", column=spec.name,
                         expected="'water' or 'ignore'")  # fmt: skip
    if len(spec.files) != 1:
        raise InputError(spec.recipe or "<recipe>", f"{len(spec.files)} files", column=spec.name,
                         expected="one land-cover raster (mosaic tiles into a VRT first)")  # fmt: skip
    path = Path(spec.files[0])
    if not path.exists():
        raise InputError(path, "file not found", column=spec.name, expected="a land-cover raster (GeoTIFF)")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(path, f"cannot be opened as a raster ({exc})", column=spec.name,
                         expected="a land-cover raster (GeoTIFF)") from exc  # fmt: skip
    out = np.zeros((grid.y.size, grid.x.size), dtype=np.float32)
    with src:
        src_crs = src.crs or (rasterio.crs.CRS.from_user_input(spec.crs) if spec.crs else None)
        if src_crs is None:
            raise InputError(path, "no CRS", column=spec.name, expected="a raster with a CRS, or `crs` in the recipe")
        full = Window(0, 0, src.width, src.height)
        dst_crs = rasterio.crs.CRS.from_wkt(grid.crs.to_wkt())
        overlap = False
        for rs, cs, (xmin, ymin, xmax, ymax) in grid.tiles(_raster_tile(grid, src, src_crs, dst_crs)):
            th, tw = rs.stop - rs.start, cs.stop - cs.start
            try:
                b = transform_bounds(dst_crs, src_crs, xmin, ymin, xmax, ymax, densify_pts=21)
                win = window_from_bounds(*b, transform=src.transform).round_offsets().round_lengths()
                win = Window(win.col_off - 1, win.row_off - 1, win.width + 2, win.height + 2).intersection(full)
            except Exception:  # WindowError (no intersection) or a failed transform: nothing here
                continue
            if win.width <= 0 or win.height <= 0:
                continue
            overlap = True
            codes = src.read(1, window=win, masked=True)
            land = (~np.isin(codes.filled(water[0] if water else 0), water)).astype(np.float32)
            if nodata_rule == "water":
                land[np.ma.getmaskarray(codes)] = 0.0
            else:
                land[np.ma.getmaskarray(codes)] = np.nan
            dst = np.zeros((th, tw), dtype=np.float32)
            reproject(
                land,
                dst,
                src_transform=src.window_transform(win),
                src_crs=src_crs,
                src_nodata=np.nan if nodata_rule == "ignore" else None,
                dst_transform=from_bounds(xmin, ymin, xmax, ymax, tw, th),
                dst_crs=dst_crs,
                dst_nodata=np.nan if nodata_rule == "ignore" else None,
                resampling=Resampling.average,
            )
            out[rs, cs] = np.nan_to_num(dst, nan=0.0)
        if not overlap:
            raise InputError(path, "the raster does not overlap the target grid", column=spec.name,
                             expected=f"a raster covering {tuple(round(v) for v in grid.bounds)} ({grid.crs.name})")  # fmt: skip
    np.clip(out, 0.0, 1.0, out=out)
    return _dataarray(out, grid, target, spec, [str(path)],
                      long_name=f"land fraction (share of source cells not in {water})")  # fmt: skip


#: ``options`` keys each zone understands (for the recipe's unknown-key check).
ZONE_OPTIONS: dict[str, frozenset[str]] = {
    "biome": frozenset({"field", "classes", "others", "layer", "densify"}),
    "region": frozenset({"field", "rule", "ural_lon", "map", "others", "layer", "densify"}),
    "permafrost": frozenset({"field", "values", "ignore", "mode", "per", "threshold", "others", "layer", "densify"}),
    "land_fraction": frozenset({"field", "values", "layer", "densify", "water_values", "nodata"}),
}

ZONES: Mapping[str, Callable[[LayerSpec, xr.Dataset, Grid], xr.DataArray]] = {
    "biome": _biome,
    "region": _region,
    "permafrost": _permafrost,
    "land_fraction": _land_fraction_polygons,
}


def rasterise_zone(spec: LayerSpec, target: xr.Dataset) -> xr.DataArray:
    """The zone variable ``spec.name`` (biome, region, permafrost, land_fraction) on the target
    grid from the entry's polygon layer(s); ``land_fraction`` from a raster goes to
    :func:`land_fraction_from_raster`. Returns a ``(y, x)`` float32 layer on the target's ``y``/``x``
    (NaN where no class covers a cell) with ``flag_values``/``flag_meanings`` for classes."""
    if spec.name not in ZONES:
        raise InputError(spec.recipe or "<recipe>", f"no zone {spec.name!r}", column=spec.name,
                         expected=f"one of {sorted(ZONES)}")  # fmt: skip
    if spec.name == "land_fraction" and not is_vector(spec):
        return land_fraction_from_raster(spec, target)
    if not is_vector(spec):
        raise InputError("; ".join(map(str, spec.files)) or "<no files>", "not a polygon layer", column=spec.name,
                         expected=f"files ending in {', '.join(VECTOR_SUFFIXES)} (a raster {spec.name} "
                         "is read and regridded as a generic layer)")  # fmt: skip
    grid = target_grid(target, str(spec.recipe or "<target grid>"))
    return ZONES[spec.name](spec, target, grid)


__all__ = [
    "ZONE_OPTIONS",
    "Grid",
    "coverage_tiles",
    "east_of",
    "is_vector",
    "land_fraction_from_raster",
    "rasterise_zone",
    "read_features",
    "target_grid",
]
