"""The package import graph is a line: every import (module level or inside a function) of intern_jax/
and kernels/ goes from a package to one listed before it in ``LAYERS``, and no two packages import
each other. docs/architecture.md draws the same order; change both together."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A package may import itself and the packages of earlier layers, never a later layer
# nor another package of its own layer. The keys are intern_jax's sub-packages and top-level modules,
# "kernels", and "intern_jax" for the package's own __init__ (the public face, built on everything).
LAYERS = (
    ("config",),
    ("kernels", "sharding", "tokenizer_conversion"),
    ("model", "tokenizer"),
    ("checkpoint",),
    ("inference",),
    ("cli",),
    ("data",),
    ("train",),
    ("serve", "eval", "agent"),
    ("testing", "intern_jax"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    return parts[1] if len(parts) > 1 else "intern_jax"


def project_modules() -> dict[str, Path]:
    files = sorted((ROOT / "intern_jax").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    return {module_name(f): f for f in files}


def imported_modules(module: str, path: Path, known) -> list[tuple[str, int]]:
    """``(project module, line)`` for every import in the file: module level, in functions, anywhere."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing module's package
                base = module.split(".")[: len(module.split(".")) - (path.name != "__init__.py") - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        out += [(name, node.lineno) for name in names if name.split(".")[0] in ("intern_jax", "kernels")]
    return out


def package_edges(modules: dict[str, Path]) -> dict[tuple[str, str], list[str]]:
    """``(importer package, imported package) -> ["module:line -> module", ...]`` across packages."""
    edges = defaultdict(list)
    for module, path in modules.items():
        for target, line in imported_modules(module, path, modules):
            a, b = package_of(module), package_of(target)
            if a != b:
                edges[(a, b)].append(f"{module}:{line} -> {target}")
    return edges


def find_cycle(edges) -> list[str] | None:
    """A cycle of packages (first package repeated at the end), or None."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def order_violations(edges) -> list[str]:
    bad = []
    for (a, b), where in sorted(edges.items()):
        if a not in RANK or b not in RANK:
            bad.append(f"{a if a not in RANK else b} is in no layer of LAYERS: add it (and to docs/architecture.md)")
        elif RANK[b] >= RANK[a]:
            bad.append(f"{a} imports {b}, which is not below it: {'; '.join(where[:3])}")
    return bad


@pytest.fixture(scope="module")
def edges():
    return package_edges(project_modules())


def test_the_package_import_graph_has_no_cycle(edges):
    cycle = find_cycle(edges)
    assert cycle is None, "package import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(
        w for a, b in zip(cycle, cycle[1:]) for w in edges[(a, b)][:3])


def test_every_import_goes_down_the_documented_order(edges):
    assert edges, "no imports between packages found: is the walk broken?"
    assert not order_violations(edges), "\n".join(order_violations(edges))


def test_every_package_has_a_place_in_the_order():
    missing = sorted({package_of(m) for m in project_modules()} - set(RANK))
    assert not missing, f"{missing} are in no layer of LAYERS (tests/test_imports.py and docs/architecture.md)"


def test_the_checks_catch_a_cycle_and_an_upward_import():
    planted = {("checkpoint", "train"): ["a"], ("train", "checkpoint"): ["b"]}
    assert find_cycle(planted) in (["checkpoint", "train", "checkpoint"], ["train", "checkpoint", "train"])
    assert len(order_violations(planted)) == 1 and "checkpoint imports train" in order_violations(planted)[0]
    assert find_cycle({("train", "data"): [], ("data", "checkpoint"): []}) is None
