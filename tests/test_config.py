"""Tests of the run configuration reader (abzflux.config.load_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from abzflux.config import Config, load_config
from abzflux.errors import ConfigError, InputError


@pytest.fixture
def project(tmp_path):
    """A config directory with the three required inputs and the two optional ones."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    for name in ("sites.csv", "fire.nc", "truth.nc"):
        (root / "data" / name).write_text("x")
    (root / "data" / "predictors.zarr").mkdir()
    (root / "zones.nc").write_text("x")
    return root


MINIMAL_INPUTS = """\
[inputs]
sites = "data/sites.csv"
predictors = "data/predictors.zarr"
zones = "zones.nc"
"""


def write(root: Path, text: str, name: str = "config.toml") -> Path:
    p = root / name
    p.write_text(text)
    return p


def expect_config_error(path, *parts) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg, f"file not named in: {msg}"
    for part in parts:
        assert part in msg, f"{part!r} not in message: {msg}"
    return info.value


def test_config_error_is_an_input_error():
    assert issubclass(ConfigError, InputError)
    assert issubclass(ConfigError, ValueError)


def test_minimal_config_defaults_and_relative_paths(project):
    path = write(project, MINIMAL_INPUTS)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.inputs.sites == project / "data" / "sites.csv"
    assert cfg.inputs.predictors == project / "data" / "predictors.zarr"
    assert cfg.inputs.zones == project / "zones.nc"
    assert cfg.inputs.fire is None and cfg.inputs.truth is None
    assert cfg.run.seed == 448
    assert cfg.run.years is None and cfg.run.year_range(path) is None
    assert cfg.forest.n_estimators == 500
    assert cfg.forest.nodesize == 5
    assert cfg.forest.mtry is None
    assert cfg.forest.cv == "loso" and cfg.forest.cross_validates  # the paper's exact LOSO
    assert (cfg.forest.oob_site_fraction, cfg.forest.oob_trees) == (0.1, 1500)
    assert cfg.source == path


