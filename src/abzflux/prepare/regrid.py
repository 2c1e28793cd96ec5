"""A source layer onto the target grid, one output tile at a time (GDAL warping via rasterio).

For each output tile the regridder

1. finds the source window the tile needs: 21 x 21 points spread over the tile (edges and
   interior) are transformed to the source CRS, their bounding box is widened by
   :data:`MARGIN` source cells and clipped to the source; a geographic window that spans more
   than 180° of longitude is a tile on the antimeridian: it is warped from the source re-centred
   on 180° (longitudes counted from a prime meridian at 180°, the columns reordered), so that no
   target cell straddles the source's edge; a tile around the pole takes every longitude. In a
   projected global source (MODIS sinusoidal), a target cell whose corners lie on both sides of
   the antimeridian has no footprint GDAL can use: it is recomputed from
   :data:`SEAM_SAMPLES`² points spread over the cell, each taking its nearest source cell (their
   mean; the most frequent class for ``mode``);
2. reads only that window (a lazy / dask array is sliced before it is loaded);
3. warps it with :func:`rasterio.warp.reproject` (GDAL's warper) with NaN as no data.

Resampling (``resample`` in the recipe, else :func:`choose_resampling`):

- ``average`` when coarsening a continuous layer (the source cell is smaller than the target
  cell). GDAL's average is a weighted mean of every non-NODATA source cell that the target cell
  overlaps, each weighted by the *fraction of the source cell* inside the target cell
  (GDAL >= 3.1): an area-weighted (conservative) mean in the source grid's coordinates.
  ``tests/test_prepare_core.py`` checks both properties (a 2 x 2 block gives the plain mean; a
  cell covering 1.5 source cells weights the half cell by 1/2). For a lat/lon source the weights
  are in degrees², not m²: within one target cell the area of a source cell varies by
  cos(latitude), under 0.2 % across a 1-km cell and under 1.5 % across an 8-km cell at 80°N.
- ``bilinear`` when refining (the source cell is larger than the target cell): a smooth field
  instead of blocky copies; no data is renormalised over the valid neighbours.
- ``mode`` for categorical layers (vegetation type, biome and region rasters): the most frequent
  source class in the target cell; ``nearest`` may be asked for instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyproj
import rasterio.crs
import rasterio.warp
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from ..errors import InputError
from .grid import Tile, transform

# rasterio warns "Dataset has no geotransform" once when reproject first runs in a worker thread,
# although both transforms are given (never the identity) and the values equal a single-threaded
# run's (checked); the warning is dropped for rasterio.warp only.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")

#: Extra source cells read on every side of a tile's window (bilinear kernel, partial cells).
MARGIN = 2
#: Points per tile side transformed to find its source window.
WINDOW_POINTS = 21
#: Points per side of a target cell that straddles the antimeridian (see the module doc).
SEAM_SAMPLES = 8
GDAL_RESAMPLING = {
    "average": Resampling.average,
    "bilinear": Resampling.bilinear,
    "nearest": Resampling.nearest,
    "mode": Resampling.mode,
}


def source_cell_area(
    src_y, src_x, src_crs: pyproj.CRS, dst_crs: pyproj.CRS, points: list[tuple[float, float]]
) -> float:
    """Median area (in target-CRS units²) of the source cells at the given target-CRS points."""
    to_src = pyproj.Transformer.from_crs(dst_crs, src_crs, always_xy=True)
    to_dst = pyproj.Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    dx = abs(float(src_x[1] - src_x[0]))
    dy = abs(float(src_y[1] - src_y[0]))
    areas = []
    for px, py in points:
        sx, sy = to_src.transform(px, py)
        if not (np.isfinite(sx) and np.isfinite(sy)):
            continue
        cx = np.array([sx - dx / 2, sx + dx / 2, sx + dx / 2, sx - dx / 2])
        cy = np.array([sy - dy / 2, sy - dy / 2, sy + dy / 2, sy + dy / 2])
        if src_crs.is_geographic:
            cy = np.clip(cy, -90.0, 90.0)
        X, Y = to_dst.transform(cx, cy)
        a = 0.5 * abs(np.dot(X, np.roll(Y, 1)) - np.dot(Y, np.roll(X, 1)))
        if np.isfinite(a) and a > 0:
            areas.append(a)
    return float(np.median(areas)) if areas else float("nan")


def choose_resampling(requested: str | None, categorical: bool, src_area: float, dst_area: float) -> str:
    """The recipe's ``resample``, else mode (categorical), average (coarsening) or bilinear."""
    if requested is not None:
        return requested
    if categorical:
        return "mode"
    return "average" if not (src_area > dst_area) else "bilinear"


