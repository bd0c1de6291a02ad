"""The package's layers, read from the source: imports only point down, argparse only in the CLI.

    errors -> {images | folders | provenance | notices | progress | hub} -> teachers -> core -> {training | pipelines | eval | baselines}
           -> apps -> cli

Peers (training, pipelines, eval, baselines) never import each other. Every import counts: module level,
inside functions and under TYPE_CHECKING.

Inside `sfd.apps` the same rule keeps the floor plan: rooms import only rooms below them, and the
three applications are leaves that never import each other.

    data -> teachers -> harness -> {demo | compare | demo_text}
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "sfd"
LAYERS = {  # top-level part of sfd -> rank; a module may import only lower ranks or its own part
    "errors": 0,
    "images": 1,
    "folders": 1,
    "provenance": 1,
    "notices": 1,
    "progress": 1,
    "hub": 1,
    "teachers": 2,
    "core": 3,
    "training": 4,
    "pipelines": 4,
    "eval": 4,
    "baselines": 4,
    "apps": 5,
    "cli": 6,
}
CLI_ONLY = {"argparse"}  # only the command line parses command lines


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    source = path.read_text(encoding="utf-8") if source is None else source
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def part_of(module: str) -> str:
    """The layer part of an sfd module name: sfd.core.module -> core."""
    return module.split(".")[1]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")
KNOWN = {module_name(p) for p in SOURCES}


def sfd_imports(path: Path) -> set[str]:
    """The sfd modules `path` imports (names of objects imported from them are dropped)."""
    return {m for m in imported_modules(path) if m in KNOWN}


def test_every_module_belongs_to_a_layer() -> None:
    assert {part_of(m) for m in KNOWN} <= set(LAYERS), sorted({part_of(m) for m in KNOWN})


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    here = part_of(module_name(path))
    upward = [
        target
        for target in sfd_imports(path)
        if part_of(target) != here and LAYERS[part_of(target)] >= LAYERS[here]
    ]
    assert not upward, f"{module_name(path)} ({here}) imports {sorted(upward)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_only_the_cli_parses_command_lines(path: Path) -> None:
    used = imported_modules(path) & CLI_ONLY
    assert part_of(module_name(path)) == "cli" or not used, f"{module_name(path)} imports {used}"


def test_the_checker_sees_violations() -> None:
    """Relative, function-level and argparse imports are all seen (so the tests above can fail)."""
    probe = REPO / "sfd" / "core" / "probe.py"  # a name inside the tree; never written
    source = "def f():\n    from ..cli import main\n    import argparse\nfrom . import module\n"
    found = imported_modules(probe, source)
    assert {"sfd.cli", "sfd.cli.main", "argparse", "sfd.core.module"} <= found
    assert LAYERS[part_of("sfd.cli")] >= LAYERS[part_of(module_name(probe))]


def layer_graph() -> dict[str, set[str]]:
    """Which layer part imports which (for the README's Development section)."""
    graph: dict[str, set[str]] = {part: set() for part in LAYERS}
    for path in SOURCES:
        here = part_of(module_name(path))
        graph[here] |= {part_of(t) for t in sfd_imports(path)} - {here}
    return graph


APP_ROOMS = {  # sfd.apps.<room> -> rank; a room imports only lower ranks or itself
    "data": 0,  # labelled images and captioned sets
    "teachers": 1,  # training the teachers the applications forget from
    "harness": 2,  # what every application shares: settings, cache, phases, stages, methods, reports
    "demo": 3,  # the applications: leaves
    "compare": 3,
    "demo_text": 3,
}
APP_SOURCES = [p for p in SOURCES if part_of(module_name(p)) == "apps"]


def room_of(module: str) -> str:
    """The room of an sfd.apps module: sfd.apps.harness.stages -> harness."""
    parts = module.split(".")
    assert len(parts) >= 3, f"{module} sits outside every room of sfd.apps"
    return parts[2]


def test_every_apps_module_is_in_a_room() -> None:
    names = [module_name(p) for p in APP_SOURCES if module_name(p) != "sfd.apps"]
    rooms = {room_of(name) for name in names}
    assert rooms <= set(APP_ROOMS), sorted(rooms - set(APP_ROOMS))


@pytest.mark.parametrize("path", APP_SOURCES, ids=lambda p: module_name(p))
def test_apps_rooms_import_down_and_applications_are_leaves(path: Path) -> None:
    name = module_name(path)
    if name == "sfd.apps":
        return
    here = room_of(name)
    upward = [
        target
        for target in sfd_imports(path)
        if part_of(target) == "apps"
        and target != "sfd.apps"
        and room_of(target) != here
        and APP_ROOMS[room_of(target)] >= APP_ROOMS[here]
    ]
    assert not upward, f"{name} ({here}) imports {sorted(upward)}"


def test_the_room_checker_sees_a_leaf_importing_a_leaf() -> None:
    probe = REPO / "sfd" / "apps" / "demo_text" / "probe.py"  # never written
    found = imported_modules(probe, "from sfd.apps.demo.run import run_demo\n")
    assert "sfd.apps.demo.run" in found
    assert room_of("sfd.apps.demo.run") != room_of(module_name(probe))
    assert APP_ROOMS[room_of("sfd.apps.demo.run")] >= APP_ROOMS[room_of(module_name(probe))]


def test_layer_graph_is_acyclic() -> None:
    graph = layer_graph()
    order = sorted(LAYERS, key=LAYERS.get)
    for part in order:
        assert all(LAYERS[target] < LAYERS[part] for target in graph[part]), (part, graph[part])
