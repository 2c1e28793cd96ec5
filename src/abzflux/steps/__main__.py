"""``python -m abzflux.steps FILE``: rewrite the generated stage table in FILE (docs/architecture.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import stage_table

BEGIN = "<!-- stage table: generated from abzflux.steps; do not edit by hand -->"
END = "<!-- end of stage table -->"


def replace_table(text: str) -> str:
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + stage_table() + END + tail


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(replace_table(path.read_text()))
