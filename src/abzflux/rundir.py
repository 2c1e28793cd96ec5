"""A safe run directory: ownership, an exclusive lock, and file-system failures (docs/reliability.md).

- **Ownership.** Each model set's directory holds ``abzflux-owned.json``, the manifest of every
  top-level path abzflux wrote there: a file, a directory with the list of its files, work in
  progress (``*.tmp``, ``*.old``, ``upscale.partial``: wholly abzflux's), or ``stages/`` (stage
  markers only). Before a run writes anything, every path it would create, replace or delete is
  checked: a path that exists and is not in the manifest, or a file inside an owned directory
  that the manifest does not list, stops the run with :class:`NotOwned` naming the path. Paths
  are entered in the manifest *before* they are written (as work in progress) and narrowed to
  their file lists once the stage that writes them has finished, so a killed run's outputs stay
  owned. A directory written by an abzflux without manifests (``run.json`` and ``stages/``
  only) is adopted: the outputs named in its stage markers, checked against the digests the
  markers recorded, and the names only abzflux writes (``*.tmp``, ``*.old``, ...).
- **Lock.** ``abzflux.lock`` in the run directory, locked with ``fcntl.flock`` (exclusive, not
  waiting) for the whole run and holding the holder's pid, host, start time and command. The
  kernel releases a flock when its process dies, so a lock file left by a killed run is stale
  and simply taken over. A second run gets :class:`RunDirInUse` naming the holder.
- **File-system failures** (no space, no permission, read-only file system) become
  :class:`FileSystemError`, one line naming the path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from . import layout as L
from .errors import InputError
from .layout import RunLayout

log = logging.getLogger(__name__)

MANIFEST = "abzflux-owned.json"  # per model set directory (the run directory, and coarse/)
LOCK = "abzflux.lock"  # in the run directory only: it covers the coarse set
WORK = "*"  # manifest value: work in progress, every file inside is abzflux's
MARKERS = "markers"  # manifest value of stages/: stage markers only
# errno values that mean "this location cannot be written", not a bug: reported as one line.
FS_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EFBIG,
    errno.EMFILE,
    errno.ENAMETOOLONG,
}


class NotOwned(InputError):
    """Something abzflux did not write is where a run would write, replace or delete."""


class RunDirInUse(InputError):
    """Another process holds the run directory's lock."""


class FileSystemError(InputError):
    """The run directory (or an export's target) cannot be written: no space, no permission, ..."""


# --------------------------------------------------------------------------- file-system errors
def is_fs_error(e: BaseException) -> bool:
    """An OSError that says the location cannot be written (space, permission, read-only)."""
    return isinstance(e, OSError) and (e.errno in FS_ERRNOS or "No space left" in str(e))


def fs_error(e: OSError, fallback, where: str | None = None) -> FileSystemError:
    """The one-line error for a file-system failure ``e`` (``fallback``: the path when ``e`` names none)."""
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    what = (e.strerror or str(e)) + (f" ({code})" if code else "")
    return FileSystemError(
        e.filename or fallback,
        f"cannot be written: {what}",
        where=where,
        expected="a writable location with free space (nothing partial is left: the same "
        "command can be rerun once fixed, and a run keeps its finished stages)",
    )


def write_json(path: Path, obj) -> None:
    """Write a small JSON file under a temporary name, flush it to disk and rename it into
    place; the temporary file is removed if the write fails (e.g. disk full)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(obj, indent=1, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN/abzflux.lock`` (see the module docstring).

    ``acquire()`` never waits: a lock held by a live process raises :class:`RunDirInUse` with
    the holder's pid, host, start time and command. The lock file is removed on release (while
    still locked); a process that opened the old file before the removal notices that the path
    no longer names the file it locked and tries again."""

    def __init__(self, run_dir, purpose: str = "run"):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self.purpose = purpose
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise NotOwned(
                        self.path,
                        "a symbolic link that abzflux did not write",
                        expected="no file named abzflux.lock in the run directory (move it away)",
                    ) from None
                if is_fs_error(e):
                    raise fs_error(e, self.path, where="the start, before anything was written") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirInUse(
                    self.dir,
                    f"is in use by another abzflux process ({holder})",
                    expected="one abzflux process per run directory at a time: wait for it to "
                    "finish, or use another --out",
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                # a file system without locks (e.g. Lustre mounted without -o flock): go on, unprotected
                log.warning(
                    "%s: the file system does not support locks (%s): two processes writing into this "
                    "run directory at once are not kept apart",
                    self.path,
                    e.strerror,
                )
            try:  # the file we locked must still be the one at the path (a releaser removes it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            stale = _read_holder(fd, raw=True)
            if stale and not _is_lock_record(stale):  # a file of someone else's at our name: not ours to overwrite
                os.close(fd)
                raise NotOwned(
                    self.path,
                    "a file that abzflux did not write (not an abzflux lock record)",
                    expected="no file named abzflux.lock in the run directory (move it away)",
                )
            if stale:
                log.warning("%s: took over a stale lock (its process is gone): %s", self.path, stale)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "purpose": self.purpose,
                "command": " ".join(sys.argv),
            }
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError as e:
                os.close(fd)
                if is_fs_error(e):
                    raise fs_error(e, self.path, where="the start, before anything was written") from None
                raise
            self.fd = fd
            return self
        raise RunDirInUse(self.dir, "its lock file keeps being replaced", expected="one abzflux process at a time")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only directory now: the file stays, the flock goes with the fd
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _is_lock_record(text: str) -> bool:
    try:
        h = json.loads(text)
    except ValueError:
        return False
    return isinstance(h, dict) and {"pid", "host", "since"} <= set(h)


