"""End to end on a coarse twin: the study recovers the truth; stages, provenance, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux.config import load_config
from abzflux.errors import InputError
from abzflux.runner import file_hash, run_study

# Stated tolerances for the coarse (100 km, 100-tree) twin study. GPP and Reco are large,
# well-sampled fluxes; NEE is their small residual and is reported, not bounded here.
GPP_RECO_TOL = 0.10  # relative error of the domain and boreal period-mean budgets
NEE_MAP_R = 0.6  # Pearson r of the mean annual NEE map against the truth
CV_R2_MIN = {"gpp": 0.8, "reco": 0.8, "nee": 0.5}  # caret-style LOSO R² on the twin


def test_run_recovers_truth_budgets_and_nee_map(study_run):
    out, _ = study_run
    s = json.loads((out / "summary.json").read_text())
    t = pd.DataFrame(s["truth"]).set_index(["zone", "flux"])
    for zone in ("domain", "boreal"):
        for flux in ("gpp", "reco"):
            assert abs(t.loc[(zone, flux), "rel_error"]) < GPP_RECO_TOL, (zone, flux, t.loc[(zone, flux)])
    assert s["nee_map_pearson_r"] > NEE_MAP_R
    # The NEE error is reported next to the truth for every zone.
    assert {"domain", "boreal", "tundra", "permafrost"} <= set(t.xs("nee", level="flux").index)
    assert "NEE is a small residual" in (out / "summary.md").read_text()


def test_run_outputs_are_cf_and_consistent(study_run, twin_dir):
    out, _ = study_run
    up = xr.open_zarr(out / "upscaled.zarr", consolidated=False)
    assert up.sizes["time"] == 240
    for v in ("gpp", "reco", "nee", "nee_derived"):
        assert up[v].attrs["units"] == "g m-2" and up[v].attrs["cell_methods"] == "time: sum"
        assert up[v].attrs["carbon_units"] == "g C m-2 month-1"
        assert up[v].attrs["grid_mapping"] == "spatial_ref"
    assert "crs_wkt" in up.spatial_ref.attrs
    d = (up.nee_derived - (up.reco - up.gpp)).values
    assert np.nanmax(np.abs(d)) == 0
    z = xr.open_dataset(twin_dir / "zones.nc")
    land = z.land_fraction.values > 0
    first = up.gpp.isel(time=0).values
    assert np.isfinite(first[land]).all() and np.isnan(first[~land]).all()
    b = pd.read_csv(out / "budgets_annual.csv")
    t = b[b.flux == "nee"].pivot(index="year", columns="zone", values="tg_c")
    np.testing.assert_allclose(t.boreal + t.tundra, t.domain, rtol=1e-9)
    np.testing.assert_allclose(t.alaska + t.canada + t.europe + t.siberia, t.domain, rtol=1e-9)
    nonempty = np.isfinite(b.density_g_m2)  # some vegetation x region zones have no area
    assert (b[nonempty].coverage > 0.999).all() and (b[~nonempty].tg_c == 0).all()
    assert nonempty[b.zone.isin(["domain", "boreal", "tundra", "siberia", "permafrost"])].all()


def test_run_json_records_provenance(study_run, fast_config):
    out, _ = study_run
    r = json.loads((out / "run.json").read_text())
    assert r["seed"] == 448
    assert r["config"]["forest"]["n_estimators"] == 40
    assert set(r["input_hashes"]) == {"sites", "predictors", "zones", "fire", "truth", "references"}
    refs = r["input_hashes"].pop("references")  # one hash per reference product
    assert [Path(k).name for k in refs] == ["ref_inversion.nc", "ref_process.nc"]
    assert all(len(h) == 64 for h in list(r["input_hashes"].values()) + list(refs.values()))
    assert r["packages"]["numpy"] and r["packages"]["scikit-learn"]
    assert len(r["code_hash"]) == 64  # stages rerun when abzflux's own code changes
    assert list(r["stages"]) == [
        "sites",
        "forest",
        "interpret",
        "bootstrap",
        "upscale",
        "budgets",
        "trends",
        "fire",
        "compare",
        "summary",
    ]
    # Each stage marker records the digests of its outputs (what a rerun compares) and timings.
    # Byte-identical reruns, skips and refusals of another config: tests/test_resume.py (tiny twin).
    m = json.loads((out / "stages" / "forest.json").read_text())
    assert m["digest"]["models"] == file_hash(out / "models") and set(m["seconds_by_flux"]) == {"gpp", "reco", "nee"}


def test_bad_site_table_fails_before_writing_outputs(twin_dir, fast_config, tmp_path):
    bad = pd.read_csv(twin_dir / "sites.csv")
    bad.loc[5, "month"] = 13
    bad.to_csv(tmp_path / "sites.csv", index=False)
    cfg = fast_config.read_text().replace('sites = "sites.csv"', f'sites = "{tmp_path / "sites.csv"}"')
    p = tmp_path / "config.toml"
    p.write_text(
        cfg.replace('"predictors.zarr"', f'"{twin_dir / "predictors.zarr"}"')
        .replace('"zones.nc"', f'"{twin_dir / "zones.nc"}"')
        .replace('"fire.zarr"', f'"{twin_dir / "fire.zarr"}"')
        .replace('"truth.nc"', f'"{twin_dir / "truth.nc"}"')
        .replace('"ref_inversion.nc"', f'"{twin_dir / "ref_inversion.nc"}"')
        .replace('"ref_process.nc"', f'"{twin_dir / "ref_process.nc"}"')
    )
    with pytest.raises(InputError, match=r"sites\.csv.*month.*row 6"):
        run_study(load_config(p), tmp_path / "run")
    produced = {q.name for q in (tmp_path / "run").rglob("*") if q.is_file()}
    assert produced == set()


def test_cv_skill_tables_and_models(study_run):
    out, _ = study_run
    info = json.loads((out / "models" / "forest.json").read_text())
    skill = pd.read_csv(out / "cv" / "skill.csv").set_index("flux")
    for flux, r2 in CV_R2_MIN.items():
        assert skill.loc[flux, "caret_Rsquared"] > r2, (flux, skill.loc[flux].to_dict())
        assert info[flux]["mtry"] == 5 and info[flux]["cv"]["caret_RMSE"] == pytest.approx(
            skill.loc[flux, "caret_RMSE"]
        )
    assert info["nee"]["rows"] > info["gpp"]["rows"]  # NEE has the most rows
    pred = pd.read_parquet(out / "cv" / "predictions.parquet")
    assert len(pred[pred.flux == "nee"]) == info["nee"]["rows"]
    for by in ("month", "biome", "veg_type", "disturbance", "method"):
        t = pd.read_csv(out / "cv" / f"skill_by_{by}.csv")
        assert {"caret_RMSE", "pooled_R2", "pooled_bias"} <= set(t.columns) and len(t) >= 2
    assert set(pd.read_csv(out / "cv" / "skill_by_biome.csv").biome) == {"boreal", "tundra"}
    imp = pd.read_csv(out / "interpret" / "importance.csv")
    assert set(imp.groupby("flux").size()) == {17}
    top = imp[imp.flux == "gpp"].sort_values("importance").predictor.iloc[-4:]
    assert {"ndvi", "lst", "srad", "snow_cover", "soil_temp"} & set(top)  # GPP driven by light/greenness/warmth
    pdp = pd.read_csv(out / "interpret" / "partial_dependence.csv")
    assert set(pdp.predictor) == set(imp.predictor)
    boot = json.loads((out / "bootstrap" / "bootstrap.json").read_text())
    assert [len(boot[f]) for f in ("gpp", "reco", "nee")] == [3, 3, 3] and boot["method"] == "rows"
    for f in ("cv/obs_vs_pred.png", "interpret/importance.png", "interpret/partial_dependence_nee.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trend_outputs(study_run):
    out, _ = study_run
    maps = xr.open_zarr(out / "trends" / "trend_maps.zarr", consolidated=False)
    for v in (
        "nee_annual_slope",
        "nee_annual_p",
        "gpp_jja_tau",
        "reco_m07_slope",
        "ndvi_jja_slope",
        "nee_trend_attribution",
    ):
        assert v in maps
    p = maps.nee_annual_p.values
    assert np.nanmin(p) >= 0 and np.nanmax(p) <= 1
    shares = pd.read_csv(out / "trends" / "area_shares.csv").set_index("quantity").area_share
    assert ((shares >= 0) & (shares <= 1)).all()
    attribution = shares[[q for q in shares.index if q.startswith("attribution_")]]
    assert attribution.sum() == pytest.approx(1.0, abs=0.01)  # every cell with an NEE trend is attributed
    assert shares["greening"] > 0.2  # the twin greens
    bt = pd.read_csv(out / "trends" / "budget_trends.csv").set_index(["zone", "flux"])
    assert bt.loc[("domain", "gpp"), "slope"] > 0  # greening and CO2 raise GPP in the twin
    # the bootstrap ± of each budget trend: SD of the members' slopes (none for fire: no members)
    assert bt.loc[("domain", "nee"), "slope_sd"] > 0 and np.isnan(bt.loc[("domain", "fire"), "slope_sd"])
    s = json.loads((out / "summary.json").read_text())
    t = pd.DataFrame(s["truth"]).set_index(["zone", "flux"])
    assert t.loc[("domain", "nee"), "trend_truth"] < 0  # the twin's sink strengthens
    assert np.sign(t.loc[("domain", "nee (reco-gpp)"), "trend"]) == -1
    # seasons and months beside the annual budget trends; the annual rows are budget_trends'
    st = pd.read_csv(out / "trends" / "seasonal_budget_trends.csv").set_index(["zone", "flux", "season"])
    assert {"annual", "jja", "nonsummer", "nonsummer_crossyear", "m01", "m12"} <= set(st.index.get_level_values(2))
    ann = st.xs("annual", level="season")[["slope", "p"]].sort_index()
    pd.testing.assert_frame_equal(ann, bt[["slope", "p"]].sort_index(), check_exact=False, rtol=1e-12)
    # drivers: the twin warms by 0.035-0.06 degC yr-1 (Arctic-amplified), greens, loses snow
    dt = pd.read_csv(out / "trends" / "driver_trends.csv").set_index(["zone", "driver", "season"])
    assert 0.035 < dt.loc[("domain", "lst", "annual"), "slope"] < 0.065  # 0.047 at seed 448
    assert dt.loc[("domain", "ndvi", "jja"), "slope"] > 0 and dt.loc[("domain", "snow_cover", "annual"), "slope"] < 0
    assert dt.loc[("domain", "lst", "annual"), "units"] == "degC yr-1"
    for v in ("lst_nonsummer_slope", "ndvi_annual_p", "fire_annual_slope", "nee_fire_annual_p"):
        assert v in maps


def test_trend_maps_banded_equal_whole(study_run, fast_config, tmp_path):
    """Bands of 26 rows (bounded memory; three bands of the 78 rows) give the same maps and area
    shares as the run's stage (one band at this grid size), value by value."""
    from abzflux.context import Context
    from abzflux.steps.trends import run as stage_trends
    from abzflux.trends import trend_band_rows

    out, _ = study_run
    run = tmp_path / "run"
    run.mkdir()
    for f in ("upscaled.zarr", "budgets_annual.csv", "budgets", "sites.parquet"):
        (run / f).symlink_to(out / f)
    ctx = Context(cfg=load_config(fast_config), out=run)
    seen = []
    stage_trends(ctx, progress=lambda d, t: seen.append((d, t)), band_rows=26)
    a = xr.open_zarr(out / "trends" / "trend_maps.zarr", consolidated=False)
    b = xr.open_zarr(run / "trends" / "trend_maps.zarr", consolidated=False)
    assert b.sizes["y"] > 2 * 26 and seen[-1] == (-(-b.sizes["y"] // 26),) * 2
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "trends" / "area_shares.csv"), pd.read_csv(run / "trends" / "area_shares.csv")
    )
    # band height: the tile, unless one flux's float64 series would exceed the budget
    assert trend_band_rows(10_000, 10_000, 240, 128) == 13
    assert trend_band_rows(50, 80, 240, 128) == 50


