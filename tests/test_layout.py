"""The layout's rules (docs/architecture.md), checked on the source tree.

Imports are read with `ast` from every module under device/ and server/,
including imports inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "device", REPO / "server")

# Layers, lowest first. A module may import its own layer and the ones below;
# `server.cli` sits on top and nothing but itself imports it.
LAYERS = (
    ("core", "trustfleet_device"),
    ("cpython", "trustfleet_device._cpython"),
    ("transports", "trustfleet_device.transports"),
    ("pi", "trustfleet_pi"),
    ("server", "trustfleet_server"),
    ("cli", "trustfleet_server.cli"),
)
ALLOWED = {
    "core": {"core"},
    # The cbor2 path registers itself with the core decoder; host files are shared helpers.
    "cpython": {"core", "cpython"},
    "transports": {"core", "transports"},
    "pi": {"core", "cpython", "transports", "pi"},
    # The demo drives the Pi agent's command line; the simulator runs real device agents.
    "server": {"core", "cpython", "transports", "pi", "server"},
    "cli": {"core", "cpython", "transports", "pi", "server", "cli"},
}
# The one import against the layers: on CPython the package registers the cbor2
# decoder with the core's cbor module (an optional plug-in, absent on boards).
EXCEPTIONS = {("trustfleet_device", "trustfleet_device._cpython.cbor")}
# What the device core may never import: it does no I/O of its own.
IO_MODULES = {"os", "socket", "ssl", "select", "io", "pathlib", "subprocess", "threading",
              "asyncio", "network", "machine", "tls", "vfs", "shutil", "tempfile"}


def module_name(path: Path) -> str:
    for root in ROOTS:
        if root in path.parents:
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise AssertionError(path)


def sources() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            if path.parts[len(root.parts)].startswith("trustfleet_"):
                found[module_name(path)] = path
    return found


MODULES = sources()


def imports_of(name: str) -> set[str]:
    """Absolute module names `name` imports (first-party ones resolved to a module)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = base + "." + a.name
                out.add(full if full in MODULES else base)
    return out


def layer(name: str) -> str | None:
    best = None
    for label, prefix in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            best = label
    return best


def first_party(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in ("trustfleet_device", "trustfleet_pi",
                                                     "trustfleet_server")}


def test_the_tree_has_the_layers_it_claims():
    for _, prefix in LAYERS:
        assert prefix in MODULES, prefix


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name):
    mine = layer(name)
    for dep in first_party(imports_of(name)):
        if (name, dep) in EXCEPTIONS:
            continue
        assert layer(dep) in ALLOWED[mine], f"{name} ({mine}) imports {dep} ({layer(dep)})"


CLI_SHARED = "trustfleet_server.cli.common"  # options and printing shared by command groups


def test_command_groups_do_not_import_each_other():
    """Only cli/__init__.py wires the groups together; a group may use cli/common.py."""
    for name in MODULES:
        for dep in first_party(imports_of(name)):
            if layer(dep) != "cli" or dep in ("trustfleet_server.cli", CLI_SHARED):
                continue
            assert name in ("trustfleet_server.cli", "trustfleet_server.cli.__main__"), \
                f"{name} imports the command module {dep}"


def test_nothing_but_the_testing_package_imports_it_and_only_its_plugin_imports_pytest():
    """trustfleet_server.testing (trustfleet[testing]) sits on the library: the library, the CLI
    and the device never depend on it, and pytest is needed only by the plugin module."""
    testing = "trustfleet_server.testing"
    for name in MODULES:
        deps = imports_of(name)
        if not (name == testing or name.startswith(testing + ".")):
            assert not [d for d in deps if d == testing or d.startswith(testing + ".")], name
        if name != testing + ".plugin":
            assert "pytest" not in {d.split(".")[0] for d in deps}, name


def test_cli_common_holds_no_command_group():
    assert not {d for d in first_party(imports_of(CLI_SHARED)) if layer(d) == "cli"}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "core"))
def test_the_device_core_does_no_io(name):
    stdlib = {d.split(".")[0] for d in imports_of(name)} - {"trustfleet_device"}
    assert not stdlib & IO_MODULES, f"{name} imports {sorted(stdlib & IO_MODULES)}"
    tree = ast.parse(MODULES[name].read_text())
    calls = {n.func.id for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls, f"{name} calls open()"


def test_no_import_circles():
    graph = {n: {d for d in first_party(imports_of(n)) if d in MODULES and d != n} for n in MODULES}
    # A package's __init__ importing one of its own modules is how Python packages
    # work; the module importing the package back (`from pkg import x`) is an edge
    # to x, not to __init__, so circles through __init__ are real ones too.
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support/; a test module is never a fixture library."""
    tests = REPO / "tests"
    names = {p.stem for p in tests.glob("test_*.py")}
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                used = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                used = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not used & names, f"{path.name} imports {sorted(used & names)}"
