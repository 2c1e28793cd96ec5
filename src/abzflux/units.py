"""Unit conversion of gridded layers with pint (CF / UDUNITS strings via cf-xarray's registry).

``linear_conversion("K", "degC")`` gives ``(1.0, -273.15)``: every conversion between the units
this project meets is linear (scale and offset), so a lazy (dask) array is converted with one
multiply-add and never loaded. Two spellings are handled before pint sees them:

- a standalone ``C`` token means *carbon mass* ("g C m-2 month-1", "kg C m-2"), not coulomb: it
  is dropped from both sides (so "kg C m-2" and "kg m-2" are the same units);
- ``month`` as a time unit is refused unless both sides have it: a month has 28-31 days, so
  "g m-2 d-1" to "g m-2 month-1" depends on the time step and is done per step by the product
  readers (``prepare.products``), not by one factor.
"""

from __future__ import annotations

import functools
import re

import xarray as xr

from .errors import InputError

_CARBON = re.compile(r"(?<![\w.])C(?![\w.*^])")
_MONTH = re.compile(r"\bmonths?\b")


@functools.cache
def _registry():
    from cf_xarray.units import units  # a pint UnitRegistry that reads "m3 m-3", "W m-2", "degC"

    return units


def _clean(text: str) -> str:
    s = _CARBON.sub(" ", str(text)).strip()
    return s if s else "1"


def parse(text: str):
    """The pint units of a CF units string, or ``None`` when pint cannot read it."""
    try:
        return _registry().Unit(_clean(text))
    except Exception:  # pint raises several types (UndefinedUnitError, DefinitionSyntaxError, ...)
        return None


@functools.cache
def linear_conversion(from_units: str, to_units: str) -> tuple[float, float] | None:
    """``(scale, offset)`` with ``to = scale * from + offset``, or ``None`` when the units are not
    convertible (other dimensions, unreadable, or a month on one side only)."""
    if bool(_MONTH.search(str(from_units))) != bool(_MONTH.search(str(to_units))):
        return None
    a, b = parse(from_units), parse(to_units)
    if a is None or b is None:
        return None
    q = _registry().Quantity
    try:
        zero = float(q(0.0, a).to(b).magnitude)
        one = float(q(1.0, a).to(b).magnitude)
    except Exception:  # DimensionalityError and offset-unit errors
        return None
    return one - zero, zero


def same_units(from_units: str, to_units: str) -> bool:
    """True when the two strings mean the same units (conversion is the identity)."""
    c = linear_conversion(from_units, to_units)
    return c is not None and abs(c[0] - 1.0) < 1e-12 and abs(c[1]) < 1e-12


def convert(da: xr.DataArray, to_units: str, *, what: str, file="<data>") -> xr.DataArray:
    """``da`` converted (lazily) from its ``units`` attribute to ``to_units``.

    Raises :class:`~abzflux.errors.InputError` naming ``file`` and ``what`` (the variable) when
    ``da`` has no units or they cannot be converted. The result's ``units`` is ``to_units`` and, when
    the values changed, ``units_converted_from`` records the source's units.
    """
    src = da.attrs.get("units")
    if src is None:
        raise InputError(file, "no units attribute", column=what, expected=f"units convertible to {to_units!r}")
    conv = linear_conversion(str(src), to_units)
    if conv is None:
        raise InputError(
            file,
            f"units {src!r} cannot be converted to {to_units!r}; convert the values",
            column=what,
            expected=f"units convertible to {to_units!r}",
        )
    scale, offset = conv
    attrs = dict(da.attrs, units=to_units)
    if scale == 1.0 and offset == 0.0:
        return da.assign_attrs(attrs)
    out = da * scale + offset if offset else da * scale
    attrs["units_converted_from"] = str(src)
    return out.assign_attrs(attrs)
