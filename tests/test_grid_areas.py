"""Cell areas from the CRS and its units (issue 19): a grid in km, a CRS that is not equal-area,
cell areas in the wrong units."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import xarray as xr

from abzflux import budgets
from abzflux.errors import InputError
from abzflux.formats import (
    axis_unit_m,
    canonical_order,
    is_equal_area,
    read_zones,
    spacing_area_m2,
    write_crs,
)

LAEA_KM = "+proj=laea +lat_0=90 +lon_0=0 +datum=WGS84 +units=km +no_defs"


@pytest.mark.parametrize(
    "crs,equal",
    [
        ("EPSG:6931", True),  # EASE-Grid 2.0 North (LAEA)
        ("EPSG:6933", True),  # EASE-Grid 2.0 global (cylindrical equal area)
        ("EPSG:3035", True),  # ETRS89 LAEA Europe
        ("ESRI:54009", True),  # Mollweide
        ("ESRI:102001", True),  # Canada Albers equal area
        (LAEA_KM, True),
        ("EPSG:3413", False),  # polar stereographic
        ("EPSG:3857", False),  # web Mercator
        ("EPSG:32633", False),  # UTM
    ],
)
def test_equal_area_projections(crs, equal):
    assert is_equal_area(pyproj.CRS.from_user_input(crs)) is equal


def test_axis_units():
    assert axis_unit_m(pyproj.CRS.from_user_input("EPSG:6931")) == 1.0
    assert axis_unit_m(pyproj.CRS.from_user_input(LAEA_KM)) == 1000.0


def _zones(step, crs, cell_area=None):
    ny, nx = 3, 4
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), np.full((ny, nx), 0.5)),
            "biome": (("y", "x"), np.ones((ny, nx), np.int8), {"flag_values": "1 2", "flag_meanings": "boreal tundra"}),
            "region": (
                ("y", "x"),
                np.full((ny, nx), 2, np.int8),
                {"flag_values": [1, 2, 3, 4], "flag_meanings": "alaska canada europe siberia"},
            ),
            "permafrost": (("y", "x"), np.zeros((ny, nx))),
        },
        coords={"y": 1000 * step - np.arange(ny) * step, "x": np.arange(nx) * step},
    )
    if cell_area is not None:
        ds["cell_area"] = (("y", "x"), np.full((ny, nx), float(cell_area)))
    return write_crs(ds, crs)


def test_km_grid_without_cell_area_has_areas_in_m2():
    """25-km cells written in km: 6.25e8 m2 each (|dx*dy| = 625 "m2" before), the same as in metres."""
    km = read_zones(_zones(25.0, LAEA_KM))
    m = read_zones(_zones(25e3, "EPSG:6931"))
    np.testing.assert_array_equal(km["cell_area"].values, np.full((3, 4), 6.25e8))
    np.testing.assert_array_equal(m["cell_area"].values, km["cell_area"].values)
    assert spacing_area_m2(km) == 6.25e8
    # budgets' own fallback (a zones dataset that lacks cell_area) converts the units too
    raw = _zones(25.0, LAEA_KM)
    assert float(budgets.zone_areas_m2(raw)["domain"]) == pytest.approx(12 * 0.5 * 6.25e8)


def test_stereographic_grid_needs_cell_area():
    with pytest.raises(
        InputError,
        match=r"\[cell_area\] no `cell_area` variable, and the grid CRS .*3413.*not an "
        "equal-area projection",
    ):
        read_zones(_zones(25e3, "EPSG:3413"))
    z = read_zones(_zones(25e3, "EPSG:3413", cell_area=6.0e8))  # a given area: accepted
    assert float(z["cell_area"][0, 0]) == 6.0e8


@pytest.mark.parametrize(
    "area,ok",
    [
        (6.25e8 * 3.99, True),
        (6.25e8 / 3.99, True),
        (6.25e8 * 4.01, False),
        (6.25e8 / 4.01, False),
        (625.0, False),
        (6.25e8 * 1e6, False),
        (0.0, False),
    ],
)
def test_cell_area_consistent_with_the_spacing(area, ok):
    ds = _zones(25e3, "EPSG:6931", cell_area=area)
    if ok:
        assert float(read_zones(ds)["cell_area"][0, 0]) == area
    else:
        with pytest.raises(
            InputError,
            match=r"\[cell_area\] 12 value\(s\) out of range .*within a factor 4 of the "
            r"grid spacing's \|dx \* dy\| = 6\.25e\+08 m2",
        ):
            read_zones(ds)


def test_land_area_beyond_the_earth_is_refused():
    ds = _zones(5e6, "EPSG:6931")  # 12 cells of 5000 km x 5000 km, half land: 1.5e14 m2 ... fine
    assert float((read_zones(ds)["cell_area"] * 0.5).sum()) == pytest.approx(1.5e14)
    big = _zones(1e7, "EPSG:6931")  # 12 x 1e14 m2 x 0.5 = 6e14 m2 > the Earth's surface
    with pytest.raises(InputError, match="more than the Earth's surface"):
        read_zones(big)


def test_canonical_order_is_lazy_and_puts_time_first():
    ds = xr.Dataset(
        {
            "a": (("x", "band", "y", "time"), np.zeros((2, 3, 4, 5))),
            "b": (("x", "y"), np.zeros((2, 4))),
            "c": (("time",), np.zeros(5)),
        }
    )
    out = canonical_order(ds)
    assert out["a"].dims == ("time", "band", "y", "x")
    assert out["b"].dims == ("y", "x") and out["c"].dims == ("time",)
    assert canonical_order(out) is out  # already canonical: the same object
