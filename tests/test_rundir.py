"""A safe run directory (docs/reliability.md, issue 19): a run deletes or replaces only what
abzflux wrote (the ownership manifest), one process at a time holds a run directory (the lock),
and a location that cannot be written is one clear error with nothing partial left behind.

Every case is refused before any work starts (or fails in the first stage), so each takes
seconds; one finished run of a tiny twin (300-km grid, two years, 10-tree forests) is copied
for the cases that need a finished run directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from abzflux import rundir
from abzflux.cli import app
from abzflux.config import load_config
from abzflux.runner import clean_run_dir, file_hash, output_digest, run_study

from conftest import shared_build

# Every test here writes a run directory with the CLI or the stages (make test-fast skips them).
pytestmark = pytest.mark.slow

TINY_FOREST = """[forest]
n_estimators = 10
mtry = 5
importance_repeats = 1
pdp_points = 3
pdp_rows = 50
n_bootstrap = 2
"""


def _config(twin: Path, path: Path, **inputs) -> Path:
    """The twin's config with absolute input paths and tiny forests; ``inputs`` replace paths."""
    text = (twin / "config.toml").read_text()
    text = text[: text.index("[forest]")] + TINY_FOREST
    for k in ("sites.csv", "predictors.zarr", "zones.nc", "fire.zarr", "truth.nc", "ref_inversion.nc"):
        text = text.replace(f'"{k}"', json.dumps(str(twin / k)))
    for k, v in inputs.items():
        text = text.replace(json.dumps(str(twin / {"fire": "fire.zarr", "sites": "sites.csv"}[k])), json.dumps(str(v)))
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def shared_run(shared_root, tiny_twin):
    """A directory holding ``config.toml`` (the tiny twin with tiny forests) and ``run/``, a
    finished run of it; built once per pytest run and shared by the workers: read-only."""

    def build(d: Path) -> None:
        run_study(load_config(_config(tiny_twin, d / "config.toml")), d / "run")

    # the twin's path holds its key; this file's bytes key the config and the run
    key = hashlib.sha256(f"{tiny_twin}|".encode() + Path(__file__).read_bytes()).hexdigest()
    return shared_build(shared_root, "rundir-run", key, build)


@pytest.fixture(scope="module")
def tiny(shared_run):
    return shared_run / "config.toml"


@pytest.fixture(scope="module")
def finished(shared_run):
    return shared_run / "run"


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    return out


def _cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output


