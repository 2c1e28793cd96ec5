"""The runner: every step of the study, in order, into a run directory (docs/architecture.md).

Each step writes into the run directory and records what it was computed from (the config
keys of the step and its upstream steps, the hashes of its inputs, the code) and a SHA-256
digest of each output in ``stages/<name>.json``. A step whose outputs exist and whose
fingerprint is unchanged is skipped on rerun. Outputs are written under a temporary name and
renamed when complete, and a step's marker is removed before it runs and written after its
outputs are in place, so an interrupted step never leaves an output that looks finished.
A run directory holding outputs of another config or other inputs is refused (``--restart``
deletes them first). ``run.json`` records the config, input hashes, package versions, the
environment and seed (docs/reliability.md). Paths come from :class:`~abzflux.layout.RunLayout`;
the run directory's lock and ownership manifest from :mod:`abzflux.rundir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from . import __version__, _atomic, rundir
from . import layout as L
from .checks import check_inputs
from .config import Config
from .context import Context
from .errors import RunDirConflict
from .layout import RunLayout
from .steps import STEPS, StepSpec, lineage

log = logging.getLogger(__name__)

PACKAGES = (
    "abzflux",
    "numpy",
    "pandas",
    "xarray",
    "scikit-learn",
    "scipy",
    "numba",
    "zarr",
    "numcodecs",
    "dask",
    "distributed",
    "h5netcdf",
    "h5py",
    "pyarrow",
    "pyproj",
    "matplotlib",
    "rioxarray",
    "typer",
    "rich",
)
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Config keys that change how a run executes but never an output: they do not make a run
# directory "another config's" (every other key is a stage's config key; tests/test_resume.py).
NO_OUTPUT_EFFECT = ("run.scheduler",)


# --------------------------------------------------------------------------- provenance
def file_hash(path: Path) -> str:
    """SHA-256 of a file, or of a directory tree (relative paths and bytes, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 of abzflux's own source files: a stage reruns when the code that made it changed."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def package_versions() -> dict:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def environment(cfg: Config) -> dict:
    """Where and how the run executes (recorded in run.json; outputs do not depend on it)."""
    import numba  # slow to import: only when a run starts

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "numba_threads": int(numba.config.NUMBA_NUM_THREADS),  # type: ignore[attr-defined]
        "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "scheduler": cfg.run.scheduler or "this process",
    }


# --------------------------------------------------------------------------- memory
def _rss_mb() -> float | None:
    """This process's resident set now (MB; file pages it maps and has touched included), or
    None where /proc is not available."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """The peak resident set of this process while a stage runs, sampled every ``interval``
    seconds by a thread (``peak_mb``; peaks shorter than the interval can be missed), and the
    process's lifetime maximum so far from the kernel (``maxrss_mb``, getrusage: what
    ``/usr/bin/time -v`` reports at exit). Worker processes of a dask cluster are not included."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="abzflux-rss", daemon=True)

    def _sample(self) -> None:
        while True:
            self._sample_once()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._sample_once()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _sample_once(self) -> None:
        r = _rss_mb()
        if r is not None:
            self.peak_mb = r if self.peak_mb is None else max(self.peak_mb, r)

    def record(self) -> dict:
        try:
            import resource  # not on Windows

            maxrss: float | None = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # kB on Linux
        except ImportError:
            maxrss = None
        return {
            "peak_rss_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "maxrss_mb": None if maxrss is None else round(maxrss, 1),
        }


# --------------------------------------------------------------------------- steps
def build_stages() -> list[StepSpec]:
    """Every step of the study, upstream ones first (:data:`abzflux.steps.STEPS`)."""
    return list(STEPS)


def _cfg_value(cfg: Config, key: str):
    d = cfg.to_dict()
    for part in key.split("."):
        d = d[part]
    return d


def _lineage(stages: list[StepSpec]) -> dict[str, tuple[tuple, tuple]]:
    return lineage(stages)


