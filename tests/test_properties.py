"""Property-based tests (hypothesis) of the readers and the numeric cores.

Readers: valid generated site tables parse to the same values whatever the row order;
mutated or arbitrary tables either parse or raise InputError, never another exception; the
zones reader rejects exactly the out-of-range values. Budgets: zone sums do not depend on the
order of the cells, scale with the fluxes and add up over biomes and regions to the domain.
Trends: Theil-Sen and Mann-Kendall are invariant to a constant, scale with the data and flip
sign with time reversal; p lies in [0, 1]; the vectorised trend equals the one-series one;
prewhitened budget trends scale with the data.
Metrics: RMSE >= MAE, bias shifts with the predictions, RMSE² = bias² + variance of errors.

Every test runs a fixed, derandomised set of examples without a database, so CI is
deterministic (ABZFLUX_PROPERTY_EXAMPLES raises the number of examples for a local search).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from abzflux import budgets as B
from abzflux import trends as T
from abzflux.cv import caret_metrics, pooled_metrics
from abzflux.errors import InputError
from abzflux.formats import read_site_table, read_zones, write_crs

# ABZFLUX_PROPERTY_EXAMPLES=500 for a thorough local run; CI uses the small fixed set.
N = int(os.environ.get("ABZFLUX_PROPERTY_EXAMPLES", "25"))
FAST = settings(
    max_examples=N, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TMP = Path(tempfile.mkdtemp(prefix="abzflux-props-"))


def _write(df: pd.DataFrame, name: str = "t.csv") -> Path:
    p = TMP / name
    df.to_csv(p, index=False)
    return p


# ------------------------------------------------------------------------------ site table reader
@st.composite
def site_tables(draw):
    """A valid site-month table: 1-6 sites with fixed locations, unique site-months, monthly
    fluxes in g C m-2 month-1 (summer maxima well above the µmol heuristic's 15)."""
    n_sites = draw(st.integers(1, 6))
    locs = [(draw(st.floats(50, 80)), draw(st.floats(-179, 179))) for _ in range(n_sites)]
    keys = draw(
        st.lists(
            st.tuples(st.integers(0, n_sites - 1), st.integers(2000, 2003), st.integers(1, 12)),
            min_size=1,
            max_size=40,
            unique=True,
        )
    )
    rows = []
    for s, y, m in keys:
        gpp = draw(st.floats(20, 500))
        reco = draw(st.floats(20, 500))
        rows.append(
            {
                "site_id": f"S{s:02d}",
                "lat": locs[s][0],
                "lon": locs[s][1],
                "year": y,
                "month": m,
                "gpp": gpp,
                "reco": reco,
                "nee": reco - gpp,
                "method": draw(st.sampled_from(["EC", "chamber", "eddy covariance", ""])),
            }
        )
    return pd.DataFrame(rows)


@FAST
@given(site_tables(), st.randoms(use_true_random=False))
def test_valid_tables_parse_whatever_the_row_order(df, rnd):
    a = read_site_table(_write(df, "a.csv"))
    order = list(range(len(df)))
    rnd.shuffle(order)
    b = read_site_table(_write(df.iloc[order], "b.csv"))
    assert len(a) == len(df)
    assert sorted(a["row"]) == list(range(1, len(df) + 1))
    cols = ["site_id", "lat", "lon", "year", "month", "gpp", "reco", "nee", "method"]
    pd.testing.assert_frame_equal(a[cols], b[cols])  # the order of rows in the file does not matter
    assert list(a.sort_values(["site_id", "year", "month"]).index) == list(a.index)
    # values round-trip (CSV keeps float64 exactly with pandas' repr)
    merged = a.merge(df, on=["site_id", "year", "month"], suffixes=("", "_in"))
    assert len(merged) == len(df)
    np.testing.assert_allclose(merged.gpp, merged.gpp_in, rtol=1e-12)
    # the row number points at the file's row
    src = df.reset_index(drop=True)
    for r in a.itertuples():
        assert src.loc[r.row - 1, "site_id"] == r.site_id and src.loc[r.row - 1, "month"] == r.month


JUNK = st.one_of(
    st.just(""),
    st.just("nan"),
    st.just("inf"),
    st.just("-inf"),
    st.just("1e400"),
    st.just("13"),
    st.just("-5"),
    st.just("2150"),
    st.just("0.5"),
    st.just("abc"),
    st.just("NULL"),
    st.just("1,5"),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)


@FAST
@given(
    site_tables(),
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(["site_id", "lat", "lon", "year", "month", "gpp", "reco", "nee", "method"]),
            JUNK,
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_mutated_tables_raise_only_input_errors(df, edits, drop_column):
    df = df.astype(object)
    for i, col, v in edits:
        df.iloc[i % len(df), df.columns.get_loc(col)] = v
    if drop_column:
        df = df.drop(columns=[edits[0][1]])
    try:
        out = read_site_table(_write(df))
    except InputError as e:  # the only documented failure; it names the file
        assert "t.csv" in str(e)
        return
    # accepted: then it satisfies the contract
    assert out.month.between(1, 12).all() and out.year.between(1900, 2100).all()
    assert out.lat.between(-90, 90).all() and out.lon.between(-180, 180).all()
    assert not out.duplicated(["site_id", "year", "month"]).any()
    assert (out.gpp.dropna() >= 0).all() and (out.reco.dropna() >= 0).all()
    assert np.isfinite(
        out[["gpp", "reco", "nee"]].to_numpy(dtype=float)[~out[["gpp", "reco", "nee"]].isna().to_numpy()]
    ).all()


@FAST
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_raise_only_input_errors(data):
    p = TMP / "junk.csv"
    p.write_bytes(data)
    try:
        read_site_table(p)
    except InputError as e:
        assert "junk.csv" in str(e)


# ------------------------------------------------------------------------------ zones reader
def _zones(lf: np.ndarray, seed: int = 0) -> xr.Dataset:
    ny, nx = lf.shape
    rng = np.random.default_rng(seed)
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), lf),
            "biome": (
                ("y", "x"),
                rng.integers(1, 3, lf.shape).astype("int8"),
                {"flag_values": np.array([1, 2], "int8"), "flag_meanings": "boreal tundra"},
            ),
            "region": (
                ("y", "x"),
                rng.integers(1, 5, lf.shape).astype("int8"),
                {"flag_values": np.array([1, 2, 3, 4], "int8"), "flag_meanings": "alaska canada europe siberia"},
            ),
            "permafrost": (("y", "x"), rng.random(lf.shape)),
            "cell_area": (("y", "x"), np.full(lf.shape, 1e10)),
        },
        coords={"y": np.arange(ny)[::-1] * 1e5, "x": np.arange(nx) * 1e5},
    )
    return write_crs(ds, "EPSG:6931")


