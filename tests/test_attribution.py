"""Trend attribution: a predictor held at its first-year values (abzflux.attribution)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux.attribution import hold_at_first_year, time_varying


def _stack():
    t = pd.date_range("2010-01-01", periods=36, freq="MS")
    co2 = xr.DataArray(
        np.arange(36, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32) + np.arange(3),
        dims=("time", "y", "x"),
        coords={"time": t},
        name="co2",
    )
    return xr.Dataset({"co2": co2, "cti": (("y", "x"), np.ones((2, 3)))})


def test_hold_at_first_year_repeats_that_years_months_cell_by_cell():
    ds = _stack()
    assert time_varying(ds) == ["co2"]
    h = hold_at_first_year(ds.co2, 2011)  # months 12..23 of the stack
    assert (h.time.values == ds.time.values).all()
    # every year (2010, 2011, 2012) gets 2011's value of the same month: 12 + (month − 1), + x
    want = (12 + np.tile(np.arange(12), 3))[:, None, None] + np.arange(3)
    np.testing.assert_array_equal(h.values, np.broadcast_to(want, (36, 2, 3)))
    np.testing.assert_array_equal(h.sel(time="2011").values, ds.co2.sel(time="2011").values)


def test_hold_needs_a_whole_first_year():
    ds = _stack().isel(time=slice(3, None))  # 2010 starts in April
    with pytest.raises(ValueError, match="2010 does not have all 12 months"):
        hold_at_first_year(ds.co2, 2010)