def output_keys() -> set[str]:
    """Every config key some stage's outputs depend on."""
    return {k for st in build_stages() for k in st.config_keys}


def digest_path(path: Path) -> str:
    """SHA-256 of one output, a file or a directory tree (:func:`file_hash`)."""
    return file_hash(path)


# Files and directories abzflux writes into a run directory besides the stage outputs: the
# provenance, the report, the default exports and work in progress (:mod:`abzflux.layout`).
RUN_FILES = L.RUN_FILES
RUN_DIRS = L.RUN_DIRS


def output_digest(run_dir) -> dict[str, str]:
    """SHA-256 of every file of a run's stage outputs, by path relative to ``run_dir`` (the coarse
    model set's under ``coarse/``). Left out: ``run.json`` and ``stages/`` (they hold timestamps
    and timings), the report (its PDFs carry a creation date), work in progress (``*.tmp``,
    ``*.old``, ``upscale.partial``) and the exports. Two runs of the same config, inputs and seed
    give equal digests (docs/reliability.md)."""
    run_dir = Path(run_dir)
    names = {o for st in build_stages() for o in st.outputs + st.extras}
    out = {}
    for name in sorted(names):
        p = run_dir / name
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            out[str(f.relative_to(run_dir))] = file_hash(f)
    coarse = RunLayout(run_dir).coarse.root
    if coarse.is_dir():
        out.update({f"{L.COARSE}/{k}": v for k, v in output_digest(coarse).items()})
    return out


def run_paths(exports: bool = True) -> list[str]:
    """Every top-level path abzflux may write into a model set's directory, ``stages`` and
    ``run.json`` first: stage outputs, their temporary (``.tmp``) and set-aside (``.old``)
    names, provenance, the report, work in progress and (``exports``) the default exports."""
    names = [L.STAGES, L.RUN_JSON]
    for st in build_stages():
        for o in st.outputs + st.extras:
            names += [o, o + ".tmp", o + ".old"]
    names += [n for n in RUN_FILES + RUN_DIRS if n not in names]
    names += list(L.WORK_NAMES)
    if not exports:
        names = [n for n in names if n not in L.EXPORTS]
    return list(dict.fromkeys(names))


def clean_run_dir(out) -> list[Path]:
    """Delete what abzflux wrote into a run directory (stage outputs, markers, run.json, the
    report, default exports, work in progress; the coarse set's too) and nothing else: only the
    paths its ownership manifest records (:mod:`abzflux.rundir`; a directory written before
    manifests existed: the outputs its stage markers name). Markers go first, so a kill during
    the clean-up never leaves an output that looks finished."""
    out = Path(out)
    removed = _clean(out)
    if removed:
        log.info(f"--restart: deleted {len(removed)} previous output(s) of {out}")
    return removed


def _clean(out: Path) -> list[Path]:
    removed: list[Path] = []
    names = run_paths()
    own = rundir.Ownership(out, [st.name for st in build_stages()])
    own.adopt_legacy(names)
    if own.paths:
        removed += own.delete(names)
    coarse = RunLayout(out).coarse.root
    if coarse.is_dir():
        removed += _clean(coarse)
        try:
            coarse.rmdir()  # only if nothing else is in it
            removed.append(coarse)
        except OSError:
            pass
    return removed


