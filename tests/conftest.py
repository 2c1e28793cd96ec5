"""Shared fixtures: one coarse twin and one study run on it, built once per test session and
shared by every pytest-xdist worker.

The twin (with its small-forest config) and the study run are built into a cache directory
keyed by a hash of abzflux's source code and the fixture's settings, under an exclusive file
lock: the first worker that needs one builds it, the others wait and then read it. By default
the cache lives under pytest's base temporary directory of this run (shared by the workers);
``ABZFLUX_TEST_CACHE=DIR`` keeps it in DIR across runs (rebuilt whenever the code changes).

The shared directories are read-only by contract: a test that writes into a run directory
makes its own copy (``shutil.copytree``) or a view of symlinks in ``tmp_path``. Each worker
checks at the end of the session that the shared directories still hold exactly the files
(names, sizes, modification times) they held when it first used them, and fails otherwise.

Tests that need the shared twin or the study run are marked ``slow`` here; ``make test-fast``
runs ``-m "not slow"``. An expensive module-scoped fixture should be built
with :func:`shared_build` too: under ``--dist load`` a module's tests may run on several
workers, and each would otherwise build its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import abzflux
from abzflux.config import load_config
from abzflux.runner import run_study
from abzflux.twin import TwinSpec, make_twin

log = logging.getLogger(__name__)

COARSE = TwinSpec(resolution_km=100, first_year=2001, last_year=2020, seed=448)

TINY = TwinSpec(resolution_km=300, first_year=2019, last_year=2020, seed=448, n_sites=30, n_site_months=400)
"""A tiny twin (300-km grid, two years, 30 sites) for tests that run the CLI or the first stages
on valid or mutated inputs: built in seconds, shared as ``tiny_twin``."""

FAST_FOREST = """[forest]
n_estimators = 40
mtry = 5
importance_repeats = 3
pdp_points = 11
pdp_rows = 200
n_bootstrap = 3
"""

INPUT_FILES = (
    "sites.csv",
    "predictors.zarr",
    "zones.nc",
    "fire.zarr",
    "truth.nc",
    "ref_inversion.nc",
    "ref_process.nc",
)
"""The twin's input files, as its config.toml names them (relative to the twin directory)."""

SHARED_FIXTURES = ("twin_dir", "fast_config", "study_run")


# ----------------------------------------------------------------------------- helpers


def source_hash() -> str:
    """SHA-256 over abzflux's package files (relative path and bytes; caches left out)."""
    root = Path(abzflux.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".nbi", ".nbc"):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_root(tmp_path_factory) -> Path:
    """The directory shared by every worker of this pytest run (or ``$ABZFLUX_TEST_CACHE``)."""
    env = os.environ.get("ABZFLUX_TEST_CACHE")
    if env:
        root = Path(env)
    else:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: .../popen-gwN
        root = root / "abzflux-shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size in bytes, mtime in ns) of every file and directory below ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


SNAPSHOTS: dict[Path, dict[str, tuple[int, int]]] = {}
"""Each shared directory this process used -> its files when first used."""


