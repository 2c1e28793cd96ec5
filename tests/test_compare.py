"""Comparison with reference products and extrapolation diagnostics (abzflux.compare)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import CRS

from abzflux import compare as cmp
from abzflux.config import load_config
from abzflux.errors import ConfigError, InputError
from abzflux.formats import write_crs

LAEA = CRS.from_epsg(6931)


def _grid(ny=6, nx=7, res=100e3, x0=-300e3, y0=300e3):
    return x0 + res * np.arange(nx), y0 - res * np.arange(ny)


def _zones(ny=6, nx=7):
    x, y = _grid(ny, nx)
    rng = np.random.default_rng(1)
    lf = rng.uniform(0.2, 1.0, (ny, nx))
    lf[0, 0] = 0.0
    biome = np.where(np.arange(nx)[None, :] < 3, 1, 2) * np.ones((ny, 1))
    region = np.where(np.arange(ny)[:, None] < 3, 1, 2) * np.ones((1, nx))
    ds = xr.Dataset(
        {
            "land_fraction": (("y", "x"), lf),
            "biome": (("y", "x"), biome),
            "region": (("y", "x"), region),
            "permafrost": (("y", "x"), (lf > 0.6).astype(float)),
            "cell_area": (("y", "x"), np.full((ny, nx), 1e10)),
        },
        coords={"y": y, "x": x},
    )
    return write_crs(ds, LAEA)


def _monthly(years, ny=6, nx=7, seed=2):
    rng = np.random.default_rng(seed)
    t = pd.date_range(f"{years[0]}-01-01", f"{years[-1]}-12-01", freq="MS")
    x, y = _grid(ny, nx)
    season = -30 * np.sin(np.pi * (t.month.to_numpy() - 1) / 11)[:, None, None]
    v = season + rng.normal(20, 30, (t.size, ny, nx)) - 0.8 * (t.year.to_numpy() - years[0])[:, None, None]
    return xr.Dataset({"nee": (("time", "y", "x"), v)}, coords={"time": t, "y": y, "x": x})


# --------------------------------------------------------------------------- products
def test_product_equal_to_our_field_gives_r_1_and_ratio_1(tmp_path):
    zones = _zones()
    up = _monthly(range(2003, 2009))
    ref = cmp.Reference(
        tmp_path / "same.nc",
        "same",
        up.assign_attrs(product="same"),
        latlon=False,
        fire_included=False,
        subtract_fire=False,
        years=list(range(2003, 2009)),
    )
    metrics, budgets, maps = cmp.compare_products([ref], up, zones, None, LAEA, threshold=0.0, n_sub=4)
    m = metrics.iloc[0]
    assert m["product"] == "same" and (m.first_year, m.last_year) == (2003, 2008)
    assert m.map_r == pytest.approx(1.0, abs=1e-12) and m.map_p < 1e-6
    assert m.trend_r == pytest.approx(1.0, abs=1e-12)
    assert m.source_share_abzflux == pytest.approx(m.source_share_product)
    assert m.n_cells == 6 * 7  # every cell has every year in both (the land-free cell weighs nothing)
    assert 0 < m.source_share_abzflux < 1
    b = budgets
    assert set(b.zone) >= {"domain", "boreal", "tundra", "permafrost"}
    dom = b[b.zone == "domain"].iloc[0]
    assert dom.ratio == pytest.approx(1.0, rel=1e-12)
    # The budget is the hand-computed mean annual sum x land area.
    lf = zones.land_fraction.values * 1e10
    ann = up.nee.groupby("time.year").sum().values
    assert dom.abzflux_tg_c == pytest.approx((ann * lf).sum((1, 2)).mean() / 1e12, rel=1e-12)
    assert list(maps["product"].values) == ["same"]
    np.testing.assert_allclose(maps.mean_annual.isel(product=0).values, ann.mean(0), rtol=1e-6)


def test_product_stats_scaled_product():
    rng = np.random.default_rng(3)
    ours = rng.normal(-20, 30, (5, 40))
    w = np.abs(rng.normal(1, 0.2, (2, 40)))
    acc = cmp.ProductStats(["domain", "other"], 5, 0.0)
    acc.add(ours, 2.0 * ours, w)
    m, b = acc.result()
    assert m["map_r"] == pytest.approx(1.0)
    np.testing.assert_allclose(b.ratio, 2.0)


# --------------------------------------------------------------------------- regridding
def test_ellipsoid_cell_areas_add_up_to_the_earth():
    edges = np.arange(-90, 90.1, 2.0)
    total = cmp.latlon_cell_areas(edges, 2.0).sum() * 180
    assert total == pytest.approx(5.10065622e14, rel=1e-8)  # WGS84 surface area


def test_regridding_conserves_the_area_weighted_mean():
    lat = np.arange(41.0, 90, 2.0)
    lon = np.arange(-179.0, 180, 2.0)
    grid = cmp.LatLonGrid(lat, lon)
    x = y = np.arange(-2450e3, 2451e3, 100e3)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    field = 50 * np.cos(np.radians(3 * lo)) + (90 - la) ** 1.5 + 7 * np.sin(np.radians(la * 5))
    W, factor = cmp.latlon_weights(grid, x, y, LAEA, n_sub=10)
    inside = cmp._inside_grid(grid, x, y, LAEA)
    assert inside.sum() > 500
    src = np.where(inside, field.ravel(), np.nan)  # a region fully covered by the analysis grid
    out, covered = cmp.regrid(W, src[:, None])
    out, covered = out[:, 0], covered[:, 0]
    areas = grid.areas()
    truth = np.nansum(src * areas) / areas[inside].sum()
    ok = np.isfinite(out)
    assert (covered[ok] * out[ok]).sum() / covered[ok].sum() == pytest.approx(truth, rel=1e-12)
    # The sampled overlaps were already close to the exact areas (10 x 10 sub-points): 1.2 %
    # area-weighted (docs/compare.md); the worst are the small cells at the pole.
    a = areas[inside]
    assert (np.abs(factor[inside] - 1) * a).sum() / a.sum() < 0.02
    # Cells wholly covered: their value is the overlap-weighted mean of the source cells, so a
    # constant field stays constant and the covered area equals the cell area.
    full = covered > 0.999999 * 1e10
    assert full.sum() > 1000
    const, _ = cmp.regrid(W, np.where(inside, 3.0, np.nan)[:, None])
    np.testing.assert_allclose(const[full, 0], 3.0)


# --------------------------------------------------------------------------- MESS
def test_mess_hand_computed():
    ref = np.column_stack([np.arange(10.0), np.arange(10.0, 101, 10)])
    pts = np.array([[-1, 50], [4, 30], [7, 100], [5, 145], [0.5, 55], [np.nan, np.nan]])
    m, mod = cmp.mess(pts, ref)
    np.testing.assert_allclose(m[:5], [-100 / 9, 60, 0, -50, 20])
    assert list(mod) == [0, 1, 1, 1, 0, -1]
    assert np.isnan(m[5])
    assert m[0] < 0 and m[3] < 0 and (m[[1, 4]] > 0).all()  # outside negative, inside positive
    # A variable without spread in the reference set has no scale: it is left out.
    m2, _ = cmp.mess(np.column_stack([pts[:5], np.full(5, 7.0)]), np.column_stack([ref, np.full(10, 3.0)]))
    np.testing.assert_allclose(m2, m[:5])


def test_mess_periods_and_classes():
    assert cmp.mess_periods(1990, 2020, 5) == [
        (1990, 1994),
        (1995, 1999),
        (2000, 2004),
        (2005, 2009),
        (2010, 2014),
        (2015, 2020),
    ]
    assert cmp.mess_periods(2001, 2003, 5) == [(2001, 2003)]
    c = cmp.mess_class(np.array([-90, -80, -20.0001, -20, -0.1, 0, 4.99, 5, 39.9, 40, 100]))
    assert list(c) == [-3, -2, -2, -1, -1, 1, 1, 2, 2, 3, 3]


# --------------------------------------------------------------------------- AOA
def test_aoa_hand_checked():
    X = np.array([[0.0], [1.0], [3.0], [6.0]])
    aoa = cmp.AOA(X, np.array(["a", "a", "b", "b"]), np.array([2.0]))
    # Mean pairwise |dx| = (1 + 3 + 6 + 2 + 5 + 3) / 6; other-site nearest: 3, 2, 2, 5.
    np.testing.assert_allclose(aoa.train_di, np.array([3, 2, 2, 5]) / (20 / 6))
    np.testing.assert_allclose(aoa.di(np.array([[2.0], [10.0], [np.nan]]))[:2], [1 / (20 / 6), 4 / (20 / 6)])
    assert np.isnan(aoa.di(np.array([[np.nan]]))[0])
    assert aoa.threshold == pytest.approx(1.5)
    # Weights: a variable with zero importance does not count.
    X2 = np.column_stack([X[:, 0], [5.0, -3.0, 8.0, 0.0]])
    aoa2 = cmp.AOA(X2, np.array(["a", "a", "b", "b"]), np.array([2.0, 0.0]))
    np.testing.assert_allclose(aoa2.train_di, aoa.train_di)


def test_boxplot_upper_whisker_is_r_boxplot_stats():
    assert cmp.boxplot_upper_whisker(np.array([1, 2, 3, 4, 100.0])) == 4.0
    assert cmp.boxplot_upper_whisker(np.array([0.6, 0.6, 0.9, 1.5])) == 1.5


# --------------------------------------------------------------------------- clusters
def test_cluster_counts():
    labels = np.array([0, 0, 1, 1, -1])
    area = np.array([1.0, 1.0, 2.0, 2.0, 5.0])
    t = cmp.cluster_table(
        labels,
        area,
        np.array([0, 0, 1, 0, -1]),
        np.array(["a", "a", "b", "c", "d"]),
        np.array([[0.5], [-0.5]]),
        ["tmp"],
    )
    assert list(t.n_sites) == [2, 1] and list(t.n_site_months) == [3, 1] and list(t.n_cells) == [2, 2]
    np.testing.assert_allclose(t.area_share, [2 / 6, 4 / 6])
    assert list(t.tmp) == [0.5, -0.5]


def test_fit_clusters_numbers_by_size():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (30, 2))
    b = rng.normal(5, 0.1, (70, 2))
    s = np.vstack([a, b])
    s = np.column_stack([s, np.full(len(s), 2.0)])  # a constant column is dropped
    predict, _, used = cmp.fit_clusters(s, 2, 448)
    assert list(used) == [True, True, False]
    lab = predict(s)
    assert (lab[30:] == 0).all() and (lab[:30] == 1).all()
    assert predict(np.array([[np.nan, 1.0, 2.0]]))[0] == -1


# --------------------------------------------------------------------------- bad inputs
def _pred(years=(2001, 2002)):
    x, y = _grid()
    t = pd.date_range(f"{years[0]}-01-01", f"{years[1]}-12-01", freq="MS")
    return write_crs(
        xr.Dataset({"ndvi": (("time", "y", "x"), np.ones((t.size, 6, 7)))}, coords={"time": t, "y": y, "x": x}), LAEA
    )


def _write(ds, path):
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def test_bad_references(tmp_path):
    pred = _pred()
    good = _monthly(range(2001, 2003))
    ok = _write(write_crs(good, LAEA).assign_attrs(product="A"), tmp_path / "a.nc")
    refs = cmp.read_references([ok], pred, (2001, 2002), None, True)
    assert refs[0].years == [2001, 2002] and not refs[0].latlon
    shifted = write_crs(good.assign_coords(x=good.x + 50e3), LAEA).assign_attrs(product="B")
    with pytest.raises(InputError, match="b.nc"):
        cmp.read_references([_write(shifted, tmp_path / "b.nc")], pred, (2001, 2002), None, True)
    late = write_crs(_monthly(range(2010, 2012)), LAEA).assign_attrs(product="C")
    with pytest.raises(InputError, match="no complete calendar year"):
        cmp.read_references([_write(late, tmp_path / "c.nc")], pred, (2001, 2002), None, True)
    with pytest.raises(InputError, match="also the name"):
        cmp.read_references([ok, ok], pred, (2001, 2002), None, True)
    fire = write_crs(good.assign_attrs(product="D", fire_included=1), LAEA)
    with pytest.raises(InputError, match="fire"):
        cmp.read_references([_write(fire, tmp_path / "d.nc")], pred, (2001, 2002), None, True)
    assert cmp.read_references([tmp_path / "d.nc"], pred, (2001, 2002), None, False)[0].subtract_fire is False


def test_config_references_and_compare_section(tmp_path):
    for f in ("s.csv", "p.zarr", "z.nc", "r1.nc"):
        (tmp_path / f).touch()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[inputs]\nsites="s.csv"\npredictors="p.zarr"\nzones="z.nc"\nreferences=["r1.nc"]\n'
        "[compare]\nsubtract_fire=false\nn_clusters=4\n"
    )
    c = load_config(cfg)
    assert c.inputs.references == [tmp_path / "r1.nc"] and c.compare.n_clusters == 4
    assert c.compare.subtract_fire is False and c.compare.mess_period_length == 5
    cfg.write_text('[inputs]\nsites="s.csv"\npredictors="p.zarr"\nzones="z.nc"\nreferences=["r2.nc"]\n')
    with pytest.raises(ConfigError, match=r"references\[0\]"):
        load_config(cfg)
    cfg.write_text('[inputs]\nsites="s.csv"\npredictors="p.zarr"\nzones="z.nc"\n[compare]\nclusters=3\n')
    with pytest.raises(ConfigError, match="compare.clusters"):
        load_config(cfg)


# --------------------------------------------------------------------------- the study
def test_study_run_writes_compare_outputs(study_run, twin_dir, fast_config, tmp_path):
    out, record = study_run
    d = out / "compare"
    ex = xr.open_zarr(d / "extrapolation.zarr", consolidated=False)
    assert list(ex.period.values) == ["2001-2005", "2006-2010", "2011-2015", "2016-2020"]
    assert ex.mess_mod.dtype.kind == "i" and ex.cluster.dtype.kind == "i" and "spatial_ref" in ex
    assert ex.mess_mod.attrs["flag_meanings"].split() == list(cmp.CONTINUOUS)
    land = xr.open_dataset(twin_dir / "zones.nc").land_fraction.fillna(0).values > 0
    aoa = ex.aoa.values
    assert set(np.unique(aoa[land])) <= {0, 1} and (aoa[land] == 1).mean() > 0.3
    assert (ex.cluster.values[land] >= 0).all() and (ex.cluster.values[~land] == -1).all()
    assert np.isfinite(ex.mess.values[:, land]).all()
    ma = pd.read_csv(d / "mess_area.csv")
    assert ma.share_extrapolated.between(0, 1).all()
    sd = pd.read_csv(d / "aoa_sd.csv").set_index("flux")
    assert set(sd.index) == {"gpp", "reco", "nee", "nee_derived"} and (sd.inside_mean_sd > 0).all()
    cl = pd.read_csv(d / "clusters.csv")
    assert cl.area_share.sum() == pytest.approx(1.0) and cl.n_cells.sum() == land.sum()
    sites = pd.read_parquet(out / "sites.parquet")
    assert cl.n_site_months.sum() == sites[["gpp", "reco", "nee"]].notna().any(axis=1).sum()
    # Products: the inversion-like one is truth x 1.5 (+ fire, subtracted again) on 2 degrees.
    m = pd.read_csv(d / "metrics.csv").set_index("product")
    inv, proc = m.loc["twin inversion-like"], m.loc["twin process-model-like"]
    assert bool(inv.fire_subtracted) and not bool(proc.fire_subtracted)
    assert (proc.first_year, proc.last_year) == (2001, 2014) and (inv.first_year, inv.last_year) == (2001, 2020)
    assert inv.map_r > 0.6 and proc.map_r > 0.6  # abzflux vs truth: r = 0.73
    # On the products' own grids (the inversion-like one: 2-degree cells; the process-model-like one
    # is on the analysis grid): measured map r 0.78 / 0.74 on 1569 / 3043 cells, n_eff 31 / 42,
    # Dutilleul p 2.6e-07 / 1.8e-08 where the naive p underflows to 0.
    assert (inv.grid, inv.product_grid, proc.product_grid) == ("product", "lat/lon 2x2 deg", "analysis")
    assert 1000 < inv.n_cells < proc.n_cells and inv.trend_n_cells == inv.n_cells
    assert inv.map_n_eff < inv.n_cells / 10 and proc.map_n_eff < proc.n_cells / 10
    for r in (inv, proc):
        assert r.map_p_naive <= r.map_p < 1e-4 and r.trend_p_naive <= r.trend_p
    b = pd.read_csv(d / "budgets.csv")
    truth = pd.read_csv(twin_dir / "truth_budgets.csv")
    t_dom = truth[(truth.zone == "domain") & (truth.flux == "nee")].tg_c.mean()
    inv_dom = b[(b["product"] == "twin inversion-like") & (b.zone == "domain")].iloc[0]
    assert inv_dom.product_tg_c == pytest.approx(1.5 * t_dom, rel=0.1)
    assert inv_dom.ratio == pytest.approx(inv_dom.product_tg_c / inv_dom.abzflux_tg_c)
    assert "references" in record["input_hashes"] and len(record["input_hashes"]["references"]) == 2
    maps = xr.open_zarr(d / "product_maps.zarr", consolidated=False)
    assert maps.mean_annual.sizes["product"] == 2 and "spatial_ref" in maps
    assert "Extrapolation and other products" in (out / "summary.md").read_text()

    # Without reference products the stage still writes the extrapolation outputs.
    import shutil

    from abzflux.context import Context
    from abzflux.steps.compare import run as stage_compare

    run2 = tmp_path / "run"
    shutil.copytree(out, run2, ignore=shutil.ignore_patterns("compare", "upscale.partial"))
    cfg = load_config(fast_config)
    cfg.inputs.references = None
    stage_compare(Context(cfg=cfg, out=run2))
    assert sorted(p.name for p in (run2 / "compare").iterdir()) == [
        "aoa_sd.csv",
        "clusters.csv",
        "extrapolation.zarr",
        "mess_area.csv",
    ]
    pd.testing.assert_frame_equal(pd.read_csv(run2 / "compare" / "clusters.csv"), cl)


def test_bad_reference_fails_before_any_stage_writes(twin_dir, tmp_path):
    from abzflux.runner import run_study

    ref = xr.open_dataset(twin_dir / "ref_process.nc").load()
    ref = ref.assign_coords(time=ref.time.to_index() + pd.DateOffset(years=30))  # 2031-2044
    ref.to_netcdf(tmp_path / "late.nc", engine="h5netcdf")
    text = (twin_dir / "config.toml").read_text()
    text = text.replace(
        'references = ["ref_inversion.nc", "ref_process.nc"]', f'references = ["{tmp_path / "late.nc"}"]'
    )
    for f in ("sites.csv", "predictors.zarr", "zones.nc", "fire.zarr", "truth.nc"):
        text = text.replace(f'"{f}"', f'"{twin_dir / f}"')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(InputError, match=r"late\.nc.*no complete calendar year.*2001-2020"):
        run_study(load_config(tmp_path / "c.toml"), tmp_path / "run")
    assert not [q for q in (tmp_path / "run").rglob("*") if q.is_file()]


def test_fit_clusters_does_not_depend_on_the_openmp_thread_count():
    """k-means reduces its centre sums per OpenMP thread, so unguarded its centres differ in the
    last bits between 1 and 2 threads (seen as a resumed run's clusters.csv differing from an
    uninterrupted one's); fit_clusters pins one thread, so the caller's setting cannot matter."""
    import sklearn.cluster  # noqa: F401 - load its OpenMP runtime so that the limits below apply
    from threadpoolctl import threadpool_limits

    from abzflux.compare import fit_clusters

    rng = np.random.default_rng(0)
    sample = rng.normal(size=(20000, 8)) * rng.uniform(0.5, 3, 8) + rng.normal(size=8)
    got = []
    for n in (1, 2):
        with threadpool_limits(limits=n, user_api="openmp"):
            got.append(fit_clusters(sample, 10, 448)[1])
    assert np.array_equal(got[0], got[1])
