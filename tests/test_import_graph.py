"""The package's layers, read from the source (ast, nothing imported): no import cycle, no import running up a
layer, and nothing outside the CLI imports the CLI.

Every import counts, also those inside functions: a lazy import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# layer of each top-level part of flexrealign: a module may import its own part and lower layers only.
# Parts on one layer do not import each other.
LAYERS: dict[str, int] = {
    "core": 0,  # the maths and the models
    "decoding": 1,  # the dial, sampling, the one decode step, generate()
    "conversion": 1,  # the one loader, GGUF and llama2.c conversion
    "": 2,  # flexrealign/__init__.py: the public API, re-exported from core and decoding
    "eval": 2,
    "serving": 2,
    "vllm_plugin": 2,
    "training": 3,  # data selection grades with eval's harness
    "testbed": 4,
    "commands": 5,
    "cli": 6,
}
CLI = ("flexrealign.cli", "flexrealign.commands")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The flexrealign modules `name` imports (a `from pkg import mod` names the module itself)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def part(name: str) -> str:
    """The layer key of a module: flexrealign.core.fusion -> core; flexrealign -> ''."""
    return name.split(".")[1] if "." in name else ""


def test_the_graph_is_read():
    assert len(MODULES) > 50 and "flexrealign.core.fusion" in GRAPH["flexrealign.decoding.step"]
    assert set(map(part, MODULES)) == set(LAYERS), "a new top-level part needs its layer in LAYERS"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_nothing_outside_the_cli_imports_the_cli():
    bad = [
        f"{m} -> {i}" for m, deps in GRAPH.items() if not m.startswith(CLI) for i in deps if i.startswith(CLI)
    ]
    assert not bad, bad


@pytest.mark.parametrize("layer", sorted(set(LAYERS) - {"cli", "commands"}))
def test_no_import_runs_up_a_layer(layer):
    bad = [
        f"{m} -> {i}"
        for m, deps in GRAPH.items()
        if part(m) == layer
        for i in deps
        if part(i) != layer and LAYERS[part(i)] >= LAYERS[layer]
    ]
    assert not bad, bad
