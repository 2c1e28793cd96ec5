"""The test suite's shared fixture directories (tests/conftest.py): built once across processes,
rebuilt after a crashed build, and a change made by a test is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import absolute_config, shared_build, untouched_shared_dirs

KEY = "ab" * 32

BUILD_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from conftest import shared_build

root, log = Path(sys.argv[1]), Path(sys.argv[2])

def build(d):
    with open(log, "a") as f:
        f.write("built\\n")
    time.sleep(1.0)  # long enough for the other process to find the lock taken
    (d / "data.txt").write_text("payload")

print(shared_build(root, "twin", sys.argv[3], build))
"""


@pytest.mark.slow  # two processes build a twin
def test_two_processes_build_once_and_both_read_the_result(tmp_path):
    log = tmp_path / "builds.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", BUILD_IN_A_PROCESS, str(tmp_path), str(log), KEY]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert log.read_text() == "built\n"  # exactly one build
    assert outs[0] == outs[1] == str(tmp_path / f"twin-{KEY[:16]}")
    assert (tmp_path / f"twin-{KEY[:16]}" / "data.txt").read_text() == "payload"
    assert (tmp_path / f"twin-{KEY[:16]}.done").read_text() == KEY + "\n"


def test_incomplete_build_is_replaced_and_a_changed_file_is_reported(tmp_path):
    stale = tmp_path / f"run-{KEY[:16]}"
    stale.mkdir()
    (stale / "half-written.zarr").write_text("x")  # a build that died: no .done marker
    calls = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "sub").mkdir()
        (d / "sub" / "a.csv").write_text("1")

    seen: dict = {}  # not this session's registry: its check at the end stays about the real fixtures
    path = shared_build(tmp_path, "run", KEY, build, seen)
    assert path == stale and calls == [stale]
    assert sorted(p.name for p in path.iterdir()) == ["sub"]
    assert shared_build(tmp_path, "run", KEY, build, seen) == path and len(calls) == 1  # complete: not rebuilt
    assert untouched_shared_dirs(seen) == []
    time.sleep(0.01)
    (path / "sub" / "a.csv").write_text("22")  # what a test must not do
    (path / "extra.txt").write_text("")
    assert untouched_shared_dirs(seen) == [f"{path}: extra.txt, sub/a.csv"]


def test_absolute_config_points_every_input_at_the_twin(tmp_path):
    text = '[inputs]\nsites = "sites.csv"\npredictors = "predictors.zarr"\nreferences = ["ref_inversion.nc"]\n'
    got = absolute_config(text, tmp_path / "tw")
    assert f'sites = "{tmp_path / "tw" / "sites.csv"}"' in got
    assert f'predictors = "{tmp_path / "tw" / "predictors.zarr"}"' in got
    assert f'references = ["{tmp_path / "tw" / "ref_inversion.nc"}"]' in got