def test_paths_resolve_against_config_dir_not_cwd(project, tmp_path, monkeypatch):
    """Loading through a relative config path from elsewhere still resolves inputs next to it."""
    sub = project / "configs"
    sub.mkdir()
    write(sub, MINIMAL_INPUTS.replace('"data/', '"../data/').replace('"zones.nc"', '"../zones.nc"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "proj" / "configs" / "config.toml")
    assert cfg.inputs.sites.resolve() == (project / "data" / "sites.csv").resolve()
    assert cfg.inputs.zones.resolve() == (project / "zones.nc").resolve()
    assert cfg.inputs.sites.is_absolute()


def test_absolute_input_path_kept(project, tmp_path):
    other = tmp_path / "abs_zones.nc"
    other.write_text("x")
    path = write(project, MINIMAL_INPUTS.replace('"zones.nc"', f'"{other.as_posix()}"'))
    assert load_config(path).inputs.zones == other


def test_full_config(project):
    text = (
        MINIMAL_INPUTS
        + """\
fire = "data/fire.nc"
truth = "data/truth.nc"

[run]
seed = 7
years = "2001-2020"

[forest]
n_estimators = 100
mtry = 3
nodesize = 2
mtry_grid = [2, 9, 15]  # <= 15: "retune" tunes the 15 bootstrap predictors over it
central = "qrf_median"
cv = false
importance_repeats = 10
n_bootstrap = 5
bootstrap_mtry = "retune"
"""
    )
    path = write(project, text)
    cfg = load_config(path)
    assert cfg.inputs.fire == project / "data" / "fire.nc"
    assert cfg.inputs.truth == project / "data" / "truth.nc"
    assert cfg.run.seed == 7
    assert cfg.run.year_range(path) == (2001, 2020)
    f = cfg.forest
    assert (f.n_estimators, f.mtry, f.nodesize, f.mtry_grid, f.central, f.cv) == (
        100,
        3,
        2,
        [2, 9, 15],
        "qrf_median",
        "none",  # cv = false: the old spelling of "none"
    )
    assert (f.importance_repeats, f.n_bootstrap, f.bootstrap_mtry, f.pdp_points) == (10, 5, "retune", 51)
    d = cfg.to_dict()
    assert d["inputs"]["zones"] == str(project / "zones.nc")
    assert d["forest"]["mtry"] == 3 and "source" not in d


@pytest.mark.parametrize(
    "line,mode",
    [("cv = true", "loso"), ("cv = false", "none"), ('cv = "loso"', "loso"), ('cv = "site_oob"', "site_oob")],
)
def test_cv_modes_and_boolean_aliases(project, line, mode):
    cfg = load_config(write(project, MINIMAL_INPUTS + f"[forest]\n{line}\noob_site_fraction = 0.2\noob_trees = 100\n"))
    assert cfg.forest.cv == mode and cfg.forest.cross_validates == (mode != "none")
    assert (cfg.forest.oob_site_fraction, cfg.forest.oob_trees) == (0.2, 100)  # 100 // 5 = 20 trees per site


def test_single_year_range(project):
    path = write(project, MINIMAL_INPUTS + '[run]\nyears = "2010-2010"\n')
    assert load_config(path).run.year_range(path) == (2010, 2010)


# -------------------------------------------------------------------------------- bad cases


def test_missing_config_file(tmp_path):
    expect_config_error(tmp_path / "nope.toml", "does not exist")


def test_invalid_toml(project):
    path = write(project, MINIMAL_INPUTS + "[forest\nn_estimators = 5\n")
    expect_config_error(path, "not valid TOML")


def test_unknown_section(project):
    path = write(project, MINIMAL_INPUTS + "[model]\nntree = 500\n")
    expect_config_error(path, "unknown section", "[model]")


def test_unknown_forest_key(project):
    path = write(project, MINIMAL_INPUTS + "[forest]\nntree = 500\n")
    err = expect_config_error(path, "ntree", "forest.ntree", "n_estimators")
    assert err.column == "forest.ntree"


def test_unknown_input_key(project):
    path = write(project, MINIMAL_INPUTS + 'zone = "zones.nc"\n')
    expect_config_error(path, "inputs.zone")


def test_unknown_run_key(project):
    path = write(project, MINIMAL_INPUTS + "[run]\nseeds = 1\n")
    expect_config_error(path, "run.seeds")


@pytest.mark.parametrize(
    "key,value,shown",
    [
        ("n_estimators", '"500"', "'500'"),
        ("n_estimators", "500.0", "500.0"),
        ("nodesize", "true", "True"),  # a bool is not an integer here
        ("mtry", '"5"', "'5'"),
    ],
)
def test_wrong_type_in_forest(project, key, value, shown):
    path = write(project, MINIMAL_INPUTS + f"[forest]\n{key} = {value}\n")
    expect_config_error(path, f"forest.{key}", "integer", shown)


def test_wrong_type_seed(project):
    path = write(project, MINIMAL_INPUTS + '[run]\nseed = "448"\n')
    expect_config_error(path, "run.seed", "integer")


def test_input_path_not_a_string(project):
    path = write(project, MINIMAL_INPUTS.replace('"zones.nc"', "3"))
    expect_config_error(path, "inputs.zones", "path")


def test_section_not_a_table(project):
    path = write(project, MINIMAL_INPUTS + 'forest = "fast"\n')
    # 'forest' written after [inputs] is a key of [inputs] in TOML: an unknown key there
    expect_config_error(path, "inputs.forest")
    path = write(project, 'forest = "fast"\n' + MINIMAL_INPUTS)
    expect_config_error(path, "[forest]", "table")


def test_missing_inputs_section(project):
    path = write(project, "[forest]\nn_estimators = 10\n")
    expect_config_error(path, "missing section [inputs]")


def test_missing_required_input_key(project):
    text = MINIMAL_INPUTS.replace('zones = "zones.nc"\n', "")
    path = write(project, text)
    expect_config_error(path, "zones", "missing")


def test_input_path_does_not_exist(project):
    path = write(project, MINIMAL_INPUTS.replace('"zones.nc"', '"no_such_zones.nc"'))
    expect_config_error(path, "inputs.zones", "no_such_zones.nc", "does not exist")


def test_optional_input_path_does_not_exist(project):
    path = write(project, MINIMAL_INPUTS + 'fire = "data/missing_fire.nc"\n')
    expect_config_error(path, "inputs.fire", "missing_fire.nc")


@pytest.mark.parametrize(
    "years,part",
    [
        ("2020-2001", "after last year"),
        ("abc", "invalid years"),
        ("2001", "invalid years"),
        ("2001-2010-2020", "invalid years"),
    ],
)
def test_bad_years(project, years, part):
    path = write(project, MINIMAL_INPUTS + f'[run]\nyears = "{years}"\n')
    expect_config_error(path, "run.years", part)


def test_years_as_integer_is_rejected(project):
    path = write(project, MINIMAL_INPUTS + "[run]\nyears = 2001\n")
    expect_config_error(path, "run.years")


@pytest.mark.parametrize("key", ["n_estimators", "nodesize", "mtry"])
def test_forest_values_out_of_range(project, key):
    path = write(project, MINIMAL_INPUTS + f"[forest]\n{key} = 0\n")
    expect_config_error(path, f"forest.{key}", "out of range", ">= 1")


@pytest.mark.parametrize(
    "line,key,shown",
    [
        ('central = "median"', "forest.central", "one of"),
        ('bootstrap_mtry = "sometimes"', "forest.bootstrap_mtry", "one of"),
        ("mtry_grid = [2, 9.5]", "forest.mtry_grid", "list of integers"),
        ("mtry_grid = []", "forest.mtry_grid", "list of integers"),
        ('cv = "yes"', "forest.cv", "one of ['loso', 'site_oob', 'none']"),
        ("cv = 1", "forest.cv", "expected a string"),
        ("oob_site_fraction = 0.6", "forest.oob_site_fraction", "(0, 0.5]"),
        ("oob_site_fraction = 0", "forest.oob_site_fraction", "(0, 0.5]"),
        ("oob_trees = 199", "forest.oob_trees", "at least 200 trees"),
        ("oob_site_fraction = 0.25\noob_trees = 79", "forest.oob_trees", "at least 80 trees"),
        ('oob_trees = "many"', "forest.oob_trees", "integer"),
        ("importance_repeats = -1", "forest.importance_repeats", "out of range"),
    ],
)
def test_forest_choices_and_types(project, line, key, shown):
    path = write(project, MINIMAL_INPUTS + f"[forest]\n{line}\n")
    expect_config_error(path, key, shown)


def test_coarse_set_and_budget_settings(project):
    (project / "data" / "pred8.zarr").mkdir()
    (project / "zones8.nc").write_text("x")
    cfg = load_config(
        write(
            project,
            MINIMAL_INPUTS
            + """
[run]
years = "2001-2020"
tile = 64

[forest]
n_estimators = 50

[budgets]
source_threshold = 5
decade_length = 5

[coarse]
predictors = "data/pred8.zarr"
zones = "zones8.nc"
years = "1990-2016"
""",
        )
    )
    assert cfg.budgets.source_threshold == 5.0 and cfg.budgets.decade_length == 5 and cfg.run.tile == 64
    c = cfg.coarse_config()
    assert c.inputs.predictors == project / "data" / "pred8.zarr"
    assert c.inputs.sites == cfg.inputs.sites  # default: the fine set's site table
    assert c.run.years == "1990-2016" and c.run.tile == 64 and c.forest.n_estimators == 50
    assert c.coarse is None and cfg.run.years == "2001-2020"
    assert load_config(write(project, MINIMAL_INPUTS)).coarse_config() is None


@pytest.mark.parametrize(
    "extra, column",
    [
        ('[coarse]\nzones = "zones.nc"\n', "coarse"),  # predictors missing
        ('[coarse]\npredictors = "data/predictors.zarr"\nzones = "zones.nc"\nfoo = 1\n', "coarse.foo"),
        ('[coarse]\npredictors = "nope.zarr"\nzones = "zones.nc"\n', "coarse.predictors"),
        ('[coarse]\npredictors = "data/predictors.zarr"\nzones = "zones.nc"\nyears = "2016-1990"\n', "run.years"),
        ('[budgets]\nsource_threshold = "zero"\n', "budgets.source_threshold"),
        ("[budgets]\ndecade_length = 0\n", "budgets.decade_length"),
        ("[run]\ntile = 2\n", "run.tile"),
        ('[fire]\nalpha = "x"\n', "fire.alpha"),
        ('[fire]\nmonths = ["may"]\n', "fire.months"),
        ("[fire]\nstart = 2002\n", "fire.start"),
    ],
)
def test_bad_coarse_and_budget_settings(project, extra, column):
    e = expect_config_error(write(project, MINIMAL_INPUTS + extra))
    assert column in str(e)


def test_trends_section_zyp_options(project):
    cfg = load_config(write(project, MINIMAL_INPUTS))
    assert cfg.trends.prewhitening == "zhang" and cfg.trends.preserve_range_for_sig_test is False  # the paper's text
    cfg = load_config(
        write(project, MINIMAL_INPUTS + '[trends]\nprewhitening = "yuepilon"\npreserve_range_for_sig_test = true\n')
    )
    assert cfg.trends.prewhitening == "yuepilon" and cfg.trends.preserve_range_for_sig_test is True
    assert cfg.to_dict()["trends"] == {"prewhitening": "yuepilon", "preserve_range_for_sig_test": True}
    path = write(project, MINIMAL_INPUTS + '[trends]\nprewhitening = "pettitt"\n')
    err = expect_config_error(path, "pettitt", "yuepilon")
    assert err.column == "trends.prewhitening"