def _snapshot(d: Path) -> dict:
    """Every file under ``d`` (the lock file excepted) with its bytes' digest."""
    return {str(p.relative_to(d)): file_hash(p) for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- ownership
def test_user_notes_in_an_output_directory_are_refused_before_any_work(tiny, tmp_path):
    """A new run directory holding the user's models/README.txt: the run would replace models/."""
    out = tmp_path / "run"
    (out / "models").mkdir(parents=True)
    (out / "models" / "README.txt").write_text("my notes")
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2, msg
    assert f"{out / 'models'}: a directory that abzflux did not write" in msg and "another --out" in msg, msg
    assert (out / "models" / "README.txt").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == ["models"]  # no run.json, stages, manifest or lock


def test_a_file_added_inside_a_finished_runs_output_is_refused_also_by_restart(tiny, finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "models" / "README.txt").write_text("my notes")
    before = _snapshot(out)
    for extra in ((), ("--restart",)):
        code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report", *extra)
        assert code == 2, msg
        assert f"{out / 'models' / 'README.txt'}: a file that abzflux did not write, inside its output models/" in msg
        assert _snapshot(out) == before
    # the user's own report/ folder: `abzflux report` refuses it too
    (out / "models" / "README.txt").unlink()
    (out / "report").mkdir()
    (out / "report" / "draft.docx").write_text("my paper")
    code, msg = _cli("report", out, "--quiet")
    assert code == 2 and f"{out / 'report'}: a directory that abzflux did not write" in msg, msg
    assert (out / "report" / "draft.docx").read_text() == "my paper" and not (out / "report.html").exists()


def test_an_input_at_an_output_location_is_refused_and_one_elsewhere_is_untouched(tiny, tiny_twin, finished, tmp_path):
    twin = tiny_twin
    out = _copy(finished, tmp_path)
    # the fire store the config names lies in DIR/fire/, which the fire stage replaces
    shutil.rmtree(out / "fire")
    shutil.copytree(twin / "fire.zarr", out / "fire" / "gfed.zarr")
    before = _snapshot(out)
    cfg = _config(twin, tmp_path / "fire_inside.toml", fire=out / "fire" / "gfed.zarr")
    for extra in ((), ("--restart",)):
        code, msg = _cli("run", cfg, "--out", out, "--quiet", "--no-report", *extra)
        assert code == 2, msg
        assert (
            f"{out / 'fire' / 'gfed.zarr'}: [inputs.fire] input fire lies at an output location of the run "
            f"({out / 'fire'})"
        ) in msg, msg
        assert _snapshot(out) == before
    # a site table elsewhere inside the run directory: accepted (the same contents: every stage is
    # skipped) and left untouched
    out2 = _copy(finished, tmp_path / "b")
    (out2 / "inputs").mkdir()
    shutil.copy(twin / "sites.csv", out2 / "inputs" / "sites.csv")
    rec = run_study(
        load_config(_config(twin, tmp_path / "sites_inside.toml", sites=out2 / "inputs" / "sites.csv")), out2
    )
    assert all(s["skipped"] for s in rec["stages"].values())
    assert file_hash(out2 / "inputs" / "sites.csv") == file_hash(twin / "sites.csv")


def test_restart_deletes_only_recorded_paths(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "geotiff").mkdir()  # not written by abzflux here (no export was made): kept
    (out / "geotiff" / "nee_2019.tif").write_text("my own map")
    (out / "upscaled.nc").write_text("my own file")
    owned = set(json.loads((out / rundir.MANIFEST).read_text())["paths"])
    assert {"models", "upscaled.zarr", "stages", "run.json", "summary.md"} <= owned and "notes.txt" not in owned
    removed = clean_run_dir(out)
    assert {p.name for p in removed} == owned
    assert sorted(p.name for p in out.iterdir()) == ["geotiff", "notes.txt", "upscaled.nc"]
    assert (out / "geotiff" / "nee_2019.tif").read_text() == "my own map"


def test_a_directory_of_an_abzflux_without_manifests_resumes_and_keeps_foreign_files(tiny, finished, tmp_path):
    """run.json + stages/ but no manifest (abzflux before issue 19): the outputs its markers name,
    checked against their digests, are abzflux's; a file added to one of them is not."""
    out = _copy(finished, tmp_path)
    (out / rundir.MANIFEST).unlink()
    readme = out / "models" / "README.txt"
    readme.write_text("my notes")
    os.utime(readme, (time.time() + 60, time.time() + 60))  # written after the forest stage's marker
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report", "--restart")
    assert code == 2 and f"{readme}: a file that abzflux did not write" in msg, msg
    assert not (out / rundir.MANIFEST).exists() and readme.exists()
    # a changed output file (its digest no longer reproduces): named, nothing touched
    readme.unlink()
    (out / "trends" / "site_trends.csv").write_text("edited")
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2 and f"{out / 'trends'}: its files do not reproduce the digest" in msg, msg
    shutil.copy(finished / "trends" / "site_trends.csv", out / "trends" / "site_trends.csv")
    rec = run_study(load_config(tiny), out)  # resumed: every stage skipped, manifest written
    assert all(s["skipped"] for s in rec["stages"].values())
    paths = json.loads((out / rundir.MANIFEST).read_text())["paths"]
    assert sorted(paths["models"]) == sorted(rundir.tree_files(out / "models"))
    # the legacy --restart clean-up, too, deletes only what the markers name
    (out / rundir.MANIFEST).unlink()
    (out / "models" / "README.txt").write_text("my notes")
    os.utime(out / "models" / "README.txt", (time.time() + 60, time.time() + 60))
    clean_run_dir(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["models", "models/README.txt"]


# --------------------------------------------------------------------------- the lock
def test_a_second_run_is_refused_naming_the_holder_and_touches_nothing(tiny, finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = _snapshot(out)
    lock = rundir.RunLock(out).acquire()  # held by this process, through another open file
    try:
        holder = json.loads((out / rundir.LOCK).read_text())
        for args in (
            ("run", tiny, "--out", out, "--quiet", "--no-report"),
            ("report", out, "--quiet"),
            ("export", out, "--vars", "nee"),
        ):
            code, msg = _cli(*args)
            assert code == 2, msg
            assert (
                f"{out}: is in use by another abzflux process (pid {os.getpid()} on host "
                f"{socket.gethostname()}, since {holder['since']}"
            ) in msg, msg
        assert {k: v for k, v in _snapshot(out).items() if k != rundir.LOCK} == before
    finally:
        lock.release()
    assert not (out / rundir.LOCK).exists()
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")  # free again: all stages skipped
    assert code == 0, msg


def test_a_lock_left_by_a_killed_process_is_recovered(tiny, finished, tmp_path, caplog):
    out = _copy(finished, tmp_path)
    code = (
        f"from abzflux.rundir import RunLock; RunLock({str(out)!r}).acquire(); print('held', flush=True); "
        "import time; time.sleep(600)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirInUse, match=f"pid {p.pid} on host"):
            run_study(load_config(tiny), out)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert json.loads((out / rundir.LOCK).read_text())["pid"] == p.pid  # the file stays, its flock is gone
    with caplog.at_level("WARNING", logger="abzflux.rundir"):
        rec = run_study(load_config(tiny), out)
    assert all(s["skipped"] for s in rec["stages"].values())
    assert "took over a stale lock" in caplog.text and f'"pid": {p.pid}' in caplog.text
    assert not (out / rundir.LOCK).exists()


# --------------------------------------------------------------------------- file-system failures
def test_out_naming_a_file_or_under_a_file_is_one_clear_error(tiny, tmp_path):
    f = tmp_path / "results.csv"
    f.write_text("a,b\n")
    code, msg = _cli("run", tiny, "--out", f, "--quiet", "--no-report")
    assert code == 2 and f"{f}: is a file, not a directory; expected a run directory" in msg, msg
    code, msg = _cli("run", tiny, "--out", f / "run", "--quiet", "--no-report")
    assert code == 2 and f"{f}: is a file, not a directory at a parent of {f / 'run'}" in msg, msg
    assert f.read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def _fail_in_sites_stage(monkeypatch, err: int):
    """The first stage's writer fails after writing part of its temporary file."""
    real = pd.DataFrame.to_parquet

    def broken(self, path, *a, **k):
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    return real


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_no_permission_mid_run_marks_the_run_failed_and_leaves_no_tmp(tiny, tmp_path, monkeypatch, err):
    out = tmp_path / "missing_parent" / "run"  # a missing parent is created (documented)
    _fail_in_sites_stage(monkeypatch, err)
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2, msg
    name = errno.errorcode[err]
    assert f"{out / 'sites.parquet.tmp'}: cannot be written: {os.strerror(err)} ({name}) at stage sites" in msg, msg
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "failed" and rec["stage"] == "sites" and os.strerror(err) in rec["error"]
    assert [p.name for p in out.rglob("*.tmp")] == [] and not (out / "sites.parquet").exists()
    assert not (out / rundir.LOCK).exists()


def test_a_read_only_location_is_one_clear_error(tiny, tmp_path, monkeypatch):
    out = tmp_path / "ro" / "run"
    (tmp_path / "ro").mkdir()
    real_open = os.open

    def no_write(path, flags, *a, **k):  # what a read-only directory does to a new file
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", no_write)
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2, msg
    assert (
        f"{out / rundir.LOCK}: cannot be written: Permission denied (EACCES) at the start, before anything was written"
        in msg
    )
    assert [p.name for p in out.iterdir()] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_a_read_only_directory_by_its_mode(tiny, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        code, msg = _cli("run", tiny, "--out", tmp_path / "ro" / "run", "--quiet", "--no-report")
        assert code == 2 and "Permission denied (EACCES)" in msg, msg
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_export_failures_leave_no_tmp(finished, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    (tmp_path / "exdir").mkdir()
    code, msg = _cli("export", out, "--out", tmp_path / "exdir")
    assert code == 2 and f"{tmp_path / 'exdir'}: is a directory; expected --out naming a NetCDF file" in msg, msg
    code, msg = _cli("export", out, "--out", tmp_path / "nowhere" / "f.nc")
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such directory" in msg, msg

    def full(self, path, *a, **k):
        Path(path).write_bytes(b"\x89HDF partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full)
    code, msg = _cli("export", out, "--vars", "nee")
    assert code == 2 and f"{out / 'upscaled.nc.tmp'}: cannot be written: No space left on device (ENOSPC)" in msg, msg
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == [] and not (out / "upscaled.nc").exists()
    # the default export path over a file abzflux did not write: refused
    monkeypatch.undo()
    (out / "upscaled.nc").write_text("my own file")
    code, msg = _cli("export", out, "--vars", "nee")
    assert code == 2 and f"{out / 'upscaled.nc'}: a file that abzflux did not write" in msg, msg
    assert (out / "upscaled.nc").read_text() == "my own file"


def test_manifest_tree_hash_is_the_pipelines_digest(finished):
    """Adopting an old run directory relies on tree_hash reproducing the markers' digests."""
    for o in ("models", "budgets", "upscaled.zarr"):
        assert rundir.tree_hash(finished / o, rundir.tree_files(finished / o)) == file_hash(finished / o)
    assert output_digest(finished)  # the manifest and lock are not outputs
    assert not any(k.startswith("abzflux") for k in output_digest(finished))


def test_a_foreign_file_at_the_lock_files_name_is_not_overwritten(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK).write_text("the user's own notes")
    (tmp_path / "target.txt").write_text("keep me")
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2 and f"{out / rundir.LOCK}: a file that abzflux did not write" in msg, msg
    assert (out / rundir.LOCK).read_text() == "the user's own notes"
    (out / rundir.LOCK).unlink()
    (out / rundir.LOCK).symlink_to(tmp_path / "target.txt")
    code, msg = _cli("run", tiny, "--out", out, "--quiet", "--no-report")
    assert code == 2 and f"{out / rundir.LOCK}: a symbolic link that abzflux did not write" in msg, msg
    assert (tmp_path / "target.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == [rundir.LOCK]


def test_a_file_system_without_locks_runs_unprotected_with_a_warning(tiny, finished, tmp_path, monkeypatch, caplog):
    import fcntl

    out = _copy(finished, tmp_path)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="abzflux.rundir"):
        rec = run_study(load_config(tiny), out)
    assert all(s["skipped"] for s in rec["stages"].values())
    assert "does not support locks (No locks available)" in caplog.text and not (out / rundir.LOCK).exists()


def test_a_report_that_runs_out_of_space_leaves_no_tmp(finished, tmp_path, monkeypatch):
    import abzflux.report as R

    out = _copy(finished, tmp_path)

    def full(*a, **k):  # the figures are written into report.tmp/, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.tmp" / "report.html.tmp"))

    monkeypatch.setattr(R, "render_html", full)
    code, msg = _cli("report", out, "--quiet")
    assert code == 2 and "report.html.tmp: cannot be written: No space left on device (ENOSPC) at the report" in msg, (
        msg
    )
    assert not (out / "report.tmp").exists() and not (out / "report.html").exists()
