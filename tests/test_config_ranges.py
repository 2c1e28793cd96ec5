"""Every config key is range-checked when the config is loaded (issue 19): the last value in
range is accepted, the first one past it is refused with the key named, before any input is
read or any directory created."""

from __future__ import annotations

import pytest

from abzflux.config import MAX_REGRID_SUBSAMPLES, MAX_SEED, load_config
from abzflux.errors import ConfigError

INPUTS = """\
[inputs]
sites = "sites.csv"
predictors = "predictors.zarr"
zones = "zones.nc"
"""

# (section, key, last accepted value, first refused value, a part of the message)
BOUNDS = [
    ("run", "seed", "0", "-1", "0..4294967295"),
    ("run", "seed", str(MAX_SEED), str(MAX_SEED + 1), "out of range"),
    ("run", "years", '"1900-2100"', '"1899-2000"', "1900-2100"),
    ("run", "tile", "8", "7", ">= 8"),
    ("run", "scheduler", '"local"', '" "', "empty scheduler address"),
    ("forest", "n_estimators", "1", "0", ">= 1"),
    ("forest", "mtry", "17", "18", "mtry 18 is more than the 17 predictors"),
    ("forest", "mtry", "1", "0", ">= 1"),
    ("forest", "mtry_grid", "[1, 17]", "[1, 18]", "distinct integers in 1..17"),
    ("forest", "mtry_grid", "[2, 3]", "[3, 3]", "invalid mtry grid [3, 3]"),
    ("forest", "nodesize", "1", "0", ">= 1"),
    ("forest", "importance_repeats", "0", "-1", ">= 0"),
    ("forest", "pdp_points", "2", "1", ">= 2"),
    ("forest", "pdp_rows", "0", "-1", ">= 0"),
    ("forest", "n_bootstrap", "0", "-1", ">= 0"),
    ("forest", "central", '"qrf_median"', '"median"', "one of ['mean', 'qrf_median']"),
    ("budgets", "decade_length", "1", "0", ">= 1"),
    ("budgets", "source_threshold", "-1e6", "nan", "nan is not a finite number"),
    ("budgets", "source_threshold", "1e6", "inf", "inf is not a finite number"),
    ("budgets", "permafrost", '"weighted"', '"probability"', "one of ['mask', 'weighted']"),
    ("budgets", "permafrost_threshold", "0", "-0.1", "[0, 1)"),
    ("budgets", "permafrost_threshold", "0.999", "1.0", "[0, 1)"),
    ("fire", "first_year", "1900", "1899", "1900..2100"),
    ("fire", "target_year", "2100", "2101", "1900..2100"),
    ("fire", "alpha", "0.999", "1.0", "(0, 1)"),
    ("fire", "months", "[1, 12]", "[0, 12]", "1-12"),
    ("fire", "max_years_since_fire", "0.5", "0", "> 0"),
    ("fire", "max_years_since_fire", "100", "inf", "> 0"),
    ("compare", "regrid_subsamples", str(MAX_REGRID_SUBSAMPLES), str(MAX_REGRID_SUBSAMPLES + 1), "1..100"),
    ("compare", "mess_period_length", "1", "0", ">= 1"),
    ("compare", "n_clusters", "1", "0", ">= 1"),
    ("compare", "cluster_sample", "100", "99", ">= 100"),
    ("compare", "aoa_max_training", "100", "99", ">= 100"),
    ("compare", "min_cover", "0.0", "-0.1", "in [0, 1]"),
    ("compare", "min_cover", "1.0", "1.01", "in [0, 1]"),
    ("compare", "grid", '"analysis"', '"native"', "one of ['product', 'analysis']"),
    ("uncertainty", "block_km", "0.001", "0.0", "> 0"),
    ("uncertainty", "block_km", "1e9", "inf", "> 0"),
    ("uncertainty", "method", '"blocks"', '"row"', "one of ['rows', 'sites', 'blocks']"),
    ("uncertainty", "network_replicates", "2", "1", ">= 2"),
    ("uncertainty", "network_replicates", "333", "334", "<= 333"),
    ("uncertainty", "extrapolation_cv", '"loso"', '"lcocv"', "one of ['loso', 'multicv']"),
    ("uncertainty", "network_trees", "1", "0", ">= 1"),
    ("uncertainty", "network_stride", "1", "0", ">= 1"),
]


@pytest.fixture
def root(tmp_path):
    for name in ("sites.csv", "zones.nc"):
        (tmp_path / name).write_text("x")
    (tmp_path / "predictors.zarr").mkdir()
    return tmp_path


def _config(root, section, key, value):
    p = root / "config.toml"
    p.write_text(INPUTS + f"\n[{section}]\n{key} = {value}\n")
    return p


@pytest.mark.parametrize("section,key,ok,bad,part", BOUNDS, ids=[f"{b[0]}.{b[1]}={b[3]}" for b in BOUNDS])
def test_bounds(root, section, key, ok, bad, part):
    cfg = load_config(_config(root, section, key, ok))
    assert getattr(getattr(cfg, section), key) is not None
    with pytest.raises(ConfigError) as info:
        load_config(_config(root, section, key, bad))
    msg = str(info.value)
    assert f"[{section}.{key}]" in msg and part in msg, msg
    assert msg.startswith(str(root / "config.toml") + ":")


def test_retune_limits_the_grid_to_the_bootstrap_predictors(root):
    p = root / "config.toml"
    p.write_text(INPUTS + '\n[forest]\nmtry_grid = [2, 16]\nbootstrap_mtry = "retune"\n')
    with pytest.raises(ConfigError, match=r"1\.\.15"):
        load_config(p)
    p.write_text(INPUTS + '\n[forest]\nmtry_grid = [2, 15]\nbootstrap_mtry = "retune"\n')
    assert load_config(p).forest.mtry_grid == [2, 15]


def test_clusters_at_most_the_sample(root):
    p = root / "config.toml"
    p.write_text(INPUTS + "\n[compare]\nn_clusters = 200\ncluster_sample = 200\n")
    assert load_config(p).compare.n_clusters == 200
    p.write_text(INPUTS + "\n[compare]\nn_clusters = 201\ncluster_sample = 200\n")
    with pytest.raises(ConfigError, match="n_clusters 201 is more than cluster_sample 200"):
        load_config(p)