def shared_build(root: Path, name: str, key: str, build: Callable[[Path], None], snapshots: dict | None = None) -> Path:
    """``root/name-KEY``, built by ``build(path)`` once across processes under a file lock.

    ``build`` writes into the final path (run directories record absolute input paths, so the
    directory is never renamed); a file ``name-KEY.done`` written afterwards marks it complete.
    A directory without its marker is what a crashed build left: it is deleted and rebuilt.
    The directory's files are recorded in ``snapshots`` (default :data:`SNAPSHOTS`)."""
    path = root / f"{name}-{key[:16]}"
    done = path.with_name(path.name + ".done")
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                if path.exists():
                    log.warning("removing the incomplete shared fixture %s", path)
                    shutil.rmtree(path)
                path.mkdir()
                build(path)
                done.write_text(key + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    (SNAPSHOTS if snapshots is None else snapshots).setdefault(path, _snapshot(path))
    return path


def untouched_shared_dirs(snapshots: dict | None = None) -> list[str]:
    """Problems found: shared fixture directories whose files changed since this process read them."""
    bad = []
    for path, before in (SNAPSHOTS if snapshots is None else snapshots).items():
        now = _snapshot(path)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            bad.append(f"{path}: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}")
    return bad


def run_view(src: Path, dst: Path, exclude=()) -> Path:
    """A view of a finished shared run that a test may write into: every entry symlinked, except
    the files abzflux rewrites in place (the ownership manifest, copied; the lock, left out), so
    that a report or an export on the view never writes through a link into the shared run."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name == "abzflux-owned.json":
            shutil.copy2(p, dst / p.name)
        elif p.name not in ("abzflux.lock", *exclude):
            (dst / p.name).symlink_to(p)
    return dst


def absolute_config(text: str, twin: Path) -> str:
    """A twin config's text with its input paths made absolute, to be written anywhere."""
    for k in INPUT_FILES:
        text = text.replace(f'"{k}"', f'"{twin / k}"')
    return text


# ----------------------------------------------------------------------------- hooks


def _scopes(item) -> set[str]:
    info = getattr(item, "_fixtureinfo", None)
    return {d[-1].scope for d in info.name2fixturedefs.values()} if info else set()


SLOW_FIXTURES = frozenset(SHARED_FIXTURES)
"""A test that uses one of these is ``slow``: it needs the coarse twin (a 100-km, 20-year
twin, built once per run) or the whole study run on it."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config, items):
    """Tests that use the shared twin or study run are ``slow``."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
            item.stash[AUTO_SLOW] = True


AUTO_SLOW = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist sends the collection to the scheduler
def pytest_collection_finish(session):
    """The order in
    which the tests are handed out (``make test``: ``--dist load --maxschedchunk 2``, one test
    at a time to the next free worker), chosen so that no worker waits and the longest tests do
    not end the run alone:

    0. one test that needs the study run: its worker builds the study first;
    1. the other tests marked ``slow`` that need no study run (killed and resumed tiny runs);
    2. every test that is not slow, module by module;
    3. the tests marked ``slow`` that run another study on the shared one (by then built);
    4. the other tests that only read the study run, module by module.

    Within each group the collection order is kept, so a module's tests stay together."""
    items = session.items
    rank = {}
    first = None
    for i, item in enumerate(items):
        uses_study = "study_run" in getattr(item, "fixturenames", ())
        slow = item.get_closest_marker("slow") is not None and not item.stash.get(AUTO_SLOW, False)
        if uses_study and not slow and first is None and _scopes(item) <= {"session", "function"}:
            first = i
        rank[i] = (3 if slow else 4) if uses_study else (1 if slow else 2)
    if first is not None:
        rank[first] = 0
    order = sorted(range(len(items)), key=lambda i: (rank[i], i))
    items[:] = [items[i] for i in order]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory):
    root = cache_root(tmp_path_factory)
    yield root
    bad = untouched_shared_dirs()
    assert not bad, "a test changed a shared fixture directory (copy it first): " + "; ".join(bad)


@pytest.fixture(scope="session")
def code_key() -> str:
    return source_hash()


def _twin_key(code: str) -> str:
    return hashlib.sha256(f"{code}|{COARSE!r}|{FAST_FOREST}".encode()).hexdigest()


@pytest.fixture(scope="session")
def twin_dir(shared_root, code_key):
    """The coarse twin (100 km, 2001-2020) with ``config_fast.toml`` beside its ``config.toml``.
    Shared and read-only."""

    def build(d: Path) -> None:
        make_twin(d / "coarse", COARSE)
        text = (d / "coarse" / "config.toml").read_text()
        (d / "coarse" / "config_fast.toml").write_text(text[: text.index("[forest]")] + FAST_FOREST)

    return shared_build(shared_root, "twin", _twin_key(code_key), build) / "coarse"


@pytest.fixture(scope="session")
def tiny_twin(shared_root, code_key):
    """The :data:`TINY` twin's directory (its ``config.toml`` has the twin's default forests).
    Shared and read-only."""
    key = hashlib.sha256(f"{code_key}|{TINY!r}".encode()).hexdigest()
    return shared_build(shared_root, "tiny-twin", key, lambda d: make_twin(d / "twin", TINY)) / "twin"


@pytest.fixture(scope="session")
def fast_config(twin_dir):
    """The twin's config with small forests (40 trees, fixed mtry, 3 bootstrap members, few
    importance repeats) to keep CI quick; every stage still runs. Shared and read-only: write
    variants elsewhere with :func:`absolute_config`."""
    return twin_dir / "config_fast.toml"


@pytest.fixture(scope="session")
def study_run(shared_root, code_key, fast_config):
    """(run directory, its run.json record) of the study on the coarse twin with ``fast_config``.
    Shared and read-only: copy it (or symlink its entries) before writing."""

    def build(d: Path) -> None:
        run_study(load_config(fast_config), d / "run")

    key = hashlib.sha256(f"{_twin_key(code_key)}|{fast_config}".encode()).hexdigest()
    out = shared_build(shared_root, "run", key, build) / "run"
    return out, json.loads((out / "run.json").read_text())
