"""The two types every part of ``prepare`` shares: a recipe entry and a source layer.

A **source layer** is what every reader returns (generic rasters, named products) and what the
regridder and the writer take. It is an ``xarray.DataArray`` with

- dims ``("time", "y", "x")``, ``("y", "x")`` or ``("time",)`` (a series broadcast over the grid,
  e.g. the Barrow CO2 record);
- ``y`` and ``x``: 1-D, regularly spaced cell centres in the units of the layer's CRS. A
  geographic layer has ``x`` = longitude in -180..180, ascending (0-360 products are rolled),
  and ``y`` = latitude in either order;
- values in physical units (CF packing and the product's own scale factors already applied),
  floating point, NaN where there is no data; may be dask-backed (lazy);
- ``time`` (when present): ``datetime64`` stamps, the first day of the period (first of the month
  for monthly layers, 1 January for annual ones);
- attributes ``crs_wkt`` (the source CRS as WKT; absent for a ``("time",)`` series),
  ``units`` (a CF / UDUNITS string), ``frequency`` (one of :data:`FREQUENCIES`) and
  ``source_files`` (the files read, ``"; "``-joined, for messages and provenance); a categorical
  layer also carries ``flag_values`` / ``flag_meanings``.

:func:`check_layer` asserts this contract; every reader's tests call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: Time steps a source layer may have. ``daily`` and ``8day`` layers are aggregated to months.
FREQUENCIES = ("monthly", "annual", "static", "daily", "8day")

#: Resampling rules onto the target grid (docs/prepare.md): ``average`` is area-weighted
#: (conservative) and the default for continuous layers when coarsening; ``mode`` for categorical.
RESAMPLING = ("average", "bilinear", "nearest", "mode")


@dataclass(frozen=True)
class LayerSpec:
    """One recipe entry: where one contract layer comes from and the product's conventions."""

    name: str  # contract name: a predictor, zone, fire or reference variable (docs/formats.md)
    files: tuple[Path, ...]  # resolved and sorted (the recipe's globs expanded, relative to it)
    product: str = "generic"  # the reader (``prepare.products.READERS``; "generic" = sources)
    variable: str | None = None  # variable / HDF5 dataset path ("group/sub/name") / band name
    units: str | None = None  # the source's units when its files do not state them
    scale_factor: float = 1.0  # product scale applied after CF decoding (workflow.md §5)
    add_offset: float = 0.0
    fill_value: float | None = None  # raw value meaning "no data" when the files do not say
    valid_range: tuple[float, float] | None = None  # physical values outside are no data
    crs: str | None = None  # the source's CRS when its files carry none (e.g. "EPSG:4326")
    frequency: str | None = None  # one of FREQUENCIES; detected from the time axis when None
    resample: str | None = None  # one of RESAMPLING; default by kind and by coarsen / refine
    options: Mapping[str, Any] = field(default_factory=dict)  # product-specific keys
    recipe: Path | None = None  # the recipe file, for messages

    def where(self) -> str:
        """How messages name this entry: recipe, layer and files."""
        files = ", ".join(str(f) for f in self.files[:3]) + (" …" if len(self.files) > 3 else "")
        return f"{self.recipe or '<recipe>'} [{self.name}] ({files})"


def check_layer(da: xr.DataArray) -> None:
    """Raise ``AssertionError`` naming what breaks the source-layer contract (for tests)."""
    assert isinstance(da, xr.DataArray), type(da)
    assert da.dims in (("time", "y", "x"), ("y", "x"), ("time",)), da.dims
    assert da.attrs.get("frequency") in FREQUENCIES, da.attrs.get("frequency")
    assert isinstance(da.attrs.get("units"), str), "units"
    assert isinstance(da.attrs.get("source_files"), str), "source_files"
    assert np.issubdtype(da.dtype, np.floating), da.dtype
    if "time" in da.dims:
        assert np.issubdtype(da["time"].dtype, np.datetime64), da["time"].dtype
        assert bool((np.diff(da["time"].values.astype("datetime64[D]").astype(np.int64)) > 0).all()), "time order"
    if "x" in da.dims:
        assert isinstance(da.attrs.get("crs_wkt"), str), "crs_wkt"
        for ax in ("y", "x"):
            c = np.asarray(da[ax].values, dtype=np.float64)
            assert c.ndim == 1 and c.size >= 2, ax
            d = np.diff(c)
            assert np.allclose(d, d[0], rtol=1e-6, atol=0), f"{ax} not regular"
        import pyproj

        if pyproj.CRS.from_wkt(da.attrs["crs_wkt"]).is_geographic:
            x = da["x"].values
            assert x.min() >= -180 and x.max() <= 180 and bool((np.diff(x) > 0).all()), "longitudes"