def _read_holder(fd: int, raw: bool = False) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    if raw or not text:
        return text or ("holder unknown" if not raw else "")
    try:
        h = json.loads(text)
        return (
            f"pid {h.get('pid')} on host {h.get('host')}, since {h.get('since')}: "
            f"{h.get('purpose', 'run')}, command `{h.get('command')}`"
        )
    except (ValueError, AttributeError):
        return text[:200]


@contextmanager
def locked(run_dir, purpose: str = "run", read_only_ok: bool = False):
    """Hold the run directory's lock for the block (the directory is created if missing).

    ``read_only_ok`` (a reader writing elsewhere, e.g. ``abzflux export --out``): in a directory
    this process cannot write (an archived run), go on without the lock; no run of this user
    can write there either."""
    run_dir = Path(run_dir)
    make_dir(run_dir)
    try:
        lock = RunLock(run_dir, purpose).acquire()
    except FileSystemError:
        if not (read_only_ok and not os.access(run_dir, os.W_OK)):
            raise
        log.info("%s: not writable, read without a lock", run_dir)
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


def make_dir(path: Path) -> None:
    """Create a run directory and any missing parents (a file in the way, or a location that
    cannot be written, is a one-line error)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileSystemError(
            path, "is a file, not a directory", expected="a run directory (existing or new) for --out"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise FileSystemError(
                parent, "is a file, not a directory", where=f"a parent of {path}", expected="--out inside a directory"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if is_fs_error(e):
            raise fs_error(e, path, where="creating the run directory") from None
        raise


# --------------------------------------------------------------------------- ownership
def tree_files(path: Path) -> list[str]:
    """The files under a directory, as sorted relative POSIX paths."""
    return sorted(q.relative_to(path).as_posix() for q in path.rglob("*") if q.is_file() or q.is_symlink())


def tree_hash(path: Path, files: Iterable[str]) -> str:
    """SHA-256 of some files of a directory, computed as ``runner.file_hash`` computes it for
    the whole directory (relative path, then bytes, in sorted order)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(str(Path(rel)).encode())
        with open(path / rel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Ownership:
    """The manifest of one model set's directory (``<dir>/abzflux-owned.json``).

    ``paths`` maps a top-level name to None (a file), a list of relative file paths (a
    directory), ``"*"`` (work in progress) or ``"markers"`` (``stages/``)."""

    def __init__(self, set_dir, stage_names: Iterable[str] = ()):
        self.dir = Path(set_dir)
        self.file = self.dir / MANIFEST
        self.stage_names = set(stage_names)
        self.paths: dict[str, object] = {}
        self.legacy = False
        if self.file.exists():
            try:
                self.paths = dict(json.loads(self.file.read_text())["paths"])
            except (ValueError, KeyError, TypeError):
                raise NotOwned(
                    self.file,
                    "is not an abzflux ownership manifest (unreadable JSON)",
                    expected="the file abzflux wrote, or no such file",
                ) from None

    def save(self) -> None:
        if self.paths:
            write_json(
                self.file,
                {
                    "format": 1,
                    "about": "paths abzflux wrote into this directory (it deletes or "
                    "replaces only these); docs/reliability.md",
                    "paths": self.paths,
                },
            )
        else:
            self.file.unlink(missing_ok=True)

    # -- adopting a directory written before manifests existed
    def adopt_legacy(self, work_names: Iterable[str]) -> list[str]:
        """A directory with ``run.json`` or ``stages/`` but no manifest (abzflux < manifests):
        own ``run.json``, ``stages/``, the outputs named in the stage markers (a directory: the
        files whose digest reproduces the marker's; the others are left out, so they count as
        foreign), the report and default exports, and work in progress. Returns the problems
        found (a directory whose recorded files do not reproduce the digest)."""
        lay = RunLayout(self.dir)
        if self.file.exists() or not (lay.run_json.exists() or lay.stages.is_dir()):
            return []
        self.legacy = True
        problems = []
        for n in (L.RUN_JSON, L.RUN_JSON + ".tmp"):
            if (self.dir / n).is_file():
                self.paths[n] = None
        if lay.stages.is_dir():
            self.paths[L.STAGES] = MARKERS
        for m in sorted(lay.stages.glob("*.json")):
            try:
                rec = json.loads(m.read_text())
            except ValueError:
                continue
            t_marker = m.stat().st_mtime
            for o, digest in (rec.get("digest") or {}).items():
                p = self.dir / o
                if p.is_file() and not p.is_symlink():
                    self.paths[o] = None
                elif p.is_dir():
                    files = tree_files(p)
                    # outputs are renamed into place before their marker is written
                    old = [f for f in files if (p / f).stat().st_mtime <= t_marker + 1]
                    if tree_hash(p, old) == digest:
                        self.paths[o] = old
                    elif tree_hash(p, files) == digest:
                        self.paths[o] = files
                    else:
                        problems.append(
                            f"{p}: its files do not reproduce the digest recorded in {m} (changed "
                            "since abzflux wrote it)"
                        )
        for n in work_names:
            if n in self.paths or not (self.dir / n).exists():
                continue
            if n.endswith((".tmp", ".old")) or n == "upscale.partial":
                self.paths[n] = WORK
            elif n in ("report.html", "upscaled.nc") and (self.dir / n).is_file():
                self.paths[n] = None
            elif n == "report" and (self.dir / "report.html").is_file() and (self.dir / n).is_dir():
                self.paths[n] = [f for f in tree_files(self.dir / n) if f.endswith((".png", ".pdf"))]
            elif n == "geotiff" and (self.dir / n).is_dir():
                self.paths[n] = [f for f in tree_files(self.dir / n) if f.endswith(".tif") and "/" not in f]
        return problems

    # -- checks
    def problems(self, names: Iterable[str]) -> list[str]:
        """Each path among ``names`` that exists but was not written by abzflux, or a file
        inside an owned directory that the manifest does not list."""
        out = []
        for n in names:
            p = self.dir / n
            if not (p.exists() or p.is_symlink()):
                continue
            entry = self.paths.get(n, False)
            if entry is False:
                kind = "directory" if p.is_dir() else "file"
                out.append(f"{p}: a {kind} that abzflux did not write (not in {self.file.name})")
            elif entry is None:
                if p.is_dir() and not p.is_symlink():
                    out.append(f"{p}: a directory where abzflux wrote a file")
            elif entry == WORK:
                continue
            elif not p.is_dir() or p.is_symlink():
                out.append(f"{p}: a file where abzflux wrote a directory")
            elif entry == MARKERS:
                ok = {f"{s}.json" for s in self.stage_names} | {f"{s}.json.tmp" for s in self.stage_names}
                out += [f"{p / f}: a file that abzflux did not write" for f in tree_files(p) if f not in ok]
            else:
                listed = set(entry)  # type: ignore[call-overload]  # entry: the listed files (JSON list)
                out += [
                    f"{p / f}: a file that abzflux did not write, inside its output {n}/"
                    for f in tree_files(p)
                    if f not in listed
                ]
        return out

    # -- recording
    def pending(self, names: Iterable[str]) -> None:
        """Enter paths about to be written (before writing them): work in progress until
        :meth:`record` narrows them."""
        changed = False
        for n in names:
            if self.paths.get(n, False) != (MARKERS if n == "stages" else WORK):
                self.paths[n] = MARKERS if n == "stages" else WORK
                changed = True
        if changed:
            self.save()

    def record(self, names: Iterable[str]) -> None:
        """Narrow finished outputs to what is there now: a file, or a directory's file list;
        a name that no longer exists leaves the manifest."""
        for n in names:
            p = self.dir / n
            if n == "stages":
                if p.is_dir():
                    self.paths[n] = MARKERS
                continue
            if p.is_dir() and not p.is_symlink():
                self.paths[n] = tree_files(p)
            elif p.exists() or p.is_symlink():
                self.paths[n] = None
            else:
                self.paths.pop(n, None)
        self.save()

    def prune(self) -> None:
        """Forget entries whose path no longer exists (and a killed write's temporary manifest)."""
        (self.dir / (MANIFEST + ".tmp")).unlink(missing_ok=True)
        gone = [n for n in self.paths if not ((self.dir / n).exists() or (self.dir / n).is_symlink())]
        for n in gone:
            del self.paths[n]
        if gone:
            self.save()

    def delete(self, names: Iterable[str]) -> list[Path]:
        """Delete the owned paths among ``names`` (a directory with a file list: only the listed
        files, then the directories left empty; ``stages/``: only stage markers), in the order
        given (``stages`` first: no output ever looks finished without its marker)."""
        markers = {f"{s}.json" for s in self.stage_names} | {f"{s}.json.tmp" for s in self.stage_names}
        removed = []
        for n in dict.fromkeys(names):
            p = self.dir / n
            entry = self.paths.get(n, False)
            if entry is False or not (p.exists() or p.is_symlink()):
                self.paths.pop(n, None)
                continue
            if p.is_symlink() or not p.is_dir():
                if entry is None or entry == WORK:
                    p.unlink()
            elif entry == WORK:
                shutil.rmtree(p)
            elif entry is not None:
                victims = markers if entry == MARKERS else set(entry)  # type: ignore[call-overload]  # a JSON list
                for f in tree_files(p):
                    if f in victims:
                        (p / f).unlink()
                for d in sorted((q for q in p.rglob("*") if q.is_dir()), key=lambda q: -len(q.parts)):
                    if not any(d.iterdir()):
                        d.rmdir()
                if not any(p.iterdir()):
                    p.rmdir()
            if not (p.exists() or p.is_symlink()):
                removed.append(p)
                self.paths.pop(n, None)
            else:  # only files abzflux did not write are left in it: no longer abzflux's
                self.paths.pop(n, None)
        self.save()
        return removed

    def remove_tmp(self, names: Iterable[str]) -> None:
        """After a failed run: remove the temporary files and directories (``*.tmp``) that
        abzflux owns here and in ``stages/``, so that nothing partial is left beside a target."""
        for n in names:
            p = self.dir / n
            if n.endswith(".tmp") and self.paths.get(n, False) == WORK and (p.exists() or p.is_symlink()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in list((self.dir / "stages").glob("*.tmp")) + list((self.dir / "upscale.partial").rglob("*.tmp*")):
            p.unlink(missing_ok=True)
        self.prune()


def in_the_way(set_dirs: dict, names: Iterable[str]) -> None:
    """Refuse, naming the path, when any of ``names`` in any of ``set_dirs`` (set directory ->
    :class:`Ownership`) exists and was not written by abzflux (:meth:`Ownership.problems`)."""
    problems = []
    for own in set_dirs.values():
        problems += own.problems(names)
    if problems:
        more = (
            f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])}{' ...' if len(problems) > 4 else ''})"
            if len(problems) > 1
            else ""
        )
        raise NotOwned(
            problems[0].split(": ", 1)[0],
            problems[0].split(": ", 1)[1] + ", where abzflux would write or delete" + more,
            expected="only abzflux's own outputs at its output paths: move it out of the run directory, "
            "or use another --out",
        )


