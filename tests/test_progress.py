"""Progress of long loops (abzflux.progress): the log lines when the output is not a terminal,
the rich bars on a terminal, the pipeline's loops reporting progress; and the CLI's tables
at 80 and 120 columns (numbers whole, nothing cut). No timing asserts: the clocks are fake,
or the tests check formats only."""

from __future__ import annotations

import json
import logging
import re
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from abzflux import cli, progress
from abzflux.config import load_config
from abzflux.context import Context
from abzflux.predictors import training_rows
from abzflux.steps import STEPS

from conftest import absolute_config

LINE = re.compile(
    r"^(?P<label>.+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), (?P<rate>[0-9.e+]+|\?)/s, "
    r"ETA (?P<eta>\d\d:\d\d|\d+:\d\d:\d\d|--:--), elapsed (?P<elapsed>\d\d:\d\d|\d+:\d\d:\d\d)$"
)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "abzflux.progress"]


def test_clock_and_rate_formats():
    assert progress.clock(0) == "00:00"
    assert progress.clock(65) == "01:05"
    assert progress.clock(3725) == "1:02:05"  # from an hour on: h:mm:ss
    assert progress.clock(None) == "--:--"
    assert progress.clock(float("inf")) == "--:--"
    assert progress.rate_text(0.35123) == "0.351/s"
    assert progress.rate_text(12.44) == "12.4/s"
    assert progress.rate_text(1234.4) == "1234/s"  # no exponent
    assert progress.rate_text(None) == "?/s"


def test_log_lines_every_update_at_interval_zero(caplog):
    clock = FakeClock()
    up = progress.LogProgress("gpp: LOSO folds", every=0, now=clock)
    with caplog.at_level(logging.INFO, logger="abzflux"):
        for i in range(4):
            clock.t += 2.0  # a fold every 2 s
            up(i + 1, 4)
        up(None, None)
    lines = records(caplog)
    assert len(lines) == 4  # one per update, none repeated at the end
    parsed = [LINE.match(s) for s in lines]
    assert all(parsed), lines
    assert [m["done"] for m in parsed] == ["1", "2", "3", "4"]
    assert {m["total"] for m in parsed} == {"4"}
    assert [m["pct"] for m in parsed] == ["25", "50", "75", "100"]
    # 1 fold in the first 2 s: 0.5/s, 3 left -> 6 s; then 0.5/s from the first update on
    assert lines[0] == "gpp: LOSO folds: 1/4 (25%), 0.5/s, ETA 00:06, elapsed 00:02"
    assert lines[1] == "gpp: LOSO folds: 2/4 (50%), 0.5/s, ETA 00:04, elapsed 00:04"
    assert lines[3] == "gpp: LOSO folds: 4/4 (100%), 0.5/s, ETA 00:00, elapsed 00:08"


def test_log_lines_at_most_every_interval(caplog):
    clock = FakeClock()
    up = progress.LogProgress("upscaling tile-years", every=30, now=clock)
    with caplog.at_level(logging.INFO, logger="abzflux"):
        for i in range(10):
            clock.t += 10.0  # a unit every 10 s, 100 s in all
            up(i + 1, 10)
        up(None, None)
    lines = records(caplog)
    # a line at 30, 60 and 90 s, and the completed loop's last line (100 s)
    assert [LINE.match(s)["done"] for s in lines] == ["3", "6", "9", "10"]
    assert LINE.match(lines[0])["elapsed"] == "00:30"
    assert LINE.match(lines[0])["eta"] == "01:10"  # 7 left at 0.1/s
    assert LINE.match(lines[-1])["elapsed"] == "01:40"


def test_a_short_loop_logs_nothing(caplog):
    clock = FakeClock()
    up = progress.LogProgress("pdp", every=30, now=clock)
    with caplog.at_level(logging.INFO, logger="abzflux"):
        for i in range(5):
            clock.t += 1.0
            up(i + 1, 5)
        up(None, None)
    assert records(caplog) == []


def test_resumed_work_does_not_inflate_the_rate():
    clock = FakeClock()
    tr = progress.Tracker("upscaling tile-years", now=clock)
    clock.t = 0.001
    tr.update(50, 100)  # 50 chunks resumed from an earlier run, reported at once
    clock.t = 10.0
    tr.update(52, 100)  # then 2 chunks in 10 s
    assert tr.rate == pytest.approx(2 / (10.0 - 0.001))
    assert progress.clock(tr.eta) == "04:00"  # 48 left at 0.2/s


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV_SECONDS, raising=False)
    assert progress.log_interval() == progress.DEFAULT_SECONDS == 30
    monkeypatch.setenv(progress.ENV_SECONDS, "0")
    assert progress.log_interval() == 0
    monkeypatch.setenv(progress.ENV_SECONDS, "5.5")
    assert progress.log_interval() == 5.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(progress.ENV_SECONDS, bad)
        with pytest.raises(ValueError, match=progress.ENV_SECONDS):
            progress.log_interval()


