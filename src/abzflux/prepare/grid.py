"""The target grid of ``abzflux prepare``: an empty dataset with ``y``/``x`` cell centres and
``spatial_ref``, plus the affine transform and output tiles the regridder and writer use.

``y`` is descending (north-up, as GDAL and the twin write it), ``x`` ascending. The grid is
either ``crs`` + ``resolution`` + ``extent`` (cell edges) or a template file's ``y``/``x``/CRS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr
from affine import Affine

from .. import formats
from ..errors import InputError
from .recipe import GridSpec

#: Relative tolerance for an extent that is a whole number of cells.
EXTENT_TOL = 1e-6


def target_grid(spec: GridSpec, recipe: Path | str = "<recipe>") -> xr.Dataset:
    """An empty ``xr.Dataset`` on the target grid (coords ``y``, ``x``, ``spatial_ref``)."""
    if spec.template is not None:
        ds = formats.open_dataset(spec.template)
        for ax in ("y", "x"):
            if ax not in ds.coords:
                raise InputError(
                    spec.template, f"no `{ax}` coordinate", column=ax, expected="a file on the target grid"
                )
        crs = formats.grid_crs(ds, spec.template)
        y = np.asarray(ds["y"].values, dtype=np.float64)
        x = np.asarray(ds["x"].values, dtype=np.float64)
        ds.close()
        for ax, c in (("y", y), ("x", x)):
            d = np.diff(c)
            if c.size < 2 or not np.allclose(d, d[0], rtol=EXTENT_TOL, atol=0):
                raise InputError(spec.template, f"`{ax}` is not regularly spaced", column=ax, expected="a regular grid")
        if y[1] > y[0]:
            y = y[::-1]
        if x[1] < x[0]:
            x = x[::-1]
        return formats.write_crs(xr.Dataset(coords={"y": y, "x": x}), crs)
    assert spec.resolution is not None and spec.extent is not None  # recipe.py checked
    try:
        crs = pyproj.CRS.from_user_input(spec.crs)
    except pyproj.exceptions.CRSError:
        raise InputError(recipe, f"unknown CRS {spec.crs!r}", column="grid.crs", expected='e.g. "EPSG:6931"') from None
    if not crs.is_projected:
        raise InputError(recipe, f"CRS {spec.crs!r} is geographic", column="grid.crs", expected="a projected CRS")
    xmin, ymin, xmax, ymax = spec.extent
    r = spec.resolution
    n = []
    for lo, hi, key in ((xmin, xmax, "x"), (ymin, ymax, "y")):
        k = (hi - lo) / r
        if abs(k - round(k)) > EXTENT_TOL * max(1.0, k) or round(k) < 2:
            raise InputError(
                recipe,
                f"the {key} extent {hi - lo:g} is not a whole number (>= 2) of {r:g} cells",
                column="grid.extent",
                expected="extent edges a multiple of the resolution apart",
            )
        n.append(int(round(k)))
    xs = xmin + r * (np.arange(n[0]) + 0.5)
    ys = ymax - r * (np.arange(n[1]) + 0.5)
    return formats.write_crs(xr.Dataset(coords={"y": ys, "x": xs}), crs)


def grid_crs(target: xr.Dataset) -> pyproj.CRS:
    return formats.grid_crs(target, "<target grid>")


def transform(y: np.ndarray, x: np.ndarray) -> Affine:
    """The GDAL affine transform of a grid of regular cell centres ``y`` (either order), ``x``
    (ascending)."""
    dx = float(x[1] - x[0])
    dy = float(y[1] - y[0])
    return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)


@dataclass(frozen=True)
class Tile:
    """One output block: rows ``y0:y1`` and columns ``x0:x1`` of the target grid."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def tiles(ny: int, nx: int, size: int) -> Iterator[Tile]:
    for y0 in range(0, ny, size):
        for x0 in range(0, nx, size):
            yield Tile(y0, min(ny, y0 + size), x0, min(nx, x0 + size))
