"""abzflux.units: pint conversions as the predictors and prepare need them (hand-computed)."""

import numpy as np
import pytest
import xarray as xr

from abzflux.errors import InputError
from abzflux.units import convert, linear_conversion, same_units


@pytest.mark.parametrize(
    "a, b, scale, offset",
    [
        ("K", "degC", 1.0, -273.15),
        ("degC", "K", 1.0, 273.15),
        ("1", "%", 100.0, 0.0),
        ("%", "1", 0.01, 0.0),
        ("Pa", "kPa", 0.001, 0.0),
        ("W/m2", "W m-2", 1.0, 0.0),
        ("m**3 m**-3", "m3 m-3", 1.0, 0.0),
        ("g C m-2", "kg C m-2", 0.001, 0.0),
        ("kg m-2", "kg C m-2", 1.0, 0.0),
        ("mol mol-1", "ppm", 1e6, 0.0),
        ("g C m-2 month-1", "g C m-2 month-1", 1.0, 0.0),
    ],
)
def test_linear_conversions(a, b, scale, offset):
    s, o = linear_conversion(a, b)
    assert s == pytest.approx(scale, rel=1e-12)
    assert o == pytest.approx(offset, abs=1e-9)


@pytest.mark.parametrize(
    "a, b",
    [("K", "m3 m-3"), ("W m-2", "kPa"), ("g m-2 d-1", "g m-2 month-1"), ("furlongs per fortnight", "1"), ("", "K")],
)
def test_not_convertible(a, b):
    assert linear_conversion(a, b) is None


def test_carbon_is_not_coulomb():
    assert same_units("g C m-2 month-1", "g m-2 month-1")
    assert not same_units("C", "A s")  # with the marker dropped, "C" alone is dimensionless


def test_convert_is_lazy_and_records_the_source_units():
    dask = pytest.importorskip("dask.array")
    da = xr.DataArray(dask.from_array(np.array([273.15, 300.0]), chunks=1), dims="x", attrs={"units": "K"})
    out = convert(da, "degC", what="lst")
    assert out.chunks is not None  # not computed
    np.testing.assert_allclose(out.values, [0.0, 26.85])
    assert out.attrs["units"] == "degC" and out.attrs["units_converted_from"] == "K"
    same = convert(xr.DataArray([1.0], attrs={"units": "W/m2"}), "W m-2", what="srad")
    assert "units_converted_from" not in same.attrs and same.attrs["units"] == "W m-2"


def test_convert_names_file_variable_and_units():
    with pytest.raises(InputError, match=r"stack\.nc: \[soil_temp\] units 'kPa' cannot be converted to 'K'"):
        convert(xr.DataArray([1.0], attrs={"units": "kPa"}), "K", what="soil_temp", file="stack.nc")
    with pytest.raises(InputError, match=r"\[ndvi\] no units attribute"):
        convert(xr.DataArray([1.0]), "1", what="ndvi")