def test_a_non_terminal_console_gets_log_lines(caplog):
    f = progress.factory(Console(file=StringIO(), force_terminal=False), every=0)
    up = f("calibration twins")
    assert isinstance(up, progress.LogProgress)
    with caplog.at_level(logging.INFO, logger="abzflux"):
        up(1, 5)
    assert LINE.match(records(caplog)[0])["label"] == "calibration twins"
    silent = progress.factory(Console(file=StringIO(), force_terminal=True), quiet=True)("x")
    with caplog.at_level(logging.INFO, logger="abzflux"):
        silent(1, 5)
    assert len(records(caplog)) == 1


def test_a_terminal_gets_bars_with_count_rate_and_eta():
    buf = StringIO()
    f = progress.factory(Console(file=buf, force_terminal=True, width=100))
    outer, inner = f("calibration twins"), f("gpp: LOSO folds, mtry 2,9")
    outer(0, 5)
    inner(3, 30)  # nested loops share one live display
    inner(7, 30)
    board = f.__self__  # the live display, refreshed as its timer would
    board.progress.refresh()
    inner(None, None)
    outer(1, 5)
    board.progress.refresh()
    outer(None, None)
    assert not board.progress.live.is_started  # stopped with the last loop
    # two factories on one console (the run's stages, then the report) share its display
    con = Console(file=StringIO(), force_terminal=True)
    f1, f2 = progress.factory(con), progress.factory(con)
    assert f1.__self__ is f2.__self__
    a, b = f1("stage"), f2("report figures")
    a(1, 2)
    b(1, 3)
    assert len(f1.__self__.progress.tasks) == 2  # both bars in one live region
    a(None, None)
    b(None, None)
    assert not f1.__self__.progress.live.is_started
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "gpp: LOSO folds, mtry 2,9" in text and "calibration twins" in text
    assert "7/30" in text and "1/5" in text
    assert re.search(r"ETA \d\d:\d\d", text)
    assert re.search(r"[0-9.e+]+/s", text)


def test_the_cli_logs_progress_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(cli.LOGGER, "level", logging.INFO)  # the CLI's default level
    monkeypatch.setattr(cli, "console", Console(file=StringIO(), force_terminal=False))
    monkeypatch.setenv(progress.ENV_SECONDS, "0")
    assert isinstance(cli._progress_factory(False)("x"), progress.LogProgress)
    monkeypatch.setattr(cli, "console", Console(file=StringIO(), force_terminal=True))
    assert not isinstance(cli._progress_factory(False)("x"), progress.LogProgress)
    assert cli._progress_factory(True)("x") is progress._silent  # --quiet
    monkeypatch.setattr(cli.LOGGER, "level", logging.WARNING)  # abzflux --quiet CMD
    assert cli._progress_factory(False)("x") is progress._silent


TINY_FOREST = (
    "[forest]\nn_estimators = 20\nmtry_grid = [2, 9]\nimportance_repeats = 2\npdp_points = 5\n"
    "pdp_rows = 100\nn_bootstrap = 2\n"
)


def test_the_pipeline_logs_progress_of_its_long_loops(tiny_twin, tmp_path, caplog):
    text = absolute_config((tiny_twin / "config.toml").read_text(), tiny_twin)
    (tmp_path / "cfg.toml").write_text(text[: text.index("[forest]")] + TINY_FOREST)
    cfg = load_config(tmp_path / "cfg.toml")
    ctx = Context(cfg=cfg, out=tmp_path / "run", progress_factory=progress.factory(None, every=0))
    ctx.out.mkdir()
    spec = {st.name: st for st in STEPS}
    with caplog.at_level(logging.INFO, logger="abzflux"):
        for name in ("sites", "forest", "interpret", "bootstrap", "upscale"):
            spec[name].run(ctx)
    lines = [LINE.match(s) for s in records(caplog)]
    assert all(lines)
    last = {}
    for m in lines:
        last[m["label"]] = (int(m["done"]), int(m["total"]))
    table = pd.read_parquet(ctx.layout.sites)
    n_pred = len(ctx.predictor_set.names)
    for flux in ("gpp", "reco", "nee"):
        n_sites = training_rows(table, flux, ctx.predictor_set).site_id.nunique()
        assert last[f"{flux}: LOSO folds, mtry 2,9"] == (n_sites, n_sites)  # one fold per site
        assert last[f"{flux}: importance, 2 repeats"] == (2 * n_pred, 2 * n_pred)
        assert last[f"{flux}: partial dependence"] == (n_pred, n_pred)
        assert last[f"{flux}: bootstrap forests"] == (2, 2)
    done, total = last["upscaling tile-years"]
    assert done == total >= 2  # at least one tile in each of the two years


# ------------------------------------------------------------------------------ tables


def _render(width: int, fn, *args) -> str:
    con = Console(width=width, record=True, file=StringIO(), force_terminal=False)
    orig = cli.console
    cli.console = con
    try:
        fn(*args)
    finally:
        cli.console = orig
    return con.export_text()