@contextmanager
def owning(set_dir, names, purpose: str = "output"):
    """Write ``names`` in ``set_dir`` as abzflux's: refuse if something else is there, enter
    them in the manifest before the block, record what they hold after it (also after a
    failure: what was written is abzflux's)."""
    own = Ownership(set_dir)
    names = list(names)
    problems = [
        p
        for p in own.adopt_legacy(names)  # only those about the paths written here
        if any(p.startswith(f"{Path(set_dir) / n}:") for n in names)
    ]
    if problems:
        raise NotOwned(
            problems[0].split(": ", 1)[0], problems[0].split(": ", 1)[1], expected=f"abzflux's own {purpose} there"
        )
    in_the_way({set_dir: own}, names)
    own.pending(names)
    try:
        yield own
    except BaseException:
        own.remove_tmp(names)  # e.g. report.tmp/ of a report that ran out of space
        raise
    finally:
        own.record(names)


def inside(a: Path, b: Path) -> bool:
    """Whether path ``a`` is ``b`` or lies under it (both resolved)."""
    a, b = Path(os.path.abspath(a)).resolve(), Path(os.path.abspath(b)).resolve()
    return a == b or b in a.parents


def check_inputs_outside_outputs(inputs: dict, set_dir: Path, names: Iterable[str]) -> None:
    """Refuse an input that lies at an output location of a model set (it would be replaced or
    deleted), or a run directory inside an input (a Zarr store, a directory of products)."""
    names = list(names)
    for k, v in inputs.items():
        for p in v if isinstance(v, list) else [v]:
            if inside(set_dir, p):
                raise NotOwned(
                    p,
                    f"input {k} contains the run directory {set_dir}",
                    column=f"inputs.{k}",
                    expected="--out outside every input",
                )
            for n in names:
                if inside(p, set_dir / n):
                    raise NotOwned(
                        p,
                        f"input {k} lies at an output location of the run ({set_dir / n}), which "
                        "the run would replace or delete",
                        column=f"inputs.{k}",
                        expected="inputs outside the run directory's output paths (move it, or use another --out)",
                    )