@dataclass
class Regridder:
    """Warps tiles of one source layer (dims ``(time, y, x)`` or ``(y, x)``, lazy) onto the target
    grid ``dst_y``/``dst_x`` (descending / ascending centres) in ``dst_crs``."""

    src: xr.DataArray
    src_crs: pyproj.CRS
    dst_y: np.ndarray
    dst_x: np.ndarray
    dst_crs: pyproj.CRS
    resampling: str
    what: str = "<layer>"  # for messages: the layer name
    files: str = "<files>"

    def __post_init__(self):
        self.sy = np.asarray(self.src["y"].values, dtype=np.float64)
        self.sx = np.asarray(self.src["x"].values, dtype=np.float64)
        self._to_src = pyproj.Transformer.from_crs(self.dst_crs, self.src_crs, always_xy=True)
        self._to_lon = pyproj.Transformer.from_crs(self.dst_crs, self.dst_crs.geodetic_crs, always_xy=True)
        self._rio_src = rasterio.crs.CRS.from_wkt(self.src_crs.to_wkt())
        self._rio_dst = rasterio.crs.CRS.from_wkt(self.dst_crs.to_wkt())
        self._dst_transform = transform(self.dst_y, self.dst_x)
        self._seams: dict[tuple[int, int, int, int], np.ndarray] = {}  # per tile: every time block reuses it
        # a geographic source re-centred on 180°: for tiles on the antimeridian (see the module doc)
        self._alt: tuple[np.ndarray, np.ndarray, rasterio.crs.CRS] | None = None
        if self.src_crs.is_geographic and self.sx.size > 1:
            shifted = np.mod(self.sx, 360.0) - 180.0
            order = np.argsort(shifted, kind="stable")
            alt_x = shifted[order]
            d = np.diff(alt_x)
            if d.size and np.allclose(d, d[0], rtol=1e-6) and d[0] > 0:
                with warnings.catch_warnings():  # a geographic CRS loses nothing in a PROJ string
                    warnings.simplefilter("ignore", UserWarning)
                    proj4 = self.src_crs.to_proj4().replace("+type=crs", "")
                alt_crs = pyproj.CRS.from_proj4(proj4 + " +pm=180")
                self._alt = (alt_x, order, rasterio.crs.CRS.from_wkt(alt_crs.to_wkt()))

    # ------------------------------------------------------------------ windows
    def _tile_bounds(self, t: Tile) -> tuple[float, float, float, float]:
        a = self._dst_transform
        x0, y0 = a @ (t.x0, t.y0)
        x1, y1 = a @ (t.x1, t.y1)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def window(self, t: Tile) -> tuple[slice, slice | np.ndarray] | None:
        """Source indices (y slice, x slice) the tile needs, or None when it overlaps no source
        cell; on the antimeridian, x is an index array into the source re-centred on 180°."""
        xmin, ymin, xmax, ymax = self._tile_bounds(t)
        u = np.linspace(0.0, 1.0, WINDOW_POINTS)
        gx, gy = np.meshgrid(xmin + u * (xmax - xmin), ymin + u * (ymax - ymin))
        sx, sy = self._to_src.transform(gx.ravel(), gy.ravel())
        ok = np.isfinite(sx) & np.isfinite(sy)
        if not ok.any():
            return None
        sx, sy = sx[ok], sy[ok]
        dx = abs(self.sx[1] - self.sx[0])
        dy = abs(self.sy[1] - self.sy[0])
        lo_x, hi_x = sx.min(), sx.max()
        lo_y, hi_y = sy.min() - MARGIN * dy, sy.max() + MARGIN * dy
        iy = np.flatnonzero((self.sy >= lo_y) & (self.sy <= hi_y))
        if self.src_crs.is_geographic and (hi_x - lo_x > 180.0):
            sxa = np.mod(sx, 360.0) - 180.0
            if self._alt is not None and sxa.max() - sxa.min() <= 180.0:  # the antimeridian
                alt_x, order = self._alt[0], self._alt[1]
                ia = np.flatnonzero((alt_x >= sxa.min() - MARGIN * dx) & (alt_x <= sxa.max() + MARGIN * dx))
                if ia.size == 0 or iy.size == 0:
                    return None
                return slice(int(iy[0]), int(iy[-1]) + 1), order[int(ia[0]) : int(ia[-1]) + 1]
            lo_x, hi_x = -180.0, 180.0  # around the pole
        lo_x, hi_x = lo_x - MARGIN * dx, hi_x + MARGIN * dx
        ix = np.flatnonzero((self.sx >= lo_x) & (self.sx <= hi_x))
        if ix.size == 0 or iy.size == 0:
            return None
        return slice(int(iy[0]), int(iy[-1]) + 1), slice(int(ix[0]), int(ix[-1]) + 1)

    def overlaps(self, tiles) -> bool:
        return any(self.window(t) is not None for t in tiles)

    # ------------------------------------------------------------------ warping
    def read(self, ys: slice, xs: slice | np.ndarray, steps: np.ndarray | None) -> np.ndarray:
        sel: dict = {"y": ys, "x": xs}
        pick = None
        if steps is not None:
            # a slice (not a list of steps): lazy backends then read only the window's bytes
            lo, hi = int(steps[0]), int(steps[-1]) + 1
            sel["time"] = slice(lo, hi)
            if hi - lo != len(steps):
                pick = np.asarray(steps) - lo
        try:
            block = self.src.isel(sel)
            data = block.data
            if hasattr(data, "compute"):
                data = data.compute(scheduler="synchronous")
            out = np.asarray(data, dtype=np.float32)
            return out if pick is None else out[pick]
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                self.files,
                f"the data values cannot be read ({type(exc).__name__}: {str(exc)[:200]})",
                column=self.what,
                expected="a complete, readable file",
            ) from exc

    def tile(self, t: Tile, steps: np.ndarray | None = None) -> np.ndarray:
        """The tile's values: ``(len(steps), ny, nx)`` for a dynamic layer, ``(ny, nx)`` static."""
        nb = 1 if steps is None else len(steps)
        out = np.full((nb,) + t.shape, np.nan, dtype=np.float32)
        w = self.window(t)
        if w is not None and nb:
            arr = self.read(w[0], w[1], steps)
            if arr.ndim == 2:
                arr = arr[None]
            sy = self.sy[w[0]]
            src_crs = self._rio_src
            if isinstance(w[1], slice):
                sx = self.sx[w[1]]
            else:  # the antimeridian: columns in the re-centred source's order
                assert self._alt is not None
                sx = np.mod(self.sx[w[1]], 360.0) - 180.0
                src_crs = self._alt[2]
            if sy.size > 1 and sy[1] > sy[0]:  # north-up for GDAL
                arr = arr[:, ::-1, :]
                sy = sy[::-1]
            if sy.size < 2 or sx.size < 2:  # a one-cell window: pad with the neighbour's spacing
                arr, sy, sx = _pad(arr, sy, sx, self.sy, self.sx)
            arr = np.ascontiguousarray(arr)
            dst_t = self._dst_transform @ Affine.translation(t.x0, t.y0)
            rasterio.warp.reproject(
                source=arr,
                destination=out,
                src_transform=transform(sy, sx),
                src_crs=src_crs,
                src_nodata=np.nan,
                dst_transform=dst_t,
                dst_crs=self._rio_dst,
                dst_nodata=np.nan,
                resampling=GDAL_RESAMPLING[self.resampling],
                num_threads=1,
                # each band's own no-data: a cloud gap in one month must not blank the others
                UNIFIED_SRC_NODATA="NO",
            )
            if not self.src_crs.is_geographic:
                self._fill_seam(t, out, steps)
        return out if steps is not None else out[0]

    def _seam_cells(self, t: Tile) -> np.ndarray:
        """Cells of the tile (mask) whose corners lie on both sides of the antimeridian."""
        key = (t.y0, t.y1, t.x0, t.x1)
        if key not in self._seams:
            self._seams[key] = self._find_seam_cells(t)
        return self._seams[key]

    def _find_seam_cells(self, t: Tile) -> np.ndarray:
        a = self._dst_transform
        cols = np.arange(t.x0, t.x1 + 1, dtype=np.float64)
        rows = np.arange(t.y0, t.y1 + 1, dtype=np.float64)
        cx, cy = np.meshgrid(a.c + cols * a.a, a.f + rows * a.e)
        lon, _ = self._to_lon.transform(cx, cy)
        lon = np.asarray(lon)
        corners = np.stack([lon[:-1, :-1], lon[:-1, 1:], lon[1:, :-1], lon[1:, 1:]])
        return (corners.max(axis=0) - corners.min(axis=0)) > 180.0

    def _fill_seam(self, t: Tile, out: np.ndarray, steps: np.ndarray | None) -> None:
        cells = np.argwhere(self._seam_cells(t))
        if cells.size == 0:
            return
        a = self._dst_transform
        u = (np.arange(SEAM_SAMPLES) + 0.5) / SEAM_SAMPLES
        dx0, dy0 = float(self.sx[1] - self.sx[0]), float(self.sy[1] - self.sy[0])
        # every seam cell's sample points, read from the source in one vectorised selection
        gx = a.c + (t.x0 + cells[:, 1, None, None] + u[None, None, :]) * a.a + 0.0 * u[None, :, None]
        gy = a.f + (t.y0 + cells[:, 0, None, None] + u[None, :, None]) * a.e + 0.0 * u[None, None, :]
        sx, sy = self._to_src.transform(gx.ravel(), gy.ravel())
        ix = np.rint((np.asarray(sx) - self.sx[0]) / dx0)
        iy = np.rint((np.asarray(sy) - self.sy[0]) / dy0)
        ok = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (ix < self.sx.size) & (iy >= 0) & (iy < self.sy.size)
        npts = SEAM_SAMPLES * SEAM_SAMPLES
        flat = np.full((len(out), cells.shape[0] * npts), np.nan, dtype=np.float32)
        if ok.any():
            sel: dict = {
                "y": xr.DataArray(iy[ok].astype(int), dims="p"),
                "x": xr.DataArray(ix[ok].astype(int), dims="p"),
            }
            if steps is not None:
                sel["time"] = np.asarray(steps)
            flat[:, ok] = np.asarray(self.src.isel(sel).values, dtype=np.float32).reshape(len(out), -1)
        vals = flat.reshape(len(out), cells.shape[0], npts)
        for j, (r, c) in enumerate(cells):
            for k in range(len(out)):
                vk = vals[k, j][np.isfinite(vals[k, j])]
                if vk.size == 0:
                    out[k, r, c] = np.nan
                elif self.resampling == "mode":
                    codes, counts = np.unique(vk, return_counts=True)
                    out[k, r, c] = codes[np.argmax(counts)]
                else:
                    out[k, r, c] = vk.mean()


def _pad(arr, sy, sx, full_y, full_x):
    dyv = float(full_y[1] - full_y[0])
    dy = -abs(dyv)
    dx = float(full_x[1] - full_x[0])
    if sy.size < 2:
        sy = np.array([sy[0], sy[0] + dy])
        arr = np.concatenate([arr, np.full_like(arr[:, :1, :], np.nan)], axis=1)
    if sx.size < 2:
        sx = np.array([sx[0], sx[0] + dx])
        arr = np.concatenate([arr, np.full_like(arr[:, :, :1], np.nan)], axis=2)
    return arr, sy, sx
