"""The package order of docs/architecture.md holds: imports go down, never up or sideways, and never in a circle.

The source is parsed, not imported, so every import counts: top-level, inside functions, and
under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "speech_emotion"

LAYERS = [
    ("errors", "atomic", "progress", "version"),
    ("data",),
    ("features",),
    ("model",),
    ("inference", "tracking", "reports"),
    ("training",),
    ("export", "serving", "remote", "monitor"),
    ("cli",),
]
"""Each top-level module or sub-package of speech_emotion, lowest layer first (docs/architecture.md).
A module may import from its own package and from packages of lower layers only."""

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (``speech_emotion.data.audio``)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every import of a speech_emotion module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                yield node.lineno, target, [alias.name for alias in node.names]


def edges(found: dict[str, Path]) -> Iterator[tuple[str, int, str, list[str]]]:
    """``(importer, line, imported module, names)``: an imported name that is a module counts as that module."""
    for name, path in found.items():
        for line, target, names in imports(name, path):
            submodules = [n for n in names if f"{target}.{n}" in found]
            for sub in submodules:
                yield name, line, f"{target}.{sub}", []
            if len(submodules) < len(names) or not names:
                yield name, line, target, [n for n in names if n not in submodules]


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def upward_imports(found: dict[str, Path]) -> list[str]:
    wrong = []
    for importer, line, target, _ in edges(found):
        source, destination = layer_of(importer), layer_of(target)
        if source == destination or source == "<root>":
            continue
        if destination == "<root>" or RANK.get(destination, len(LAYERS)) >= RANK.get(source, len(LAYERS)):
            where = "the package root" if destination == "<root>" else f"layer {RANK.get(destination)}"
            wrong.append(
                f"{found[importer].name}:{line}: {source} (layer {RANK.get(source)}) imports {target} ({where})"
            )
    return wrong


def private_imports(found: dict[str, Path]) -> list[str]:
    return [
        f"{found[importer].name}:{line}: from {target} import {name}"
        for importer, line, target, names in edges(found)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != importer
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_cycles(found: dict[str, Path], level: str) -> list[list[str]]:
    """Cycles of imports between modules, or between packages (``level="package"``)."""
    graph: dict[str, set[str]] = {}
    for importer, _, target, _ in edges(found):
        if level == "package":
            importer, target = layer_of(importer), layer_of(target)
        if importer != target:
            graph.setdefault(importer, set()).add(target)
    return cycles(graph)


def test_every_package_has_a_layer():
    unplaced = sorted({layer_of(m) for m in modules()} - set(RANK) - {"<root>"})
    assert not unplaced, f"add {unplaced} to LAYERS here and to the table in docs/architecture.md"


def test_imports_only_go_down():
    wrong = upward_imports(modules())
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_no_private_name_of_another_module_is_imported():
    wrong = private_imports(modules())
    assert not wrong, "private names imported from other modules:\n" + "\n".join(wrong)


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
    found = import_cycles(modules(), level)
    assert not found, f"import cycles between {level}s: " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_checks_find_each_kind_of_violation(tmp_path):
    """A made-up package with upward imports, a sideways one, a private name, a module and a package cycle."""
    files = {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/audio.py": "from speech_emotion.training.loop import fit\n",  # up
        "features/__init__.py": "",
        "features/store.py": "def f():\n    from speech_emotion.model.head import Head\n",  # up, lazily
        "inference/__init__.py": "",
        "inference/predictor.py": "import speech_emotion.reports.page\n",  # sideways
        "reports/__init__.py": "",
        "reports/page.py": "",
        "model/__init__.py": "",
        "model/head.py": "from ..data.audio import _check\n",  # private (relative import)
        "training/__init__.py": "",
        "training/loop.py": "from speech_emotion.training import pipeline\n",
        # two cycles: training.loop ↔ training.pipeline (modules), and data ↔ training (packages)
        "training/pipeline.py": "import speech_emotion.training.loop\nfrom speech_emotion.data import audio\n",
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = modules(tmp_path)
    assert [line.split(": ", 1)[1] for line in upward_imports(found)] == [
        "data (layer 1) imports speech_emotion.training.loop (layer 5)",
        "features (layer 2) imports speech_emotion.model.head (layer 3)",
        "inference (layer 4) imports speech_emotion.reports.page (layer 4)",
    ]
    assert private_imports(found) == ["head.py:1: from speech_emotion.data.audio import _check"]
    assert import_cycles(found, "module") == [
        ["speech_emotion.data.audio", "speech_emotion.training.loop", "speech_emotion.training.pipeline"]
    ]
    assert import_cycles(found, "package") == [["data", "training"]]