def _conflicts(ctx: Context, stages: list[StepSpec]) -> list[str]:
    """What differs between the config and inputs that the finished stages in ``ctx.out`` were
    computed from and this run's: one line per config key or input, naming the stages."""
    cfg, out = ctx.cfg, ctx.out
    lineage = _lineage(stages)
    diffs: dict[str, list] = {}
    for st in stages:
        marker = RunLayout(out).marker(st.name)
        if not marker.exists():
            continue
        m = json.loads(marker.read_text())
        if "config" not in m:  # a marker of an older abzflux: only its fingerprint, so the stage reruns
            continue
        keys, inputs = lineage[st.name]
        for k in keys:
            if k not in m["config"]:  # a key the code did not have then: a code change, the stage reruns
                continue
            old, new = m["config"][k], json.loads(json.dumps(_cfg_value(cfg, k), default=str))
            if old != new:
                diffs.setdefault(f"{k}: {old!r} -> {new!r}", []).append(st.name)
        for k in inputs:
            if k not in m.get("inputs", {}):
                continue
            old, new = m["inputs"][k], ctx.hashes.get(k)
            if k == "references" and old is not None and new is not None:  # the products' contents, in order
                old, new = list(old.values()), list(new.values())
            if old != new:
                p_old = m.get("input_paths", {}).get(k)
                p_new = ctx.input_paths().get(k)
                if old is None or new is None:
                    what = f"input {k}: " + (f"not given -> {p_new}" if old is None else f"{p_old} -> not given")
                elif k == "references":
                    what = f"input references: {p_old} -> {p_new} (contents differ)"
                else:
                    what = f"input {k}: {p_old} (sha256 {old[:12]}...) -> {p_new} (sha256 {new[:12]}...)" + (
                        ": the file's contents changed" if p_old == p_new else ""
                    )
                diffs.setdefault(what, []).append(st.name)
    return [f"{what} (stages {', '.join(names)})" for what, names in diffs.items()]


def _refuse(out: Path, lines: list[str]) -> None:
    raise RunDirConflict(
        out,
        "holds outputs computed from another config or other inputs; running into it would mix them "
        "with this run's:\n  " + "\n  ".join(lines) + "\n",
        expected="the config and inputs that wrote them (to resume or update that run), another --out, or "
        "--restart (`abzflux run CONFIG --restart`) to delete this run directory's outputs and start over",
    )


def run_study(
    cfg: Config,
    out: Path,
    force: bool = False,
    progress_factory=None,
    restart: bool = False,
    finish: Callable[[], None] | None = None,
) -> dict:
    """Run every stage into ``out``; skip stages that are complete and unchanged. With a
    ``[coarse]`` section, the coarse model set then runs the same stages into ``out/coarse``.

    Every input of both model sets is read and checked (:func:`validate_study`); then ``out``
    is locked (:class:`rundir.RunLock`, held until the end, ``finish`` included) and checked,
    before anything is written, for paths abzflux did not write where this run would write or
    delete (:class:`rundir.NotOwned`) and for outputs of another config or other inputs
    (:class:`RunDirConflict`). ``restart``: first delete the previous outputs
    (:func:`clean_run_dir`). ``force``: recompute every stage. ``finish``: called after the
    model sets, with the lock still held (the CLI's summary and report). A location that cannot
    be written (no space, no permission) raises :class:`rundir.FileSystemError`."""
    out = Path(out)
    ctxs = validate_study(cfg, out)
    for ctx in ctxs:
        ctx.progress_factory = progress_factory
    names = run_paths()
    stage_names = [st.name for st in build_stages()]
    try:
        for ctx in ctxs:
            for k, p in ctx.input_paths().items():
                ctx.hashes[k] = {str(q): file_hash(q) for q in p} if k == "references" else file_hash(p)
        for ctx in ctxs:  # no input of either model set at an output location of either
            for other in ctxs:
                rundir.check_inputs_outside_outputs(
                    ctx.input_paths(), other.out, names + [rundir.MANIFEST, rundir.LOCK]
                )
        with rundir.locked(out):
            # Ownership: nothing abzflux did not write may be where this run writes or deletes.
            set_dirs = [ctx.out for ctx in ctxs]
            coarse = RunLayout(out).coarse
            if restart and len(ctxs) == 1 and coarse.root.is_dir():
                set_dirs.append(coarse.root)  # --restart deletes a coarse set's outputs too
            owners, legacy = {}, []
            for d in set_dirs:
                owners[d] = rundir.Ownership(d, stage_names)
                legacy += owners[d].adopt_legacy(names)
            if legacy:
                raise rundir.NotOwned(
                    legacy[0].split(": ", 1)[0],
                    legacy[0].split(": ", 1)[1],
                    expected="abzflux's own outputs (move the directory out of the run directory, "
                    "or use another --out)",
                )
            rundir.in_the_way(owners, run_paths(exports=False))  # --restart leaves unrecorded exports alone
            if not restart:
                lines = []
                for ctx in ctxs:
                    lines += [(f"coarse/ {s}" if ctx.out != out else s) for s in _conflicts(ctx, build_stages())]
                if len(ctxs) == 1 and any(coarse.stages.glob("*.json")):
                    lines.append(
                        "[coarse]: coarse/ holds a coarse model set's outputs; this config has no [coarse] section"
                    )
                if lines:
                    _refuse(out, lines)
            else:
                clean_run_dir(out)
            record = None
            for i, ctx in enumerate(ctxs):
                if i:
                    log.info("model set 'coarse' -> " + str(ctx.out))
                ctx.cache["ownership"] = rundir.Ownership(ctx.out, stage_names)  # after any clean-up
                rec = _run_set(ctx, force)
                if record is None:
                    record = rec
                else:
                    record["coarse"] = rec
            if finish is not None:
                finish()
    except OSError as e:
        if rundir.is_fs_error(e):
            raise rundir.fs_error(e, out, where=_where(ctxs)) from None
        raise
    finally:
        for ctx in ctxs:
            ctx.close()
    assert record is not None
    return record