def test_bootstrap_sd_maps_and_budget_sd(study_run):
    """SD on every aggregate: each bootstrap forest's budget first, then the SD (not pixel SDs)."""
    out, _ = study_run
    up = xr.open_zarr(out / "upscaled.zarr", consolidated=False)
    for v in ("gpp_sd", "reco_sd", "nee_sd", "nee_derived_sd"):
        a = up[v].isel(time=6).values
        assert np.nanmin(a) >= 0 and np.nanmax(a) > 0
    mb = pd.read_parquet(out / "budgets_members_monthly.parquet")
    assert sorted(mb.member.unique()) == [0, 1, 2]
    t = mb[mb.flux == "nee"].pivot_table(index=["member", "time"], columns="zone", values="tg_c")
    np.testing.assert_allclose(t.boreal + t.tundra, t.domain, rtol=1e-9)
    ann = mb[mb.flux == "nee"].groupby(["member", "zone", "year"]).tg_c.sum()
    sd_hand = ann.groupby(["zone", "year"]).std(ddof=1)
    b = pd.read_csv(out / "budgets_annual.csv").set_index(["zone", "flux", "year"])
    for (zone, year), v in sd_hand.items():
        assert b.loc[(zone, "nee", year), "tg_c_sd"] == pytest.approx(v, rel=1e-9)
        assert b.loc[(zone, "nee_fire", year), "tg_c_sd"] == pytest.approx(v, rel=1e-9)  # fire adds no SD
    period = pd.read_csv(out / "budgets_period_sd.csv").set_index(["zone", "flux"]).period_mean_tg_c_sd
    assert period[("domain", "nee")] > 0
    s = json.loads((out / "summary.json").read_text())
    assert "sd" in pd.DataFrame(s["truth"]).columns
