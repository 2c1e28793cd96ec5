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
