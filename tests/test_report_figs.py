"""The report's Extended Data and Supplementary figures (issue 23 item 7): each drawn from the
run's files (the plotted arrays are compared with the source files' values), and a panel without
data says so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abzflux import layout as L
from abzflux import report as R
from abzflux.fire import site_residuals
from abzflux.forest import FluxForest
from abzflux.predictors import from_declaration, training_rows

from conftest import run_view


def _view(study_run, tmp_path, exclude=()):
    return run_view(study_run[0], tmp_path / "run", exclude=("report", "report.html", "report.tmp", *exclude))


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _mesh(ax) -> np.ndarray:
    """The values of the first pcolormesh of a map panel, NaN where masked."""
    from matplotlib.collections import QuadMesh

    q = next(c for c in ax.collections if isinstance(c, QuadMesh))
    return np.ma.filled(np.ma.asarray(q.get_array(), float), np.nan).ravel()


def _close(items):
    for it in items:
        if it.fig is not None:
            R.plt.close(it.fig)


# ----------------------------------------------------------------------------- pure helpers


def test_no_data_writes_the_reason_in_the_panel():
    fig, ax = R.plt.subplots()
    t = R._no_data(ax, "no site with > 7 full years")
    assert t.get_text() == "no site with > 7 full years" and t.get_transform() == ax.transAxes
    assert t.get_position() == (0.5, 0.5)
    R.plt.close(fig)


def test_gapped_breaks_lines_at_missing_months():
    d = pd.DataFrame({"year": [2001, 2001, 2001, 2002], "month": [12, 11, 2, 1], "v": [4.0, 3.0, 1.0, 5.0]})
    t, v = R.gapped(d, "v")
    # sorted: Feb (1), Nov (3), Dec (4), Jan 2002 (5); gap between Feb and Nov only
    np.testing.assert_array_equal(v, [1.0, np.nan, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(t[[0, 2, 3, 4]], [2001 + 1.5 / 12, 2001 + 10.5 / 12, 2001 + 11.5 / 12, 2002 + 0.5 / 12])


def test_greening_classes_by_hand():
    # cells: greening+annual uptake, greening+JJA uptake only, greening without, browning, no NEE trend
    tm = xr.Dataset(
        {
            "ndvi_jja_slope": ("c", [0.01, 0.01, 0.01, -0.01, 0.01]),
            "ndvi_jja_p": ("c", [0.01, 0.01, 0.01, 0.01, 0.01]),
            "nee_annual_slope": ("c", [-1.0, -1.0, -1.0, -1.0, np.nan]),
            "nee_annual_p": ("c", [0.01, 0.2, 0.2, 0.01, np.nan]),
            "nee_jja_slope": ("c", [-1.0, -1.0, 1.0, -1.0, -1.0]),
            "nee_jja_p": ("c", [0.5, 0.01, 0.01, 0.01, 0.01]),
        }
    )
    np.testing.assert_array_equal(R.greening_classes(tm), [0, 1, 2, 3, np.nan])


def test_postfire_composite_by_hand():
    t = pd.date_range("2001-01-01", "2004-12-01", freq="MS")
    v = np.zeros((len(t), 1, 3))
    july = t.month == 7
    v[july, 0, 0] = [1.0, 2.0, 3.0, 6.0]  # burned 2002: mean 3 -> anomalies -2, -1, 0, 3 at -1, 0, 1, 2
    v[july, 0, 1] = [4.0, 0.0, 4.0, 4.0]  # burned 2003: mean 3 -> 1, -3, 1, 1 at -2, -1, 0, 1
    v[july, 0, 2] = 99.0  # not burned
    da = xr.DataArray(v, dims=("time", "y", "x"), coords={"time": t})
    rel, anom = R.postfire_composite(da, np.array([[2002.0, 2003.0, 0.0]]))
    np.testing.assert_array_equal(rel, [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(anom, [1.0, (-2 - 3) / 2, (-1 + 1) / 2, (0 + 1) / 2, 3.0])


def test_fine_coarse_pairs_keep_shared_years_only():
    fine = pd.DataFrame({"zone": "domain", "flux": "nee", "year": [2001, 2002, 2003], "tg_c": [1.0, 2.0, 3.0]})
    coarse = pd.DataFrame(
        {"zone": ["domain"] * 3 + ["mars"], "flux": "nee", "year": [1999, 2002, 2003, 2002], "tg_c": [9, 20, 30, 7.0]}
    )
    p = R.fine_coarse_pairs(fine, coarse, ["domain"])
    assert p.to_dict("list") == {
        "zone": ["domain", "domain"],
        "year": [2002, 2003],
        "fine": [2.0, 3.0],
        "coarse": [20.0, 30.0],
    }


# ----------------------------------------------------------------------------- from the study run


def test_fig1_says_when_no_site_has_a_trend(study_run, tmp_path):
    run = _view(study_run, tmp_path, exclude=("trends",))
    shutil.copytree(study_run[0] / "trends", run / "trends")
    st = pd.read_csv(run / L.SITE_TRENDS)
    st.iloc[:0].to_csv(run / L.SITE_TRENDS, index=False)
    (it,) = R.fig1_maps(R.RunData(run))
    assert "no site with > 7 full years" in _texts(it.fig)
    assert "(0 sites;" in it.caption
    _close([it])


def test_ed5_maps_are_the_monthly_trend_maps(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    rd = R.RunData(run)
    (it,) = R.ed5_monthly_trends(rd)
    tm = xr.open_zarr(run / L.TREND_MAPS, consolidated=False)
    maps = [
        ax for ax in it.fig.axes if ax.get_title() in {pd.Timestamp(2001, m, 1).strftime("%B") for m in range(1, 13)}
    ]
    assert len(maps) == 12
    for m, ax in enumerate(maps, start=1):
        np.testing.assert_array_equal(_mesh(ax), tm[f"nee_m{m:02d}_slope"].values.astype(float).ravel())
    assert "g C m-2 month-1 yr-1" in it.caption and rd.period() in it.caption
    _close([it])
    # a month whose map is absent says so in its panel
    rd._cache["tm"] = tm.drop_vars(["nee_m04_slope", "nee_m04_p"])
    (it,) = R.ed5_monthly_trends(rd)
    assert "no April trend map in this run" in _texts(it.fig)
    _close([it])


def test_ed6_bars_are_the_skill_by_disturbance(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    (it,) = R.ed6_skill_by_disturbance(R.RunData(run))
    s = pd.read_csv(run / "cv" / "skill_by_disturbance.csv", keep_default_na=False, na_values=[""])
    classes = list(dict.fromkeys(s.disturbance))
    fluxes = list(dict.fromkeys(s.flux))
    assert len(classes) >= 2
    for ax, (col, _, _) in zip(it.fig.axes, R.SKILL_BARS):
        heights = np.array([p.get_height() for p in ax.patches]).reshape(len(fluxes), len(classes))
        want = np.array([s.set_index(["flux", "disturbance"]).loc[(f, c), col] for f in fluxes for c in classes])
        np.testing.assert_allclose(heights.ravel(), want.astype(float))
    _close([it])


def test_forest_writes_the_in_sample_fit_of_every_training_row(study_run):
    run = study_run[0]
    fitted = pd.read_parquet(run / L.FOREST_FITTED)
    info = json.loads((run / L.FOREST_JSON).read_text())
    sites = pd.read_parquet(run / L.SITES)
    pset = from_declaration(None, None, {}, None)
    for flux in ("nee", "gpp"):
        f = fitted[fitted.flux == flux].reset_index(drop=True)
        rows = training_rows(sites, flux, pset).reset_index(drop=True)
        assert len(f) == info[flux]["rows"] == len(rows)
        np.testing.assert_array_equal(f.obs, rows[flux])
        model = FluxForest.load(run / "models" / f"{flux}.npz")
        np.testing.assert_array_equal(f.fitted, model.predict(rows[list(pset.names)]))
        assert np.corrcoef(f.fitted, f.obs)[0, 1] ** 2 == pytest.approx(info[flux]["in_sample_r2"], rel=1e-12)


def test_site_series_show_observed_fitted_and_loso(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    rd = R.RunData(run)
    supp3, supp4 = R.supp_site_series(rd)
    sites = pd.read_parquet(run / L.SITES)
    n = sites[sites.nee.notna()].groupby("site_id").size().reset_index(name="n")
    top = list(n.sort_values(["n", "site_id"], ascending=[False, True]).site_id[: R.SERIES_SITES])
    assert R.series_sites(rd) == top and all(s in supp3.caption for s in top)
    info = json.loads((run / L.FOREST_JSON).read_text())
    cv = pd.read_parquet(run / L.CV_PREDICTIONS)
    cv = cv[(cv.flux == "nee") & (cv.mtry == info["nee"]["mtry"])]
    fitted = pd.read_parquet(run / L.FOREST_FITTED)
    fitted = fitted[fitted.flux == "nee"]
    for ax, sid in zip(supp3.fig.axes, top):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        obs = lines["observed"].get_ydata()
        s = sites[(sites.site_id == sid) & sites.nee.notna()].sort_values(["year", "month"])
        np.testing.assert_array_equal(obs, s.nee)
        for label, src, col in (
            ("cross-validated (site left out)", cv, "pred"),
            ("fitted (final forest)", fitted, "fitted"),
        ):
            y = np.asarray(lines[label].get_ydata(), float)
            want = src[src.site_id == sid].sort_values(["year", "month"])[col].to_numpy()
            np.testing.assert_array_equal(y[np.isfinite(y)], want)
    burned = R.series_sites(rd, disturbance="fire")
    fire_sites = set(sites.loc[sites.disturbance == "fire", "site_id"])
    assert burned and set(burned) <= fire_sites
    assert [ax.get_title().split(" ")[0] for ax in supp4.fig.axes[: len(burned)]] == burned
    _close([supp3, supp4])


def test_site_series_say_when_no_site_burned(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    rd = R.RunData(run)
    rd._cache["sites"] = rd.sites().assign(disturbance="none")
    _, supp4 = R.supp_site_series(rd)
    assert any(t.startswith("no site with the") for t in _texts(supp4.fig))
    assert "(none in this run)" in supp4.caption
    _close([supp4])


def test_supp5_caption_quotes_the_area_shares(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    (it,) = R.supp5_greening(R.RunData(run))
    a = pd.read_csv(run / "trends" / "area_shares.csv").set_index("quantity").area_share
    assert f"greening {100 * a['greening']:.0f} %" in it.caption
    assert f"{100 * a['greening_with_annual_uptake_trend']:.0f} % with an increasing annual" in it.caption
    tm = xr.open_zarr(run / L.TREND_MAPS, consolidated=False)
    a_, b_ = (next(ax for ax in it.fig.axes if ax.get_title().startswith(k)) for k in ("a  ", "b  "))
    np.testing.assert_array_equal(_mesh(a_), tm.ndvi_jja_slope.values.astype(float).ravel())
    np.testing.assert_array_equal(_mesh(b_), R.greening_classes(tm).ravel())
    _close([it])


def test_supp13_plots_every_july_burned_site_year(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    (it,) = R.supp13_postfire_sites(R.RunData(run))
    s = pd.read_parquet(run / L.SITES)
    b = s[(s.disturbance == "fire") & s.years_since_fire.notna() & (s.month == 7)]
    assert len(b)
    ax_nee = next(ax for ax in it.fig.axes if ax.get_title() == "July NEE")
    pts = np.concatenate([ln.get_ydata() for ln in ax_nee.get_lines()])
    np.testing.assert_array_equal(np.sort(pts), np.sort(b.nee.dropna().to_numpy()))
    _close([it])


def test_supp14_and_16_use_the_fire_stage_residuals(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    rd = R.RunData(run)
    info = json.loads((run / L.FOREST_JSON).read_text())
    r = site_residuals(pd.read_parquet(run / L.CV_PREDICTIONS), pd.read_parquet(run / L.SITES), info["nee"]["mtry"])
    diag = pd.read_csv(run / "fire" / "residual_diagnostics.csv")
    burned_mean = diag[(diag.by == "burned") & (diag.burned.astype(str) == "True")]["mean"].iloc[0]
    (s14,) = R.supp14_residuals(rd)
    labels = [t.get_text() for t in s14.fig.axes[0].get_legend().get_texts()]
    assert f"burned site-months (n {int(r.burned.sum())}, mean {burned_mean:.1f})" in labels
    (s16,) = R.supp16_bias_by_ysf(rd)
    models = pd.read_csv(run / "fire" / "bias_models.csv").set_index("month")
    b = r[r.burned]
    n_pts = 0
    for m, ax in zip(range(1, 13), s16.fig.axes):
        pts = ax.get_lines()[0]
        fit = [ln for ln in ax.get_lines()[1:] if ln.get_color() == "tab:red"]
        d = b[b.month == m]
        np.testing.assert_array_equal(np.sort(pts.get_ydata()), np.sort(d.residual.to_numpy()))
        n_pts += len(pts.get_ydata())
        if m in models.index and np.isfinite(models.loc[m, "slope"]):
            x = np.asarray(fit[0].get_xdata(), float)
            np.testing.assert_allclose(fit[0].get_ydata(), models.loc[m, "intercept"] + models.loc[m, "slope"] * x)
    assert n_pts == len(b) and f"{len(b)} site-months" in s16.caption
    _close([s14, s16])


def test_supp15_is_the_composite_of_the_burned_cells(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    (it,) = R.supp15_postfire_upscaled(R.RunData(run))
    up = xr.open_zarr(run / L.UPSCALED, consolidated=False)
    with xr.open_dataset(run / L.BURNED_CELLS) as b:
        last = b.last_burn_year.values.astype(float)
    rel, anom = R.postfire_composite(up["nee"], last)
    assert len(rel)
    ax = next(ax for ax in it.fig.axes if ax.get_title().startswith("July NEE"))
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), rel)
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), anom)
    _close([it])


def test_supp17_compares_the_sets_over_shared_years(study_run, tmp_path):
    run = _view(study_run, tmp_path)
    (run / "coarse").mkdir()
    a = pd.read_csv(run / L.BUDGETS_ANNUAL)
    a[a.year <= 2010].assign(tg_c=lambda d: d.tg_c + 50).to_csv(run / "coarse" / L.BUDGETS_ANNUAL, index=False)
    rd = R.RunData(run)
    (it,) = R.supp17_fine_vs_coarse(rd)
    pts = np.concatenate([np.c_[ln.get_xdata(), ln.get_ydata()] for ln in it.fig.axes[0].get_lines()[:-1]])
    np.testing.assert_allclose(pts[:, 1] - pts[:, 0], 50.0)
    assert "2001–2010" in it.caption
    assert "no coarse-set maps (RUN/coarse/upscaled.zarr)" in _texts(it.fig)
    _close([it])
    # with coarse maps: the fine set's NEE on every other cell, first 10 years
    up = xr.open_zarr(run / L.UPSCALED, consolidated=False)
    c = up[["nee"]].isel(y=slice(None, None, 2), x=slice(None, None, 2)).sel(time=slice("2001", "2010")).load()
    for v in c.variables.values():
        v.encoding = {}
    c.to_zarr(run / "coarse" / L.UPSCALED, consolidated=False)
    (it,) = R.supp17_fine_vs_coarse(R.RunData(run))
    maps = [ax for ax in it.fig.axes if ax.get_title().startswith(("b  ", "c  "))]
    fine = up.nee.sel(time=slice("2001", "2010")).groupby("time.year").sum(min_count=12).mean("year").values
    np.testing.assert_allclose(_mesh(maps[0]), fine.ravel())
    np.testing.assert_allclose(_mesh(maps[1]), fine[::2, ::2].ravel())
    _close([it])


def test_without_fire_fig2d_says_so_and_the_fire_figures_adapt(study_run, tmp_path):
    run = _view(study_run, tmp_path, exclude=("fire",))
    rd = R.RunData(run)
    (fig2,) = R.fig2_budgets(rd)
    assert "d  no fire input in this run" in _texts(fig2.fig)
    assert R.supp15_postfire_upscaled(rd) == []
    (s16,) = R.supp16_bias_by_ysf(rd)  # residuals still drawn, without the mixed-model lines
    assert "no mixed-model lines" in s16.caption
    assert not [ln for ax in s16.fig.axes for ln in ax.get_lines() if ln.get_color() == "tab:red"]
    _close([fig2, s16])
