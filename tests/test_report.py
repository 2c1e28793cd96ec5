"""The HTML report: every expected figure and table, images that decode, PNG + PDF files, the
optional parts (coarse set, comparison/extrapolation) from small files in the stage's format,
and a failing figure that cannot corrupt the page or the run."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from abzflux import report as R
from abzflux.cli import app
from abzflux.formats import write_crs

from conftest import run_view, shared_build

runner = CliRunner()
PERIODS = ["2001-2010", "2011-2020"]


def _link_run(src, dst, exclude=()):
    """A view of a finished run without its report (the test writes one)."""
    return run_view(src, dst, exclude=("report", "report.html", "report.tmp", *exclude))


def _synthetic_compare(run):
    """RUN/compare/ in the interface's format (issue 8), with known values."""
    up = xr.open_zarr(run / "upscaled.zarr", consolidated=False)
    land = up.nee.isel(time=0).notnull().values
    ny, nx = land.shape
    comp = run / "compare"
    comp.mkdir()
    mess = np.where(land, np.linspace(-100, 40, ny * nx).reshape(ny, nx), np.nan)
    ex = xr.Dataset(
        {
            "mess": (("period", "y", "x"), np.stack([mess, mess + 10])),
            "mess_mod": (("period", "y", "x"), np.stack([np.where(land, 1, -1)] * 2).astype("int16")),
            "di": (("y", "x"), np.where(land, np.abs(mess) / 100, np.nan)),
            "aoa": (("y", "x"), np.where(land, (mess > -50).astype("int8"), 0).astype("int8")),
            "cluster": (
                ("y", "x"),
                np.where(land, (np.arange(nx)[None, :] * 3 // nx).repeat(ny, 0), -1).astype("int16"),
            ),
        },
        coords={"period": PERIODS, "y": up.y.values, "x": up.x.values},
    )
    ex["mess_mod"].attrs.update(flag_values=np.arange(3), flag_meanings="lst ndvi srad")
    ex["aoa"].attrs["threshold"] = 0.42
    write_crs(ex, 6931).to_zarr(comp / "extrapolation.zarr", mode="w", consolidated=False)
    pd.DataFrame(
        {"period": PERIODS * 2, "zone": ["domain"] * 2 + ["tundra"] * 2, "share_extrapolated": [0.25, 0.125, 0.5, 0.3]}
    ).to_csv(comp / "mess_area.csv", index=False)
    pd.DataFrame({"flux": ["nee"], "inside_mean_sd": [10.0], "outside_mean_sd": [30.0], "ratio": [3.0]}).to_csv(
        comp / "aoa_sd.csv", index=False
    )
    pd.DataFrame(
        {
            "cluster": [0, 1, 2],
            "area_share": [0.5, 0.3, 0.2],
            "n_cells": [5, 3, 2],
            "n_sites": [4, 1, 0],
            "n_site_months": [40, 9, 0],
            "lst": [0.1, -0.5, 1.2],
        }
    ).to_csv(comp / "clusters.csv", index=False)
    pd.DataFrame(
        {
            "product": ["inversions"],
            "first_year": [2001],
            "last_year": [2020],
            "fire_subtracted": [True],
            "map_r": [0.61],
            "map_p": [1e-5],
            "trend_r": [0.23],
            "trend_p": [0.01],
            "source_share_abzflux": [0.3],
            "source_share_product": [0.1],
            "n_cells": [123],
        }
    ).to_csv(comp / "metrics.csv", index=False)
    pd.DataFrame(
        {
            "product": ["inversions"],
            "zone": ["domain"],
            "first_year": [2001],
            "last_year": [2020],
            "abzflux_tg_c": [-400.0],
            "product_tg_c": [-800.0],
            "ratio": [2.0],
        }
    ).to_csv(comp / "budgets.csv", index=False)
    pm = xr.Dataset(
        {"mean_annual": (("product", "y", "x"), mess[None] * 2), "trend": (("product", "y", "x"), mess[None] / 50)},
        coords={"product": ["inversions"], "y": up.y.values, "x": up.x.values},
    )
    write_crs(pm, 6931).to_zarr(comp / "product_maps.zarr", mode="w", consolidated=False)


def _coarse(run):
    """RUN/coarse/budgets_annual.csv: the fine series shifted by a known 50 Tg C."""
    (run / "coarse").mkdir()
    a = pd.read_csv(run / "budgets_annual.csv")
    a.assign(tg_c=a.tg_c + 50).to_csv(run / "coarse" / "budgets_annual.csv", index=False)


def _sections(page: str) -> dict[str, str]:
    """id -> HTML of each figure/table block."""
    return {
        m.group(2): m.group(0)
        for m in re.finditer(r"<(figure|div class='table') id='([^']+)'>.*?</(figure|div)>", page, flags=re.DOTALL)
    }


@pytest.fixture(scope="module")
def full_report(study_run, shared_root):
    """(run view, report page): the report of the study run whose compare/ is replaced by one with
    known values; built once per pytest run and shared by the workers (read-only)."""

    def build(d: Path) -> None:
        run = _link_run(study_run[0], d / "run", exclude=("compare",))
        _synthetic_compare(run)
        _coarse(run)
        r = runner.invoke(app, ["report", str(run), "--quiet"])
        assert r.exit_code == 0, r.output

    key = hashlib.sha256(f"{study_run[0]}|".encode() + Path(__file__).read_bytes()).hexdigest()
    run = shared_build(shared_root, "report", key, build) / "run"
    return run, (run / "report.html").read_text()


def test_report_has_every_figure_and_table_and_images_decode(full_report):
    run, page = full_report
    blocks = _sections(page)
    figures = [
        "fig1",
        "fig2",
        "fig3",
        "fig4",
        "skill",
        "importance",
        "pdp_gpp",
        "pdp_reco",
        "pdp_nee",
        "fire_emissions",
        "uncertainty",
        "mess",
        "extrapolation",
        # Extended Data and Supplementary (tests/test_report_figs.py checks their values)
        "ed5",
        "ed6",
        "supp3",
        "supp4",
        "supp5",
        "supp13",
        "supp14",
        "supp15",
        "supp16",
        "supp17",
    ]
    tables = [
        "table1",
        "truth_table",
        "comparison_table",
        "comparison_budgets",
        "skill_table",
        "aoa_sd_table",
        "clusters_table",
        "mess_area_table",
    ]
    for fid in figures + tables:
        assert fid in blocks, fid
    for h in (
        "Fig. 1",
        "Fig. 2",
        "Fig. 3",
        "Fig. 4",
        "Model skill",
        "Fire",
        "Uncertainty",
        "Extrapolation",
        "Tables",
        "Extended Data",
        "Supplementary",
    ):
        assert f">{h}</h2>" in page, h
    # self-contained: no external reference at all
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)
    for fid in figures:
        b = blocks[fid]
        img = re.search(r"src='data:image/png;base64,([^']+)'", b).group(1)
        png = base64.b64decode(img, validate=True)
        assert png == (run / "report" / f"{fid}.png").read_bytes()
        arr = mpimg.imread(io.BytesIO(png), format="png")
        assert arr.ndim == 3 and arr.shape[0] > 200 and arr.shape[1] > 300
        assert arr[..., :3].std() > 0.05  # a drawing, not a blank canvas
        assert (run / "report" / f"{fid}.pdf").read_bytes()[:5] == b"%PDF-"
        cap = re.search(r"<figcaption>(.*?)</figcaption>", b, flags=re.DOTALL).group(1)
        assert len(cap) > 80
    # captions name data, period and units
    y0, y1 = R.RunData(run).years()
    assert f"{y0}–{y1}" in blocks["fig1"] and "g C m-2 yr-1" in blocks["fig1"]
    assert "Tg C yr-1" in blocks["fig2"] and "coarse model set" in blocks["fig2"] and "NEE + fire" in blocks["fig2"]
    assert "2001-2010 and 2011-2020" in blocks["fig3"] and "g C m-2 month-1" in blocks["fig3"]
    assert "inversions 2001–2020" in blocks["fig1"]  # the reference product panel and its years
    assert "threshold 0.42" in blocks["extrapolation"]
    # the MESS caption quotes the synthetic domain shares: 0.25 and 0.125 -> 25 % and 12 %
    assert "2001-2010 25 %, 2011-2020 12 %" in blocks["mess"]
    assert "0.61" in blocks["comparison_table"] and "-800" in blocks["comparison_budgets"]
    assert "Figures that failed" not in page


def test_report_draws_the_real_compare_stage_outputs(study_run, tmp_path):
    run = _link_run(study_run[0], tmp_path / "run")
    assert (run / "compare" / "extrapolation.zarr").exists()
    r = runner.invoke(app, ["report", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    page = (run / "report.html").read_text()
    blocks = _sections(page)
    for fid in (
        "mess",
        "extrapolation",
        "comparison_table",
        "comparison_budgets",
        "aoa_sd_table",
        "clusters_table",
        "mess_area_table",
    ):
        assert fid in blocks, fid
    assert "Figures that failed" not in page
    thr = xr.open_zarr(run / "compare" / "extrapolation.zarr", consolidated=False).aoa.attrs["threshold"]
    assert f"threshold {float(thr):.3g}" in blocks["extrapolation"]
    m = pd.read_csv(run / "compare" / "metrics.csv")
    assert f"{m.map_r.iloc[0]:.3g}" in blocks["comparison_table"]


def test_table1_and_truth_values_come_from_the_run(full_report):
    run, page = full_report
    t1 = pd.read_csv(run / "budgets" / "table1.csv")
    r = t1[(t1.group == "all") & (t1.flux == "nee") & (t1.season == "annual")].iloc[0]
    cell = f"{r.budget:.0f} ± {r.budget_sd:.0f}"
    assert cell in _sections(page)["table1"]


def test_optional_parts_are_left_out_without_their_inputs(study_run, tmp_path):
    run = _link_run(study_run[0], tmp_path / "run", exclude=("compare",))
    rd = R.RunData(run)
    (fig2,) = R.fig2_budgets(rd)
    R.plt.close(fig2.fig)
    assert "coarse" not in fig2.caption and "NEE + fire" in fig2.caption  # this twin has fire, no coarse set
    assert R.fig_extrapolation(rd) == []
    assert [i.id for i in R.tables(rd)] == ["table1", "truth_table"]


def test_site_mean_annual_uses_complete_years_only():
    # site a: 2001 complete (sum 12), 2002 complete (sum 24) -> 18; 2003 has 11 months -> ignored.
    # site b: only an incomplete year -> absent.
    rows = [("a", 2001, m, 1.0) for m in range(1, 13)] + [("a", 2002, m, 2.0) for m in range(1, 13)]
    rows += [("a", 2003, m, 100.0) for m in range(1, 12)] + [("b", 2001, m, 5.0) for m in range(1, 12)]
    sites = pd.DataFrame(rows, columns=["site_id", "year", "month", "nee"])
    got = R._site_mean_annual(sites)
    assert got.site_id.tolist() == ["a"] and got.nee.tolist() == [18.0]


def test_failing_figure_is_reported_and_run_untouched(study_run, tmp_path, monkeypatch):
    run = _link_run(study_run[0], tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    (run / "report.html").write_text("old")

    def broken(rd):
        raise RuntimeError("boom")

    monkeypatch.setattr(R, "FIGURES", (R.fig4_regions, broken))
    rep = R.write_report(run)
    assert rep.errors == [("broken", "RuntimeError: boom")]
    page = (run / "report.html").read_text()
    assert "Figures that failed" in page and "boom" in page and "id='fig4'" in page
    assert sorted(p.name for p in run.iterdir()) == sorted(before + ["report.html", "report"])
    assert not (run / "report.tmp").exists()
    # not a run: a clear error, nothing written
    with pytest.raises(R.InputError, match="budgets_annual.csv"):
        R.write_report(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_mess_classes_are_disjoint():
    m = np.array([-100, -80, -50, -20, -5, 0, 3, 5, 30, np.nan])
    got = R.mess_classes(m)
    np.testing.assert_array_equal(got[:-1], [0, 0, 1, 1, 2, 3, 3, 3, 4])
    assert np.isnan(got[-1])


def test_run_ends_with_the_report_and_a_failed_report_exits_3(study_run, fast_config, tmp_path, monkeypatch):
    import abzflux.runner as P

    # a path longer than the console is wide: it must still print whole (no hard line break in it)
    run = _link_run(study_run[0], tmp_path / ("run_" + "x" * 90))
    # the stages are done: only the ending (run_study's `finish`, with the run directory locked) is tested
    monkeypatch.setattr(P, "run_study", lambda *a, finish=None, **k: (finish and finish(), {})[1])
    calls = []

    def fake(run_dir, progress=None):
        calls.append(run_dir)
        return R.Report(run=run_dir, path=run_dir / "report.html", items=[R.Item("x", "s", "t", "c")])

    monkeypatch.setattr(R, "write_report", fake)
    r = runner.invoke(app, ["run", str(fast_config), "--out", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    assert calls == [run] and str(run / "report.html") in r.output
    r = runner.invoke(app, ["run", str(fast_config), "--out", str(run), "--quiet", "--no-report"])
    assert r.exit_code == 0 and len(calls) == 1

    def boom(run_dir, progress=None):
        raise MemoryError("out of memory")

    monkeypatch.setattr(R, "write_report", boom)
    r = runner.invoke(app, ["run", str(fast_config), "--out", str(run), "--quiet"])
    assert r.exit_code == 3, r.output  # every stage finished; the report did not
    assert "report failed" in r.output and "out of memory" in r.output
