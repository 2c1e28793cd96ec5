"""Crash safety and determinism of whole runs (docs/reliability.md).

A real ``abzflux run`` on a tiny twin is killed with SIGKILL at several points (during the
forests, in the middle of upscaling, during the trends, and at a seeded random time), restarted
each time (once on a dask.distributed LocalCluster), and must end with outputs byte-identical to
an uninterrupted run made in this process with another thread count. A run directory holding
outputs of another config or other inputs is refused before anything is written, and
``--restart`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numba
import pandas as pd
import pytest
from typer.testing import CliRunner

from abzflux.cli import app
from abzflux.config import Config, load_config
from abzflux.errors import RunDirConflict
from abzflux.runner import NO_OUTPUT_EFFECT, clean_run_dir, file_hash, output_digest, output_keys, run_study
from abzflux.twin import TwinSpec, make_twin

from conftest import shared_build

TINY = TwinSpec(resolution_km=300, first_year=2001, last_year=2003, seed=448, n_sites=30, n_site_months=800)
TINY_FOREST = """[forest]
n_estimators = 20
mtry = 5
importance_repeats = 2
pdp_points = 5
pdp_rows = 100
n_bootstrap = 2
"""
N_CHUNKS = 12  # 300-km grid (27 x 30 cells), tile 16: 4 tiles with land x 3 years


def _write_config(twin: Path, path: Path, forest: str = TINY_FOREST, sites: Path | None = None) -> Path:
    """The twin's config with absolute input paths, tiny forests and 16-cell tiles."""
    text = (twin / "config.toml").read_text()
    text = text[: text.index("[forest]")] + forest
    for k in ("predictors.zarr", "zones.nc", "fire.zarr", "truth.nc", "ref_inversion.nc", "ref_process.nc"):
        text = text.replace(f'"{k}"', f'"{twin / k}"')
    text = text.replace('"sites.csv"', f'"{sites or twin / "sites.csv"}"')
    path.write_text(text.replace("[run]\n", "[run]\ntile = 16\n"))
    return path


@pytest.fixture(scope="module")
def tiny(shared_root, code_key):
    """The tiny twin's config (built once per pytest run and shared by the workers: read-only)."""

    def build(d: Path) -> None:
        make_twin(d / "twin", TINY)
        _write_config(d / "twin", d / "config.toml")

    key = hashlib.sha256(f"{code_key}|{TINY!r}|{TINY_FOREST}".encode()).hexdigest()
    return shared_build(shared_root, "resume-twin", key, build) / "config.toml"


def _start(cfg: Path, out: Path, log: Path, *extra: str, threads: str = "1") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "abzflux.cli", "run", str(cfg), "--out", str(out), "--quiet", "--no-report", *extra]
    env = dict(os.environ, NUMBA_NUM_THREADS=threads)
    with open(log, "ab") as fh:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def _kill_when(proc: subprocess.Popen, log: Path, reached, what: str) -> None:
    """SIGKILL the run's whole process group as soon as ``reached()``."""
    deadline = time.time() + 300
    while not reached():
        assert proc.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
        assert time.time() < deadline, f"{what} not reached"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _nothing_half_done(out: Path) -> None:
    """After a kill: every stage marker's outputs exist and are byte for byte what the marker
    recorded when the stage finished (a marker is never beside a half-written output)."""
    for m in (out / "stages").glob("*.json"):
        rec = json.loads(m.read_text())
        assert all((out / o).exists() for o in rec["outputs"]), m.name
        for o, d in rec["digest"].items():
            assert file_hash(out / o) == d, (m.name, o)


@pytest.fixture(scope="module")
def reference(tiny, shared_root):
    """An uninterrupted run in a pytest process (numba's default threads: one per core), shared
    by the workers: read-only."""

    def build(d: Path) -> None:
        run_study(load_config(tiny), d / "run")

    key = hashlib.sha256(str(tiny.parent).encode()).hexdigest()  # the twin's directory holds its key
    return shared_build(shared_root, "resume-ref", key, build) / "run"