def _where(ctxs: list[Context]) -> str | None:
    for ctx in reversed(ctxs):
        if "stage" in ctx.cache:
            return f"stage {ctx.cache['stage']}" + (" of the coarse model set" if ctx is not ctxs[0] else "")
    return None


def validate_study(cfg: Config, out: Path | None = None) -> list[Context]:
    """Check every input of every model set (fine, then coarse) before anything is written;
    returns their contexts, inputs read and cached."""
    out = Path(out) if out is not None else Path(".")
    sets = [(cfg, out)]
    coarse = cfg.coarse_config()
    if coarse is not None:
        sets.append((coarse, RunLayout(out).coarse.root))
    ctxs = []
    for c, o in sets:
        ctx = Context(cfg=c, out=o)
        check_inputs(ctx)
        ctxs.append(ctx)
    return ctxs


def _run_set(ctx: Context, force: bool) -> dict:
    cfg, out, lay = ctx.cfg, ctx.out, ctx.layout
    own = ctx.cache["ownership"]
    names = run_paths(exports=False)
    rundir.make_dir(out)
    own.prune()
    # Entered before they are written: what a killed run leaves is abzflux's.
    own.pending([L.STAGES, L.RUN_JSON, L.RUN_JSON + ".tmp"] + [n for n in names if not (out / n).exists()])
    lay.stages.mkdir(exist_ok=True)
    record: dict = {
        "abzflux": __version__,
        "status": "running",
        "config": cfg.to_dict(),
        "config_file": str(cfg.source),
        "seed": cfg.run.seed,
        "input_hashes": ctx.hashes,
        "packages": package_versions(),
        "environment": environment(cfg),
        "code_hash": code_hash(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": None,
        "stages": {},
    }
    # Written before the first stage: a killed run's directory says which config it was running.
    _atomic.write_text(lay.run_json, json.dumps(record, indent=2, default=str))
    fingerprints: dict[str, str] = {}
    try:
        _run_stages(ctx, record, fingerprints, force)
    except BaseException as e:  # SIGTERM arrives as SystemExit (cli._terminated)
        record.update(status="failed", error=f"{type(e).__name__}: {e}", stage=ctx.cache.get("stage"))
        try:
            _atomic.write_text(lay.run_json, json.dumps(record, indent=2, default=str))
        except OSError as e2:  # e.g. the disk is still full: the original error is the one to report
            log.warning(f"could not mark {lay.run_json} failed: {e2}")
        try:
            own.remove_tmp(names)  # no partial file beside a target; finished outputs are kept
            own.record(names)
        except OSError:
            pass
        raise
    finally:
        ctx.close()
    record["status"] = "complete"
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # One digest of every stage output: two runs with equal digests produced identical outputs.
    record["output_digest"] = hashlib.sha256(
        json.dumps({k: v.get("digest") for k, v in record["stages"].items()}, sort_keys=True).encode()
    ).hexdigest()
    _atomic.write_text(lay.run_json, json.dumps(record, indent=2, default=str))
    own.record(names)
    return record


def _run_stages(ctx: Context, record: dict, fingerprints: dict, force: bool) -> None:
    cfg, out = ctx.cfg, ctx.out
    stages = build_stages()
    lineage = _lineage(stages)
    paths = {k: (str(v) if k != "references" else [str(p) for p in v]) for k, v in ctx.input_paths().items()}
    for st in stages:
        if st.optional and getattr(cfg.inputs, st.optional) is None:
            continue
        if st.enabled is not None and not st.enabled(cfg):
            continue
        fp_src = {
            "stage": st.name,
            "version": __version__,
            "code": code_hash(),
            "config": {k: _cfg_value(cfg, k) for k in st.config_keys},
            "inputs": {k: ctx.hashes.get(k) for k in st.inputs},
            "upstream": {d: fingerprints.get(d) for d in st.depends},
        }  # None: a stage that did not run
        fp = hashlib.sha256(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()
        fingerprints[st.name] = fp
        marker = ctx.layout.marker(st.name)
        old = json.loads(marker.read_text()) if marker.exists() else {}
        # The upstream outputs this stage read, by digest: if an upstream stage was recomputed and
        # its outputs differ (they should not: outputs are deterministic), this stage reruns too.
        up_digest = {d: record["stages"][d].get("digest") for d in st.depends if d in record["stages"]}
        done = (
            old.get("fingerprint") == fp
            and all((out / o).exists() for o in st.outputs)
            and old.get("upstream_digest", up_digest) == up_digest
        )
        if done and not force:
            log.info(f"[{st.name}] up to date, skipped")
            record["stages"][st.name] = {"skipped": True, "fingerprint": fp, "digest": old.get("digest")}
            continue
        # The marker goes first: from here until the new one is written, the stage counts as not done.
        marker.unlink(missing_ok=True)
        st_names = [n for o in st.outputs + st.extras for n in (o, o + ".tmp", o + ".old")]
        st_names += [L.UPSCALE_PARTIAL] if st.name == "upscale" else []
        ctx.cache["ownership"].pending(st_names)
        ctx.cache["stage"] = st.name
        t0 = time.perf_counter()
        log.info(f"[{st.name}] running")
        ctx.cache["fingerprint"] = fp
        ctx.cache["marker_extra"] = {}
        with PeakRSS() as mem:
            st.run(ctx)
        dt = time.perf_counter() - t0
        memory = mem.record()
        log.info(f"[{st.name}] done in {dt:.1f} s, peak resident memory {memory['peak_rss_mb']} MB")
        digest = {o: digest_path(out / o) for o in st.outputs + st.extras if (out / o).exists()}
        keys, inputs = lineage[st.name]
        _atomic.write_text(
            marker,
            json.dumps(
                {
                    "fingerprint": fp,
                    "stage": st.name,
                    "version": __version__,
                    "code": code_hash(),
                    "config": {k: _cfg_value(cfg, k) for k in keys},
                    "inputs": {k: ctx.hashes.get(k) for k in inputs},
                    "input_paths": {k: paths.get(k) for k in inputs},
                    "upstream": fp_src["upstream"],
                    "upstream_digest": up_digest,
                    "outputs": list(st.outputs),
                    "digest": digest,
                    "seconds": round(dt, 2),
                    "memory": memory,
                    **ctx.cache.pop("marker_extra"),
                },
                indent=2,
                default=str,
            ),
        )
        ctx.cache["ownership"].record(st_names)
        record["stages"][st.name] = {
            "skipped": False,
            "seconds": round(dt, 2),
            "memory": memory,
            "fingerprint": fp,
            "digest": digest,
        }
