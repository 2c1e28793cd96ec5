"""Shared fixtures: one coarse twin and one study run on it, built once per test session."""

from __future__ import annotations

import pytest

from abzflux.config import load_config
from abzflux.pipeline import run_study
from abzflux.twin import TwinSpec, make_twin

COARSE = TwinSpec(resolution_km=100, first_year=2001, last_year=2020, seed=448)


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "coarse"
    make_twin(out, COARSE)
    return out


FAST_FOREST = """[forest]
n_estimators = 40
mtry = 5
importance_repeats = 3
pdp_points = 11
pdp_rows = 200
n_bootstrap = 3
"""


@pytest.fixture(scope="session")
def fast_config(twin_dir):
    """The twin's config with small forests (40 trees, fixed mtry, 3 bootstrap members, few
    importance repeats) to keep CI quick; every stage still runs."""
    text = (twin_dir / "config.toml").read_text()
    text = text[: text.index("[forest]")] + FAST_FOREST
    path = twin_dir / "config_fast.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def study_run(twin_dir, fast_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    record = run_study(load_config(fast_config), out, log=lambda m: None)
    return out, record