@pytest.mark.slow
def test_killed_at_several_points_and_restarted_matches_uninterrupted(tiny, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    shutil.copytree(reference, out)  # a finished run of another config: refused, then --restart
    (out / "notes.txt").write_text("the user's own file")
    other = _write_config(tiny.parent / "twin", tmp_path / "other.toml", TINY_FOREST.replace("= 20", "= 21"))
    before = output_digest(out)
    r = CliRunner().invoke(
        app, ["run", str(other), "--out", str(out), "--quiet", "--no-report"], env={"COLUMNS": "250"}
    )
    assert r.exit_code == 2 and "forest.n_estimators: 20 -> 21" in r.output and "--restart" in r.output, r.output
    assert output_digest(out) == before

    # 1. during the forests (after --restart deleted the previous outputs)
    p = _start(tiny, out, log, "--restart")
    _kill_when(p, log, lambda: (out / "models.tmp").exists(), "the forest stage")
    assert not (out / "stages" / "forest.json").exists() and not (out / "upscaled.zarr").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    _nothing_half_done(out)
    # 2. in the middle of upscaling, this time with the CV folds and chunks on a 2-worker LocalCluster
    parts = out / "upscale.partial" / "parts"
    p = _start(tiny, out, log, "--scheduler", "local")
    _kill_when(p, log, lambda: parts.exists() and len(list(parts.glob("*.npz"))) >= 4, "upscaling")
    assert 4 <= len(list(parts.glob("*.npz"))) < N_CHUNKS and not (out / "upscaled.zarr").exists()
    _nothing_half_done(out)
    # 3. during the trends
    p = _start(tiny, out, log)
    _kill_when(p, log, lambda: (out / "trends.tmp").exists(), "the trends stage")
    assert not (out / "stages" / "trends.json").exists() and (out / "stages" / "budgets.json").exists()
    _nothing_half_done(out)
    # 4. at a random time (seeded)
    p = _start(tiny, out, log)
    delay = random.Random(10).uniform(1.0, 10.0)
    t0 = time.time()
    _kill_when(p, log, lambda: time.time() - t0 > delay, f"{delay:.1f} s")
    _nothing_half_done(out)
    # to completion
    _finish(_start(tiny, out, log), log)

    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old")) and not (out / "upscale.partial").exists()
    got, want = output_digest(out), output_digest(reference)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert len(want) > 300  # every table, map, model and store chunk of every stage
    a, b = (json.loads((d / "run.json").read_text()) for d in (out, reference))
    assert a["status"] == b["status"] == "complete" and a["output_digest"] == b["output_digest"]
    assert a["environment"]["numba_threads"] == 1
    assert b["environment"]["numba_threads"] == numba.config.NUMBA_NUM_THREADS


@pytest.mark.slow
def test_other_config_or_input_is_refused_naming_the_difference(tiny, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = output_digest(out)
    markers = {m.name: m.read_text() for m in (out / "stages").glob("*.json")}
    cfg = load_config(tiny)
    cfg.run.tile = 8
    cfg.compare.n_clusters = 3
    with pytest.raises(RunDirConflict) as e:
        run_study(cfg, out)
    msg = str(e.value)
    assert "run.tile: 16 -> 8 (stages upscale, budgets, trends, fire, compare, summary)" in msg
    assert "compare.n_clusters: 8 -> 3 (stages compare, summary)" in msg and "--restart" in msg
    # a changed input file with the same config
    sites = pd.read_csv(tiny.parent / "twin" / "sites.csv")
    sites.loc[3, "nee"] += 1.0
    sites.to_csv(tmp_path / "sites.csv", index=False)
    with pytest.raises(RunDirConflict, match=r"input sites: .*twin/sites\.csv \(sha256 .*\) -> .*/sites\.csv"):
        run_study(
            load_config(_write_config(tiny.parent / "twin", tmp_path / "c.toml", sites=tmp_path / "sites.csv")), out
        )
    # an input dropped from the config: its stage's outputs would be left over
    text = tiny.read_text()
    (tmp_path / "nofire.toml").write_text(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("fire ="))
        + "\n[compare]\nsubtract_fire = false\n"
    )  # the products include fire
    with pytest.raises(RunDirConflict, match=r"input fire: .*fire\.zarr -> not given \(stages budgets, trends, fire"):
        run_study(load_config(tmp_path / "nofire.toml"), out)
    assert output_digest(out) == before  # nothing was touched
    assert {m.name: m.read_text() for m in (out / "stages").glob("*.json")} == markers
    # Settings that change how, not what: accepted, every stage skipped (an unreachable
    # scheduler proves no stage ran).
    cfg = load_config(tiny)
    cfg.run.scheduler = "tcp://127.0.0.1:9"
    rec = run_study(cfg, out)
    assert all(s["skipped"] for s in rec["stages"].values())
    assert rec["environment"]["scheduler"] == "tcp://127.0.0.1:9" and output_digest(out) == before
    # A stage whose upstream outputs are not the ones it read (by digest) reruns.
    m = json.loads((out / "stages" / "summary.json").read_text())
    m["upstream_digest"]["compare"] = {"compare": "0" * 64}
    (out / "stages" / "summary.json").write_text(json.dumps(m))
    rec = run_study(load_config(tiny), out)
    assert [s for s, r in rec["stages"].items() if not r["skipped"]] == ["summary"] and output_digest(out) == before


@pytest.mark.slow
def test_restart_deletes_only_what_abzflux_wrote(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "coarse" / "stages").mkdir(parents=True)
    (out / "coarse" / "stages" / "sites.json").write_text("{}")
    (out / "coarse" / "sites.parquet").write_text("x")
    (out / "mine").mkdir()
    (out / "mine" / "a.csv").write_text("1")
    (out / "upscaled.nc").write_text("an export")
    removed = clean_run_dir(out)
    assert {p.name for p in removed} >= {
        "stages",
        "run.json",
        "upscaled.zarr",
        "models",
        "budgets",
        "summary.md",
        "budgets_members_monthly.parquet",
    }
    # Only what abzflux recorded writing (issue 19): a hand-made upscaled.nc and a coarse/sites.parquet
    # that no coarse marker names are kept; the coarse set's (marker) files are deleted.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "coarse",
        "coarse/sites.parquet",
        "mine",
        "mine/a.csv",
        "upscaled.nc",
    ]
    assert clean_run_dir(tmp_path / "mine_only") == []  # not a run directory: untouched


def test_every_config_key_is_an_output_key_or_declared_without_effect():
    """A key that changes outputs must be some stage's config key (else a run directory would
    silently mix outputs of two values); the others are declared in NO_OUTPUT_EFFECT."""
    keys = set()
    for sec in fields(Config):
        if sec.name in ("inputs", "coarse", "source"):  # inputs: compared by content hash
            continue
        keys |= {f"{sec.name}.{f.name}" for f in fields(sec.default_factory)}
    assert keys - set(NO_OUTPUT_EFFECT) == output_keys()
