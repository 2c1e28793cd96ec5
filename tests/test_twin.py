"""The synthetic twin: domain, files, truth and site network behave as documented."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import twin as twin_mod
from abzflux.domain import base_grid, load_domain
from abzflux.formats import read_fire, read_predictors, read_site_table, read_zones
from abzflux.predictors import STACK_VARIABLES
from abzflux.twin import TwinSpec, fire_legacy, make_twin, true_fluxes

PAPER_DOMAIN_KM2 = 20.7e6


@pytest.mark.slow  # the 10-km domain on 7 grids
def test_domain_area_close_to_paper_and_conserved_by_aggregation():
    b = base_grid()
    mask_area = float(b["land_fraction"].astype(np.float64).sum()) * 1e8 / 1e6  # 10-km cells, km2
    assert abs(mask_area - PAPER_DOMAIN_KM2) / PAPER_DOMAIN_KM2 < 0.03
    for r in (20, 50, 70, 100, 8, 7.995296, 12.5):  # blocks, and exact-overlap remapping (8 km)
        d = load_domain(r)
        area = float((d.land_fraction.astype(np.float64) * d.cell_area).sum()) / 1e6
        assert area == pytest.approx(mask_area, rel=1e-6)
        assert float(d.land_fraction.max()) <= 1 + 1e-6


def test_overlap_remap_by_hand():
    from abzflux.domain import _overlap

    # 10-km source cells onto 8-km cells: [0,8) in cell 0; [8,16) = 2 km of cell 0 + 6 of cell 1; ...
    m = _overlap(4, 10.0, 8.0).toarray()
    assert m.shape == (5, 4)
    np.testing.assert_allclose(m[0], [1, 0, 0, 0])
    np.testing.assert_allclose(m[1], [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(m[2], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(m[4], [0, 0, 0, 1])
    m3 = _overlap(3, 10.0, 8.0).toarray()  # extent 30 km: the 4th 8-km cell [24, 32) is 3/4 covered
    assert m3.shape == (4, 3)
    np.testing.assert_allclose(m3[3], [0, 0, 0.75])
    np.testing.assert_allclose(m.sum(0) * 8, 10)  # every source cell is distributed in full
    d8 = load_domain(8)
    assert d8.sizes["x"] > load_domain(10).sizes["x"]
    np.testing.assert_allclose(np.diff(d8.x.values), 8000)
    land = d8.land_fraction.values > 0
    assert np.all(np.isin(d8.biome.values[land], [1, 2])) and np.all(d8.biome.values[~land] == 0)


def test_domain_zones_partition_the_land():
    d = load_domain(50)
    land = d.land_fraction.values > 0
    assert np.all(np.isin(d.biome.values[land], [1, 2]))
    assert np.all(np.isin(d.region.values[land], [1, 2, 3, 4]))
    assert np.all(d.biome.values[~land] == 0)
    # Known places fall in the right zones: Fairbanks boreal/Alaska, Yakutsk boreal/Siberia,
    # Utqiagvik tundra/Alaska.
    from abzflux.formats import cell_index

    for lat, lon, biome, region in ((64.84, -147.72, 1, 1), (62.03, 129.73, 1, 4), (71.29, -156.79, 2, 1)):
        iy, ix = cell_index(d, np.array([lat]), np.array([lon]))
        assert d.biome.values[iy[0], ix[0]] == biome
        assert d.region.values[iy[0], ix[0]] == region


def test_twin_land_area_equals_mask_area(twin_dir):
    z = xr.open_dataset(twin_dir / "zones.nc")
    area = float((z.land_fraction.astype(np.float64) * z.cell_area).sum()) / 1e6
    mask_area = float(base_grid()["land_fraction"].astype(np.float64).sum()) * 100.0
    assert area == pytest.approx(mask_area, rel=1e-6)
    s = json.loads((twin_dir / "twin.json").read_text())
    assert s["domain_area_km2"] == pytest.approx(mask_area, rel=1e-6)


def test_twin_files_pass_the_contract(twin_dir):
    pred = read_predictors(twin_dir / "predictors.zarr")
    assert set(STACK_VARIABLES) <= set(pred.data_vars)
    assert pred.sizes["time"] == 240
    read_zones(twin_dir / "zones.nc", like=pred)
    read_fire(twin_dir / "fire.zarr", like=pred)
    sites = read_site_table(twin_dir / "sites.csv")
    assert 180 <= sites.site_id.nunique() <= 200
    assert 4000 <= len(sites) <= 5200


def test_truth_nee_is_reco_minus_gpp(twin_dir):
    t = xr.open_dataset(twin_dir / "truth.nc")
    d = (t.nee - (t.reco - t.gpp)).values
    assert np.nanmax(np.abs(d)) < 1e-3
    assert float(t.gpp.min()) >= 0 and float(t.reco.min()) > 0
    assert t.nee.attrs["units"] == "g C m-2 month-1"


def test_truth_zone_budgets_add_up(twin_dir):
    tb = pd.read_csv(twin_dir / "truth_budgets.csv")
    for flux in ("gpp", "reco", "nee", "fire", "nee_fire"):
        t = tb[tb.flux == flux].pivot(index="year", columns="zone", values="tg_c")
        np.testing.assert_allclose(t.boreal + t.tundra, t.domain, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(t.alaska + t.canada + t.europe + t.siberia, t.domain, rtol=1e-9, atol=1e-6)
    nf = tb[tb.flux == "nee_fire"].set_index(["zone", "year"]).tg_c
    n = tb[tb.flux == "nee"].set_index(["zone", "year"]).tg_c
    f = tb[tb.flux == "fire"].set_index(["zone", "year"]).tg_c
    np.testing.assert_allclose(nf, (n + f).loc[nf.index], rtol=1e-12)


def test_truth_has_the_documented_carbon_cycle(twin_dir):
    """Boreal sink, near-neutral tundra with source areas, a strengthening sink, boreal fires."""
    from scipy.stats import theilslopes

    tb = pd.read_csv(twin_dir / "truth_budgets.csv")
    dens = tb.groupby(["zone", "flux"]).density_g_m2.mean()
    assert dens["boreal", "nee"] < -20
    assert -40 < dens["tundra", "nee"] < 60
    t = xr.open_dataset(twin_dir / "truth.nc")
    z = xr.open_dataset(twin_dir / "zones.nc")
    mean_nee = t.nee.groupby("time.year").sum(min_count=12).mean("year")
    tundra = (z.biome == 2).values & np.isfinite(mean_nee.values)
    assert 0.2 < float((mean_nee.values[tundra] > 0).mean()) < 0.9  # tundra source areas
    s = tb[(tb.zone == "domain") & (tb.flux == "nee")].sort_values("year")
    assert theilslopes(s.tg_c, s.year)[0] < 0  # strengthening sink
    fire = tb[tb.flux == "fire"].groupby("zone").tg_c.mean()
    assert fire["boreal"] > 20 * fire["tundra"]
    f = xr.open_zarr(twin_dir / "fire.zarr", consolidated=False).fire_emissions
    by_month = f.groupby("time.month").sum().sum(("y", "x")).values
    assert by_month[5:8].sum() > 0.99 * by_month.sum()  # June-August


def test_site_network_is_biased_and_realistic(twin_dir):
    s = read_site_table(twin_dir / "sites.csv")
    z = read_zones(twin_dir / "zones.nc")
    from abzflux.formats import cell_index

    per_site = s.groupby("site_id").first()
    iy, ix = cell_index(z, per_site.lat.values, per_site.lon.values)
    region = z.region.values[iy, ix]
    counts = pd.Series(region).value_counts()
    area = z.land_fraction.where(z.region == 4).sum() / z.land_fraction.sum()
    # Siberia holds over half the domain but is sparsely sampled.
    assert float(area) > 0.45 and counts.get(4, 0) / len(per_site) < 0.25
    assert counts.get(3, 0) > counts.get(4, 0)
    assert s.gpp.notna().sum() < s.nee.notna().sum()
    assert set(s.method.dropna()) == {"EC", "chamber"}
    fire = s[s.disturbance == "fire"]
    assert fire.site_id.nunique() >= 5
    assert (fire.years_since_fire >= 0).all() and fire.years_since_fire.notna().all()
    assert s.loc[s.disturbance != "fire", "years_since_fire"].isna().all()
    n = s.groupby("site_id").size()
    assert n.min() >= 1 and n.max() <= 213 and n.median() < n.mean()  # right-skewed records


@pytest.mark.slow  # builds twins
def test_twin_is_deterministic_and_seeded(tmp_path, monkeypatch):
    spec = TwinSpec(resolution_km=200, first_year=2019, last_year=2020, seed=7, n_sites=30, n_site_months=400)
    make_twin(tmp_path / "a", spec)
    with monkeypatch.context() as mp:  # written month by month (as on a big grid), not a year at a time
        mp.setattr(twin_mod, "WRITE_BLOCK_BYTES", 1)
        make_twin(tmp_path / "b", spec)
    make_twin(tmp_path / "c", TwinSpec(**{**spec.__dict__, "seed": 8}))
    a = (tmp_path / "a" / "sites.csv").read_bytes()
    assert a == (tmp_path / "b" / "sites.csv").read_bytes()
    assert a != (tmp_path / "c" / "sites.csv").read_bytes()
    ta = xr.open_dataset(tmp_path / "a" / "truth.nc")
    tb = xr.open_dataset(tmp_path / "b" / "truth.nc")
    xr.testing.assert_identical(ta, tb)
    for store in ("predictors.zarr", "fire.zarr"):
        za = xr.open_zarr(tmp_path / "a" / store, consolidated=False)
        zb = xr.open_zarr(tmp_path / "b" / store, consolidated=False)
        xr.testing.assert_identical(za, zb)
        assert za.time.encoding["chunks"] == zb.time.encoding["chunks"] == (12,)
    xr.testing.assert_identical(
        xr.open_dataset(tmp_path / "a" / "ref_inversion.nc"), xr.open_dataset(tmp_path / "b" / "ref_inversion.nc")
    )


def test_make_twin_refuses_nonempty_dir_and_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_twin(tmp_path / "x", TwinSpec(resolution_km=200, first_year=2020, last_year=2020))
    with pytest.raises(ValueError):
        make_twin(tmp_path / "y", TwinSpec(resolution_km=-5, first_year=2020, last_year=2020))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_true_flux_function_responds_as_documented():
    base = dict(
        srad=200.0,
        vpd=0.5,
        co2=400.0,
        snow_cover=0.0,
        soil_temp=283.15,
        soil_moisture=0.3,
        ndvi=0.7,
        lst=15.0,
        lue=1.0,
        r10=50.0,
    )
    f0 = true_fluxes(base, 0.0, 7)
    assert f0["nee"] == pytest.approx(f0["reco"] - f0["gpp"])
    assert true_fluxes({**base, "ndvi": 0.8}, 0.0, 7)["gpp"] > f0["gpp"]
    assert true_fluxes({**base, "snow_cover": 100.0}, 0.0, 7)["gpp"] < 0.2 * f0["gpp"]
    assert true_fluxes({**base, "soil_temp": 288.15}, 0.0, 7)["reco"] > f0["reco"]
    # Post-fire legacy: NEE raised right after a fire, lowered ~10-20 years later.
    assert fire_legacy(0.5) > 5 and fire_legacy(15) < -2 and abs(fire_legacy(80)) < 0.3
    up = true_fluxes(base, 10.0, 7)
    assert up["nee"] - f0["nee"] == pytest.approx(10.0)


def _toa_block(lat_deg):
    """The TOA climatology as one (365, ...) block (the formula before it streamed by day)."""
    lat = np.deg2rad(lat_deg)[None]
    doy = np.arange(1, 366).reshape((365,) + (1,) * lat_deg.ndim)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    ws = np.arccos(np.clip(-np.tan(lat) * np.tan(decl), -1, 1))
    ra = 1361.0 / np.pi * dr * (ws * np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.sin(ws))
    ends = np.cumsum([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    return np.stack([ra[s:e].mean(0) for s, e in zip(np.r_[0, ends[:-1]], ends)])


def test_toa_climatology_streams_days_with_identical_values():
    import tracemalloc

    lat = np.random.default_rng(3).uniform(30, 89.9, (60, 70))
    tracemalloc.start()
    toa = twin_mod._toa_monthly(lat)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(toa, _toa_block(lat))  # bit-identical: the twin's files do not change
    assert np.array_equal(twin_mod._toa_monthly(lat[:, 0]), _toa_block(lat[:, 0]))
    # A few grids besides the 12-month output, not a (365, ny, nx) block (3 GB a copy at 8 km).
    assert peak < (12 + 12) * lat.nbytes, peak / lat.nbytes
    assert 150 < toa[6, lat > 60].mean() < 600 and toa[0, lat > 70].max() < 20  # polar night, June sun


def test_reference_products_memory_does_not_grow_with_years(twin_dir, tmp_path):
    """The process-model-like reference is written month by month: its peak memory is the same
    for 2 and for 5 years of truth (it held every month as float64 before, x3 temporaries)."""
    import tracemalloc

    spec = TwinSpec(**{**json.loads((twin_dir / "twin.json").read_text())["spec"], "last_year": 2005})
    w = twin_mod._World(spec)
    zones = xr.open_dataset(twin_dir / "zones.nc")
    with xr.open_dataset(twin_dir / "truth.nc") as t:
        truth = t.sel(time=slice("2001", "2005")).load()
    peaks, files = {}, {}
    for last in (2002, 2005):
        d = tmp_path / str(last)
        d.mkdir()
        truth.to_netcdf(d / "truth.nc", engine="h5netcdf")
        (d / "fire.zarr").symlink_to(twin_dir / "fire.zarr")
        tracemalloc.start()
        twin_mod._write_references(d, TwinSpec(**{**spec.__dict__, "last_year": last}), w, zones)
        peaks[last] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        files[last] = xr.open_dataset(d / "ref_process.nc")
    grid = w.mask.size * 8
    assert files[2005].sizes["time"] == 60 and files[2002].sizes["time"] == 24
    assert peaks[2005] - peaks[2002] < 0.25 * 36 * grid, (peaks, grid)  # 36 more months, ~3 grids each before
    # Same generator stream either way: the first 24 months agree, and carry noise.
    a, b = files[2002].nee.values, files[2005].nee.isel(time=slice(0, 24)).values
    assert np.array_equal(a, b, equal_nan=True) and np.isfinite(a).any()
    assert 2.0 < np.nanstd(a - truth.nee.values[:24]) < 30.0


@pytest.mark.slow  # builds twins
def test_sigterm_leaves_no_partial_twin(tmp_path):
    """A twin killed with SIGTERM (a scheduler's time limit) removes its temporary directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "tw"
    proc = subprocess.Popen(
        [sys.executable, "-m", "abzflux.cli", "twin", "--out", str(out), "--resolution-km", "100", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob(".tw.partial-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the twin finished before it could be signalled"
    time.sleep(0.5)  # inside the generator
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
