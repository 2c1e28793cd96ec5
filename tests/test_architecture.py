"""The layout of the code (docs/architecture.md): the generated stage table matches the steps'
specs, imports go one way through the layers, and only the CLI prints."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from abzflux.steps import STEPS, stage_table
from abzflux.steps.__main__ import BEGIN, END, replace_table

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "abzflux"
DOC = ROOT / "docs" / "architecture.md"

#: Layer of each module, bottom (0) to top; a module imports only from its own layer or below.
LAYERS = {
    0: {"vocab", "seeds", "errors", "config", "predictors", "units", "progress", "__init__"},
    1: {"formats", "abcflux", "_atomic", "arrayfile", "rundir", "layout"},
    2: {
        "_rf",
        "forest",
        "cv",
        "uncertainty",
        "network",
        "upscale",
        "budgets",
        "coverage",
        "fire",
        "lmm",
        "trends",
        "compare",
        "summary",
        "insitu",
        "plots",
        "twin",
        "twin_network",
        "twin_raw",
        "domain",
    },
    3: {"context", "checks", "steps", "prepare"},
    4: {"runner", "sensitivity"},
    5: {"cli", "calibrate", "attribution", "report", "pipeline"},
}
LEVEL = {m: k for k, ms in LAYERS.items() for m in ms}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    """The abzflux modules (top-level names under the package) a file imports, anywhere in it."""
    base = path.relative_to(SRC).parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(base[: len(base) - node.level + 1]) + (node.module.split(".") if node.module else [])
                if parts:
                    out.add(parts[0])
                else:  # `from . import x`: a module, or a name of the package's __init__
                    out |= {
                        a.name if (SRC / f"{a.name}.py").exists() or (SRC / a.name).is_dir() else "__init__"
                        for a in node.names
                    }
            elif node.module and node.module.startswith("abzflux."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("abzflux.")}
    return out


def test_the_stage_table_in_the_docs_is_generated_from_the_specs():
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert text == replace_table(text), "docs/architecture.md is stale: python -m abzflux.steps docs/architecture.md"
    assert stage_table() in text


def test_every_module_has_a_layer_and_imports_go_down():
    files = sorted(SRC.rglob("*.py"))
    bad = []
    for f in files:
        m = _module(f)
        assert m in LEVEL, f"{m} is in no layer of tests/test_architecture.py (docs/architecture.md)"
        for dep in _imports(f) - {m}:
            assert dep in LEVEL, f"{f.name} imports {dep}, which is in no layer"
            if LEVEL[dep] > LEVEL[m]:
                bad.append(f"{f.relative_to(SRC)} (layer {LEVEL[m]}) imports {dep} (layer {LEVEL[dep]})")
    assert not bad, "\n".join(bad)


def test_every_module_is_in_the_docs():
    text = DOC.read_text()
    for f in SRC.glob("*.py"):
        if f.name != "__init__.py":
            assert f"`{f.name}`" in text, f"{f.name} missing from docs/architecture.md"


def test_steps_read_what_upstream_stages_write():
    by_name = {st.name: st for st in STEPS}
    seen: list[str] = []
    for st in STEPS:
        assert set(st.depends) <= set(seen), f"{st.name} runs before its upstream stages"
        up, todo = set(), list(st.depends)
        while todo:
            d = todo.pop()
            if d not in up:
                up.add(d)
                todo += by_name[d].depends
        written = {o for d in up for o in by_name[d].writes + by_name[d].extras}
        for r in st.reads:
            assert r.split("/")[0] in written, f"{st.name} reads {r}, which no upstream stage writes"
        seen.append(st.name)


def test_only_the_cli_prints():
    found = [
        f"{f.relative_to(SRC)}:{i}"
        for f in SRC.rglob("*.py")
        if f.name != "cli.py"
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if re.search(r"(?<![\w.])print\(", line)
    ]
    assert not found, found


def test_the_compatibility_module_re_exports_the_new_names():
    import abzflux.pipeline as pl
    from abzflux import runner, steps

    assert all(hasattr(pl, n) for n in pl.__all__)
    assert pl.run_study is runner.run_study and pl.build_stages() == list(STEPS)
    for st in STEPS:
        assert getattr(pl, f"stage_{st.name}") is getattr(steps, st.name).run
