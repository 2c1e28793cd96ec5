"""Streaming upscaling: identical outputs across chunkings and schedulers, kill-and-resume,
clear errors for predictor stacks that do not fit the models."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import upscale as up
from abzflux.errors import InputError
from abzflux.vocab import FLUXES


def _inputs(study_run, twin_dir):
    run, _ = study_run
    models = {f: run / "models" / f"{f}.npz" for f in FLUXES}
    rec = json.loads((run / "bootstrap" / "bootstrap.json").read_text())
    members = {f: [run / "bootstrap" / f"{f}_{m['member']:02d}.npz" for m in rec[f]] for f in FLUXES}
    pred = xr.open_zarr(twin_dir / "predictors.zarr", consolidated=False)
    sel = np.arange(pred.sizes["time"])  # the run covers every year of the twin
    return models, members, sel


def _same_store(a: Path, b: Path, months: int | None = None) -> None:
    """Every variable equal, value by value (of store ``a``: the first ``months`` only)."""
    x = xr.open_zarr(a, consolidated=False)
    y = xr.open_zarr(b, consolidated=False)
    if months is not None:
        x = x.isel(time=slice(0, months))
    assert sorted(x.data_vars) == sorted(y.data_vars)
    for v in x.data_vars:
        assert np.array_equal(x[v].values, y[v].values, equal_nan=True), v
        assert x[v].attrs == y[v].attrs


MONTHS = 36
"""The tile-size and scheduler tests upscale the first three years of the study run."""


@pytest.fixture(scope="module")
def tile32(study_run, twin_dir, tmp_path_factory):
    models, members, sel = _inputs(study_run, twin_dir)
    sel = sel[:MONTHS]
    out = tmp_path_factory.mktemp("tile32")
    info = up.upscale(
        twin_dir / "predictors.zarr", twin_dir / "zones.nc", models, members, out, sel, tile=32, fingerprint="t32"
    )
    return out, info


def test_store_is_identical_for_any_tile_size(study_run, tile32):
    run, _ = study_run
    out, info = tile32
    assert info["chunks"] > 3 * 4  # many tile-years: the grid really was cut up
    _same_store(run / "upscaled.zarr", out / "upscaled.zarr", months=MONTHS)
    assert xr.open_zarr(out / "upscaled.zarr", consolidated=False).nee.encoding["chunks"] == (12, 32, 32)
    b = pd.read_parquet(out / "budgets_members_monthly.parquet")
    a = pd.read_parquet(run / "budgets_members_monthly.parquet")
    first = np.sort(a.time.unique())[:MONTHS]
    assert np.array_equal(np.sort(b.time.unique()), first)
    a = a[a.time.isin(first)].reset_index(drop=True)
    assert a[["member", "flux", "zone", "time"]].equals(b[["member", "flux", "zone", "time"]])
    # zone sums are added in another order with other tiles: equal to rounding
    np.testing.assert_allclose(a.tg_c, b.tg_c, rtol=1e-10, atol=1e-9)
    assert not (out / "upscale.partial").exists()


def test_two_worker_localcluster_gives_identical_outputs(study_run, twin_dir, tile32, tmp_path):
    from dask.distributed import Client, LocalCluster

    models, members, sel = _inputs(study_run, twin_dir)
    sel = sel[:MONTHS]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl,
        Client(cl) as client,
    ):
        info = up.upscale(
            twin_dir / "predictors.zarr",
            twin_dir / "zones.nc",
            models,
            members,
            tmp_path,
            sel,
            tile=32,
            client=client,
            fingerprint="t32",
        )
    assert info["resumed"] == 0
    _same_store(tile32[0] / "upscaled.zarr", tmp_path / "upscaled.zarr")
    a = pd.read_parquet(tile32[0] / "budgets_members_monthly.parquet")
    b = pd.read_parquet(tmp_path / "budgets_members_monthly.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same chunk order: bit-identical sums


def test_resume_counts_only_missing_chunks(study_run, twin_dir, tmp_path, caplog):
    models, members, sel = _inputs(study_run, twin_dir)
    sel = sel[:24]  # two years
    args = (twin_dir / "predictors.zarr", twin_dir / "zones.nc", models, members, tmp_path, sel)
    full = up.upscale(*args, tile=32, fingerprint="a")
    # simulate an interruption: a partial directory with half the completion records
    ref = tmp_path / "ref.zarr"
    os.replace(tmp_path / "upscaled.zarr", ref)
    calls = []

    class Stop(Exception):
        pass

    def progress(done, total):
        calls.append(done)
        if done == total // 2 and len(calls) > 1:
            raise Stop

    with pytest.raises(Stop):
        up.upscale(*args, tile=32, fingerprint="a", progress=progress)
    with caplog.at_level(logging.INFO, logger="abzflux.upscale"):
        info = up.upscale(*args, tile=32, fingerprint="a")
    assert info["resumed"] == full["chunks"] // 2
    assert "resuming" in caplog.text
    _same_store(ref, tmp_path / "upscaled.zarr")
    # a different fingerprint (other models or inputs) never resumes stale chunks
    with pytest.raises(Stop):
        up.upscale(
            *args, tile=32, fingerprint="a", progress=lambda d, t: (_ for _ in ()).throw(Stop) if d == 3 else None
        )
    info = up.upscale(*args, tile=32, fingerprint="b")
    assert info["resumed"] == 0


def test_stack_without_a_model_predictor_is_a_clear_error(study_run, twin_dir, tmp_path):
    models, members, sel = _inputs(study_run, twin_dir)
    pred = xr.open_zarr(twin_dir / "predictors.zarr", consolidated=False).drop_vars("ndvi")
    bad = tmp_path / "pred.zarr"
    pred.to_zarr(bad, consolidated=False)
    with pytest.raises(InputError, match="ndvi") as e:
        up.upscale(bad, twin_dir / "zones.nc", models, members, tmp_path / "out", sel)
    assert "pred.zarr" in str(e.value)
    assert not (tmp_path / "out" / "upscaled.zarr").exists()


def test_plan_chunks_skips_tiles_without_land():
    land = np.zeros((10, 10), bool)
    land[0, 0] = land[9, 9] = True
    times = pd.date_range("2001-01-01", periods=24, freq="MS")
    chunks = up.plan_chunks(land, times, 4)
    assert [(c.year, c.iy0, c.ix0, c.iy1, c.ix1) for c in chunks] == [
        (2001, 0, 0, 4, 4),
        (2002, 0, 0, 4, 4),
        (2001, 8, 8, 10, 10),
        (2002, 8, 8, 10, 10),
    ]
    assert [c.t0 for c in chunks] == [0, 12, 0, 12]


def test_export_netcdf_and_geotiff_roundtrip(study_run, tmp_path):
    import rasterio
    from typer.testing import CliRunner

    from abzflux.cli import app

    # export takes the run directory's lock (a file in it): work on a view of the shared run
    from conftest import run_view

    run = run_view(study_run[0], tmp_path / "run")
    ds = xr.open_zarr(run / "upscaled.zarr", consolidated=False)
    r = CliRunner().invoke(
        app, ["export", str(run), "--format", "netcdf", "--vars", "nee,nee_sd", "--out", str(tmp_path / "f.nc")]
    )
    assert r.exit_code == 0, r.output
    nc = xr.open_dataset(tmp_path / "f.nc", engine="h5netcdf")
    assert sorted(nc.data_vars) == ["nee", "nee_sd"]
    assert np.array_equal(nc.nee.values, ds.nee.values, equal_nan=True)
    assert nc.nee.attrs["units"] == "g m-2" and nc.nee.attrs["grid_mapping"] == "spatial_ref"
    assert nc.nee.attrs["ancillary_variables"] == "nee_sd"
    r = CliRunner().invoke(
        app, ["export", str(run), "--format", "geotiff", "--vars", "gpp", "--out", str(tmp_path / "tif")]
    )
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "tif").glob("gpp_*.tif"))
    assert len(files) == 20
    with rasterio.open(tmp_path / "tif" / "gpp_2005.tif") as t:
        assert t.count == 12 and t.crs.to_epsg() == 6931
        assert t.descriptions[0] == "2005-01" and t.tags()["units"] == "g C m-2 month-1"
        dx = float(ds.x[1] - ds.x[0])
        assert t.transform.a == dx and t.transform.c == float(ds.x[0]) - dx / 2
        assert np.array_equal(t.read(), ds.gpp.sel(time="2005").values, equal_nan=True)
    r = CliRunner().invoke(app, ["export", str(run), "--vars", "co2"])
    assert r.exit_code == 2 and "co2" in r.output


@pytest.mark.slow  # runs the first checks of a study
def test_missing_predictor_month_names_the_month(tiny_twin, tmp_path, caplog):
    from abzflux.config import load_config
    from abzflux.runner import run_study, validate_study

    pred = xr.open_zarr(tiny_twin / "predictors.zarr", consolidated=False)
    t = pd.DatetimeIndex(pred.time.values)
    gap = pred.isel(time=np.nonzero(~((t.year == 2020) & (t.month == 7)))[0])
    gap.to_zarr(tmp_path / "predictors.zarr", consolidated=False)
    text = (tiny_twin / "config.toml").read_text()
    for k in ("sites.csv", "zones.nc", "fire.zarr", "truth.nc", "ref_inversion.nc", "ref_process.nc"):
        text = text.replace(f'"{k}"', f'"{tiny_twin / k}"')
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    c = load_config(cfg)
    c.run.years = "2019-2020"
    with pytest.raises(InputError, match="2020-07") as e:
        run_study(c, tmp_path / "run")
    assert "predictors.zarr" in str(e.value)
    assert not (tmp_path / "run" / "upscaled.zarr").exists()
    assert not (tmp_path / "run" / "sites.parquet").exists()
    # without run.years the run takes the stack's complete years (2019) and says what it leaves out
    with caplog.at_level(logging.WARNING, logger="abzflux.context"):
        c.run.years = None
        assert validate_study(c)[0].years() == (2019, 2019)
    assert "the run covers 2019-2019" in caplog.text and "11 month(s)" in caplog.text
    assert "2020-01 to 2020-12" in caplog.text


@pytest.mark.slow
def test_two_model_sets_from_one_config(tmp_path):
    """The twin writes a fine and a coarse set; one run produces both stores with SD layers."""
    from abzflux.config import load_config
    from abzflux.runner import run_study
    from abzflux.twin import TwinSpec, make_twin

    d = tmp_path / "twin"
    make_twin(
        d,
        TwinSpec(resolution_km=300, first_year=2003, last_year=2005, n_sites=60, n_site_months=800),
        coarse=TwinSpec(resolution_km=600, first_year=1995, last_year=1997, seed=449, n_sites=60, n_site_months=800),
    )
    text = (d / "config.toml").read_text()
    fast = "[forest]\nn_estimators = 10\nmtry = 5\ncv = false\nimportance_repeats = 1\npdp_points = 3\npdp_rows = 50\nn_bootstrap = 2\n"
    text = text[: text.index("[forest]")] + fast + text[text.index("[coarse]") :]
    (d / "config.toml").write_text(text)
    cfg = load_config(d / "config.toml")
    rec = run_study(cfg, tmp_path / "run")
    assert "coarse" in rec
    fine = xr.open_zarr(tmp_path / "run" / "upscaled.zarr", consolidated=False)
    coarse = xr.open_zarr(tmp_path / "run" / "coarse" / "upscaled.zarr", consolidated=False)
    assert pd.DatetimeIndex(fine.time.values).year.min() == 2003 and fine.sizes["time"] == 36
    assert pd.DatetimeIndex(coarse.time.values).year.min() == 1995 and coarse.sizes["time"] == 36
    assert float(coarse.x[1] - coarse.x[0]) == 2 * float(fine.x[1] - fine.x[0])
    for ds in (fine, coarse):
        assert {"gpp_sd", "reco_sd", "nee_sd", "nee_derived_sd"} <= set(ds.data_vars)
        assert np.isfinite(ds.nee_sd.values).any()
    assert (tmp_path / "run" / "coarse" / "budgets" / "table1.csv").exists()
    cj = json.loads((tmp_path / "run" / "coarse" / "run.json").read_text())
    assert cj["config"]["run"]["years"] == "1995-1997"