@FAST
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 5), st.integers(2, 5)),
        elements=st.one_of(st.floats(0, 1), st.floats(-2, 3), st.just(np.nan), st.just(np.inf)),
    )
)
def test_zones_reader_rejects_exactly_the_out_of_range_land_fractions(lf):
    bad = ~np.isnan(lf) & ~((lf >= 0) & (lf <= 1))
    try:
        read_zones(_zones(lf))
    except InputError as e:
        assert "land_fraction" in str(e)
        assert bad.any() or np.isnan(lf).all()
    else:
        assert not bad.any() and not np.isnan(lf).all()


# ------------------------------------------------------------------------------ budgets
@st.composite
def budget_worlds(draw):
    ny, nx, nt = draw(st.integers(2, 5)), draw(st.integers(2, 5)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    lf = rng.random((ny, nx))
    lf[rng.random((ny, nx)) < 0.2] = np.nan  # cells outside the domain
    zones = _zones(lf, seed)
    zones["cell_area"] = (("y", "x"), rng.uniform(0.5e10, 1.5e10, (ny, nx)))
    flux = rng.normal(0, 100, (nt, ny, nx))
    flux[rng.random(flux.shape) < 0.1] = np.nan  # cells without a value that month
    t = pd.date_range("2001-01-01", periods=nt, freq="MS")
    fluxes = xr.Dataset({"nee": (("time", "y", "x"), flux)}, coords={"time": t, "y": zones.y, "x": zones.x})
    return fluxes, zones, rng


def _tg(m: pd.DataFrame) -> pd.Series:
    return m.set_index(["zone", "time"]).tg_c.sort_index()


@settings(FAST, max_examples=max(N // 2, 1))
@given(budget_worlds(), st.floats(-5, 5).filter(lambda c: abs(c) > 1e-3))
def test_budgets_permutation_scaling_and_additivity(world, c):
    fluxes, zones, rng = world
    base = B.monthly_budgets(fluxes, zones)
    # permuting the cells (the same way in the fluxes and the zones) leaves every budget unchanged
    ny, nx = zones.sizes["y"], zones.sizes["x"]
    perm = rng.permutation(ny * nx)

    def shuffle(da):
        v = da.values.reshape(*da.shape[:-2], ny * nx)[..., perm].reshape(da.shape)
        return da.copy(data=v)

    z2 = zones.copy()
    for v in ("land_fraction", "biome", "region", "permafrost", "cell_area"):
        z2[v] = shuffle(zones[v])
    f2 = fluxes.copy()
    f2["nee"] = shuffle(fluxes["nee"])
    np.testing.assert_allclose(_tg(B.monthly_budgets(f2, z2)), _tg(base), rtol=1e-9, atol=1e-12)
    # scaling the fluxes by c scales the budgets by c (and leaves the coverage alone)
    scaled = B.monthly_budgets(fluxes * c, zones)
    np.testing.assert_allclose(_tg(scaled), c * _tg(base), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(scaled.coverage, base.coverage)
    # biomes and regions partition the domain; biome x region partitions each biome
    tg = _tg(base)
    dom = tg.loc["domain"]
    for parts in (
        ["boreal", "tundra"],
        ["alaska", "canada", "europe", "siberia"],
        ["north_america", "eurasia"],
        [f"{b}/{r}" for b in ("boreal", "tundra") for r in ("alaska", "canada", "europe", "siberia")],
    ):
        total = sum(tg.loc[p] for p in parts)
        np.testing.assert_allclose(total, dom, rtol=1e-9, atol=1e-9)
    assert base.coverage.between(0, 1 + 1e-12).all()
    # the domain budget is the plain weighted sum (Tg = g m-2 x m2 x land fraction / 1e12)
    w = (zones.land_fraction.fillna(0) * zones.cell_area).values
    direct = np.nansum(fluxes.nee.values * w, axis=(1, 2)) / 1e12
    np.testing.assert_allclose(dom.to_numpy(), direct, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ trends
series = arrays(np.float64, st.integers(4, 25), elements=st.integers(-1000, 1000).map(lambda v: v / 8))


@FAST
@given(series, st.integers(-400, 400).map(lambda v: v / 4), st.sampled_from([-3.0, -0.5, 0.25, 2.0, 8.0]))
def test_sen_and_kendall_invariances(y, c, a):
    s = T.sen_slope(y).slope
    assert T.sen_slope(y + c).slope == pytest.approx(s, abs=1e-9)
    assert T.sen_slope(a * y).slope == pytest.approx(a * s, abs=1e-9)
    assert T.sen_slope(y[::-1]).slope == pytest.approx(-s, abs=1e-9)
    k = T.kendall_test(y)
    assert 0.0 <= k.p <= 1.0
    assert -1.0 <= k.tau <= 1.0
    if np.ptp(y) == 0:  # Kendall's convention for a constant series
        assert (k.tau, k.p, k.S) == (1.0, 1.0, 0.0)
        return
    r = T.kendall_test(y[::-1])
    assert r.tau == pytest.approx(-k.tau, abs=1e-12) and r.p == pytest.approx(k.p, abs=1e-12)
    ka = T.kendall_test(a * y + c)
    assert ka.tau == pytest.approx(np.sign(a) * k.tau, abs=1e-12) and ka.p == pytest.approx(k.p, abs=1e-12)


@FAST
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(5, 14)),
        elements=st.integers(-1000, 1000).map(lambda v: v / 8),
    ),
    st.sampled_from(["zhang", "yuepilon"]),
)
def test_vectorised_trends_equal_the_one_series_trend(Y, method):
    Y[0, 3] = np.nan  # a gap
    got = T.zyp_rows(Y, method=method)
    for i, yv in enumerate(Y):
        want = T.zyp_trend(yv, method=method)
        np.testing.assert_allclose(got[i], [want[k] for k in T.ZYP_FIELDS], rtol=1e-9, atol=1e-9, equal_nan=True)
        p = want["sig"]
        assert np.isnan(p) or 0.0 <= p <= 1.0


@FAST
@given(series.filter(lambda v: v.size >= 6), st.sampled_from([0.25, 0.5, 2.0, 8.0]))
def test_budget_trend_scales_with_the_data(v, a):
    """Zhang-prewhitened budget trends scale with the data (powers of two: exact in floating
    point, so even a non-converging prewhitening iteration takes the same path). They are not
    invariant to adding a constant, by zyp's rules: a series needs 3 non-zero values, and the
    iteration stops after 500 runs without converging; Theil-Sen itself is (tested above)."""
    years = np.arange(2001, 2001 + v.size)
    r = T.trend_series(v, years, method="zhang")
    assert np.isnan(r["p"]) or 0.0 <= r["p"] <= 1.0
    rs = T.trend_series(a * v, years, method="zhang")
    np.testing.assert_allclose(rs["slope"], a * r["slope"], rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose([rs["p"], rs["tau"]], [r["p"], r["tau"]], rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(rs["lbound"], a * r["lbound"], rtol=1e-12, atol=1e-12, equal_nan=True)


# ------------------------------------------------------------------------------ metrics
pairs = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, n, elements=st.floats(-500, 500)), arrays(np.float64, n, elements=st.floats(-500, 500))
    )
)


@FAST
@given(pairs, st.floats(-100, 100), st.randoms(use_true_random=False))
def test_pooled_metrics_identities(op, c, rnd):
    o, p = op
    m = pooled_metrics(o, p)
    assert m["RMSE"] >= m["MAE"] - 1e-9 and m["MAE"] >= abs(m["bias"]) - 1e-9
    e = p - o
    assert m["RMSE"] ** 2 == pytest.approx(m["bias"] ** 2 + e.var(), rel=1e-9, abs=1e-9)
    assert np.isnan(m["R2"]) or -1e-12 <= m["R2"] <= 1 + 1e-12
    shifted = pooled_metrics(o, p + c)
    assert shifted["bias"] == pytest.approx(m["bias"] + c, abs=1e-9)
    both = pooled_metrics(o + c, p + c)  # a common offset changes nothing
    for k in ("RMSE", "MAE", "bias"):
        assert both[k] == pytest.approx(m[k], abs=1e-7)
    idx = list(range(len(o)))
    rnd.shuffle(idx)
    perm = pooled_metrics(o[idx], p[idx])  # the order of the pairs does not matter
    for k in ("RMSE", "MAE", "bias"):
        assert perm[k] == pytest.approx(m[k], rel=1e-12, abs=1e-12)


@FAST
@given(pairs, st.integers(1, 4))
def test_caret_metrics_site_means(op, n_sites):
    o, p = op
    sites = np.arange(len(o)) % n_sites
    m = caret_metrics(o, p, sites)
    assert m["n_sites"] == min(n_sites, len(o))
    assert m["RMSE"] >= m["MAE"] - 1e-9  # each site's RMSE >= its MAE
    rmse = [np.sqrt(np.mean((p[sites == s] - o[sites == s]) ** 2)) for s in np.unique(sites)]
    assert m["RMSE"] == pytest.approx(np.mean(rmse), rel=1e-9, abs=1e-9)
