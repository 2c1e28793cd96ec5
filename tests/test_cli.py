"""The command line: every command listed, validation exits cleanly or with a named error."""

from __future__ import annotations

from typer.testing import CliRunner

from abzflux.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("twin", "run", "demo", "validate", "domain", "report"):
        assert cmd in r.output


def test_validate_ok_and_bad(twin_dir, tmp_path):
    r = runner.invoke(app, ["validate", str(twin_dir / "config.toml")])
    assert r.exit_code == 0, r.output
    assert "ok" in r.output
    bad = tmp_path / "config.toml"
    bad.write_text((twin_dir / "config.toml").read_text().replace("[forest]", "[forest]\nntree = 5"))
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "forest.ntree" in r.output and "unknown key" in r.output


def test_domain_command_prints_area():
    r = runner.invoke(app, ["domain", "--resolution-km", "50"])
    assert r.exit_code == 0
    assert "20.35" in r.output
    r = runner.invoke(app, ["domain", "--resolution-km", "8"])  # the paper's coarse grid: remapped
    assert r.exit_code == 0 and "20.35" in r.output
    r = runner.invoke(app, ["domain", "--resolution-km", "0"])
    assert r.exit_code == 2 and "must be positive" in r.output


def test_log_records_off_a_terminal_are_one_line_each(tmp_path):
    """In a log file (no terminal) a long record, such as a progress line, is written whole on one
    line with its time and level, not wrapped at the console's 80 columns."""
    import io
    import logging

    from rich.console import Console

    from abzflux import cli

    old, old_handlers = cli.console, list(cli.LOGGER.handlers)
    buf = io.StringIO()
    cli.console = Console(file=buf, width=80, force_terminal=False)
    try:
        cli._setup_logging(logging.INFO)
        msg = "gpp: LOSO folds, mtry 5: 17/154 (11%), 9.17/s, ETA 00:15, elapsed 00:02 " + "x" * 60
        logging.getLogger("abzflux.test").info(msg)
        handlers = [type(h).__name__ for h in cli.LOGGER.handlers]
    finally:
        cli.console = old
        cli.LOGGER.handlers[:] = old_handlers
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80, lines
    assert lines[0].endswith(msg) and " INFO " in lines[0]
    assert handlers.count("_LineHandler") == 1 and "_ConsoleHandler" not in handlers
