"""The package's import graph, read from the code with ``ast``: no circle, and every import points
down (or sideways within a layer) in the declared layer list. The list is also the README's layout
table's; a new module must be placed in a layer here before the suite passes."""
from __future__ import annotations

import ast
from pathlib import Path

from zephyr_lib.config import REPO

PKG = REPO / "zephyr_lib"

# Bottom to top. A module may import modules of its own layer or of the layers below it, never above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"io", "results", "stage", "agent", "config", "tables", "sphinx_offline_math"}),
    ("library", {"store", "modeling", "curate", "feedback", "judges", "generate", "vllm_backend", "agents", "pool",
                 "ultrachat", "trl_shared", "launch", "evals", "toyworld", "preflight"}),
    ("stages", {"stages"}),
    ("trainers", {"sft", "dpo"}),
    ("plan", {"plan"}),
    ("commands", {"runner", "page", "launch_cli", "book", "bench", "fetch", "__main__"}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (at any depth of the file, type-checking blocks included)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out |= subs if subs and len(subs) == len(node.names) else subs | ({base} & modules)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names} & modules
    return out - {name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py (nor of the README's layout table)")


def test_every_import_points_down_or_sideways():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in graph().items() if m != "zephyr_lib" for t in sorted(targets)
              if t != "zephyr_lib" and layer_of(t) > layer_of(m)]
    assert upward == []


def test_the_import_graph_has_no_circle():
    g = graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [m, t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert circles == []


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("zephyr_lib")):
                found += [f"{module_name(path)}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def test_the_graph_reader_sees_imports():  # the two tests above are only as good as this reader
    g = graph()
    assert {"zephyr_lib.config", "zephyr_lib.io"} <= g["zephyr_lib.store"]
    assert "zephyr_lib.stages" in g["zephyr_lib.plan"] and "zephyr_lib.stage" in g["zephyr_lib.stages.sft"]
    assert "zephyr_lib.evals.mt_bench" in g["zephyr_lib.evals.toy_prompts"]


def test_the_readme_lists_the_layers():
    (row,) = [line for line in (REPO / "README.md").read_text().splitlines() if "**foundation**" in line]
    for name, members in LAYERS:
        assert f"**{name}**" in row and all(f"`{m}`" in row for m in members), f"README's layers row: {name}"
    positions = [row.index(f"**{name}**") for name, _ in LAYERS]
    assert positions == sorted(positions)  # in the same order
