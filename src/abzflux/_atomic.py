"""Crash-safe writes: an output path holds either the complete old output, the complete new
one, or nothing; never a half-written or half-deleted one (docs/reliability.md)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def writing(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file opened under a temporary name; on leaving the block it is flushed to disk and
    renamed into place, or removed if the block raised (e.g. disk full)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # no partial temporary file is left beside the target
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a small text file under a temporary name, flush it to disk and rename it into place."""
    with writing(path) as fh:
        fh.write(text)


def replace(tmp: Path, final: Path) -> None:
    """Move a finished temporary output (file or directory) into place.

    A file is renamed over the old one (atomic). A directory cannot be renamed over a non-empty
    one, so the old directory is first renamed aside (``<name>.old``, atomic) and deleted only
    after the new one is in place: a kill leaves the final path complete-old, absent or
    complete-new, and a leftover ``.old`` is removed on the next replace or by ``--restart``."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        if final.exists() and Path(tmp).is_dir():  # a file where a directory goes: a rename cannot replace it
            final.unlink()
        os.replace(tmp, final)
