"""The floor plan holds: no import cycles, dependencies one way, whole classes in whole files.

The rules are the layout decisions of the design docs
(one class per module, subpackages by domain, core <- pool <- routing -> notify,
server <- cli). Every import counts, type-only and function-local ones
included, since a type-only cycle between a module and its helper is exactly
what a class split into slices looks like.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "gdbpool")
#: The one accepted cycle: an actor and its ref know each other.
ACCEPTED_CYCLES = [{"actors.actor", "actors.ref"}]
#: Subpackage -> the gdbpool subpackages it may import (the core may always be imported).
ALLOWED = {
    "core": set(),
    "pool": set(),
    "notify": set(),
    "server": set(),
    "routing": {"pool", "notify"},
    "metrics": {"pool", "routing", "notify"},
    "cli": {"pool", "routing", "notify", "server", "metrics"},
    "root": {"pool", "routing", "notify", "server", "cli", "metrics"},  # __init__ and __main__
}
SUBPACKAGES = {"pool", "routing", "notify", "server", "cli", "metrics"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module ``name`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    seen: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        seen.update(t for t in targets if t in MODULES and t != name)
    return seen


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in GRAPH[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "gdbpool":
        return "actors"
    if len(parts) == 1 or parts[1] == "__main__":
        return "root"
    return parts[1] if parts[1] in SUBPACKAGES else "core"


def test_the_only_import_cycle_is_an_actor_and_its_ref() -> None:
    cycles = _cycles()
    assert all(cycle in ACCEPTED_CYCLES for cycle in cycles), cycles


def test_the_graph_sees_type_only_and_local_imports() -> None:
    # The walker must see what a type-only cycle is made of, or the test above proves nothing.
    assert "actors.actor" in GRAPH["actors.ref"]  # under `if TYPE_CHECKING:`
    assert "gdbpool.notify.hub" in GRAPH["gdbpool.cli.notify"]  # inside a function


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gdbpool")))
def test_dependencies_point_one_way(module: str) -> None:
    area = _area(module)
    wrong = sorted(
        target
        for target in GRAPH[module]
        if target.startswith("gdbpool")
        and _area(target) not in ("core", area)
        and _area(target) not in ALLOWED[area]
    )
    assert not wrong, f"{module} ({area}) must not import {wrong}"


def test_the_actor_kit_knows_nothing_of_databases() -> None:
    assert not {t for name in MODULES if name.startswith("actors") for t in GRAPH[name]} - {
        m for m in MODULES if m.startswith("actors")
    }


def test_no_private_module_holds_a_slice_of_another_class() -> None:
    # Internals are private by living in a subpackage users never import, not by a
    # leading underscore; an _x.py module was how a class got split into slices.
    sliced = sorted(
        str(path.relative_to(ROOT))
        for path in MODULES.values()
        if path.name.startswith("_") and path.name not in ("__init__.py", "__main__.py")
    )
    assert not sliced