TRUTH = [
    # flux, zone, estimate, truth, sd: the numbers of issue 24 and wide negatives
    ("gpp", "domain", 22739.4, 22701.25, 102.9),
    ("gpp", "north_america", 11489.1, 11437.5, 27.3),
    ("reco", "permafrost", 11138.0, 10497.3, 88.8),
    ("nee", "domain", -12381.0, -10940.3, 50.1),
    ("nee (reco-gpp)", "north_america", -1023.8, -940.3, 69.5),
    ("nee_fire", "eurasia", -165.7, -648.9, 43.5),
]


def _summary_run(tmp_path: Path) -> Path:
    rows = [
        {
            "flux": f,
            "zone": z,
            "estimate": e,
            "truth": t,
            "sd": sd,
            "error": e - t,
            "rel_error": (e - t) / abs(t),
            "trend": -123.4,
            "trend_truth": 1234.5,
        }
        for f, z, e, t, sd in TRUTH
    ]
    s = {
        "truth": rows,
        "uncertainty": "blocks+extrap",
        "nee_map_pearson_r": 0.73,
        "compare": {
            "products": [
                {
                    "product": "twin inversion-like",
                    "first_year": 2001,
                    "last_year": 2020,
                    "fire_subtracted": True,
                    "map_r": 0.73,
                    "trend_r": -0.06,
                    "source_share_abzflux": 0.31,
                    "source_share_product": 0.21,
                }
            ]
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(s))
    return tmp_path


def _check_fits(text: str, width: int, numbers: list[str], path: Path | None = None) -> None:
    # a file's path is printed whole on its own line (soft-wrapped by the terminal, not cut)
    lines = [s for s in text.splitlines() if path is None or str(path) not in s]
    wide = [s for s in lines if len(s.rstrip()) > width]
    assert not wide, wide
    assert "…" not in text
    tokens = set(text.split())
    for n in numbers:
        assert n in tokens, f"{n} not printed whole"


@pytest.mark.parametrize("width", [80, 120])
def test_the_summary_table_fits_and_prints_every_number_whole(tmp_path, width):
    run = _summary_run(tmp_path)
    text = _render(width, cli._print_summary, run)
    numbers = []
    for _, _, e, t, sd in TRUTH:
        numbers += [f"{e:.1f}", f"{t:.1f}", f"{sd:.1f}", f"{e - t:+.1f}", f"{100 * (e - t) / abs(t):+.1f}"]
    numbers += ["-123.4", "+1234.5", "22739.4", "0.73", "-0.06", "31%", "21%", "2001-2020"]
    _check_fits(text, width, numbers, run)
    assert "north" in text and "america" in text  # a long zone name wraps instead


@pytest.mark.parametrize("width", [80, 120])
def test_the_budgets_table_without_truth_fits(tmp_path, width):
    s = {"budgets": [{"flux": "nee (reco-gpp)", "zone": "north_america", "tg_c": -12345.6, "density": 1234.5}]}
    (tmp_path / "summary.json").write_text(json.dumps(s))
    _check_fits(_render(width, cli._print_summary, tmp_path), width, ["-12345.6", "1234.5"], tmp_path)


@pytest.mark.parametrize("width", [80, 120])
def test_a_table_with_many_wide_numbers_fits(width):
    # the sensitivity table's shape: two text columns and eight numbers
    def show():
        t = cli._table(
            "leave-one-site-out skill by variant (/a/long/path/to/run/sensitivity/sensitivity.csv)",
            [("variant", False), ("flux", False)]
            + [(c, True) for c in ("rows", "sites", "pre-\ndictors", "mtry", "R²", "RMSE", "MAE", "bias")],
        )
        t.add_row(
            "no_disturbed_sites_or_factors", "gpp", "123456", "1234", "17", "9", "0.71", "-1234.5", "98.7", "+0.3"
        )
        cli.console.print(t)

    _check_fits(_render(width, show), width, ["123456", "1234", "17", "9", "0.71", "-1234.5", "98.7", "+0.3"])


@pytest.mark.parametrize("width", [80, 120])
def test_the_domain_table_fits(width, monkeypatch):
    from typer.testing import CliRunner

    con = Console(width=width, record=True, file=StringIO())
    monkeypatch.setattr(cli, "console", con)
    r = CliRunner().invoke(cli.app, ["domain", "--resolution-km", "100"])
    assert r.exit_code == 0, r.output
    text = con.export_text()
    assert re.search(r"domain\s+\d+\.\d\d", text)
    _check_fits(text, width, [])


def test_a_bar_with_a_long_label_fits_80_columns():
    buf = StringIO()
    f = progress.factory(Console(file=buf, force_terminal=True, width=80))
    up = f("prepare predictors/vegetation_type_with_a_long_name: blocks")
    up(38, 12000)
    f.__self__.progress.refresh()
    up(None, None)
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).split("\r")
    frame = [fr for fr in frames if "12000" in fr][-1]
    assert "38/12000" in frame and "prepare predictors/" in frame and "…" in frame  # the label is shortened
    assert re.search(r"ETA (\d\d:\d\d|--:--)", frame)
    assert all(len(s.rstrip()) <= 80 for s in frame.splitlines())
