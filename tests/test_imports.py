"""The house's import rules: no import circles between charmlp's modules, and no import from a
lower floor to a higher one, with the floors read from docs/architecture.md's table.

Every import counts — at module level and inside functions, relative and absolute — except those
under `if TYPE_CHECKING:` (type hints only; they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import SRC

PKG = Path(SRC) / "charmlp"
ARCHITECTURE = Path(SRC).parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, skipping the bodies of `if TYPE_CHECKING:`."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def imports_of(name: str, source: str) -> set[str]:
    """The charmlp modules that module `name` imports (`from . import x` → the submodule x)."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a → … → a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def floors() -> dict[str, int]:
    """docs/architecture.md's table: first-level name below charmlp (module or package) → floor."""
    out = {}
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]+)\|", line)
        if m:
            for name in m.group(2).split(","):
                out[name.strip().replace("\\_", "_")] = int(m.group(1))
    return out


def floor_key(module: str) -> str:
    """charmlp → "__init__"; charmlp.models.mlp → "models"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    return sorted(f"{a} (floor {table[floor_key(a)]}) imports {b} (floor {table[floor_key(b)]})"
                  for a, targets in graph.items() for b in targets
                  if table[floor_key(b)] > table[floor_key(a)])


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_every_module_has_a_floor_in_the_architecture_doc() -> None:
    missing = sorted({floor_key(m) for m in MODULES} - set(floors()))
    assert not missing, f"docs/architecture.md's floors table does not place {missing}"


def test_no_import_from_a_lower_floor_to_a_higher_one() -> None:
    bad = upward_imports(import_graph(), floors())
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("planted, rule", [
    ("def f():\n    from .cli import main\n", "upward"),  # config (floor 1) → cli (floor 7), inside a function
    ("from .models import MODELS\n", "cycle"),  # config → models → config
])
def test_the_checks_catch_a_planted_import(planted: str, rule: str) -> None:
    graph = import_graph()
    graph["charmlp.config"] = graph["charmlp.config"] | imports_of(
        "charmlp.config", MODULES["charmlp.config"].read_text(encoding="utf-8") + "\n" + planted)
    if rule == "upward":
        assert any(line.startswith("charmlp.config (floor 1) imports charmlp.cli") for line in upward_imports(graph, floors()))
    else:
        cycle = find_cycle(graph)
        assert cycle is not None and "charmlp.config" in cycle


def test_type_checking_imports_do_not_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import main\n"
    assert imports_of("charmlp.config", source) == set()
