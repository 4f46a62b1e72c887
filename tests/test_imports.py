"""The package's import graph has no circle: not in the command line, not between
the data contract and its kinds, not anywhere. Every import counts, those inside
functions too."""

import ast
from pathlib import Path

import loomray

ROOT = Path(loomray.__file__).parent

# The layers, lowest first: a module imports only from its own layer or lower ones
# (the longest prefix names a module's layer; `loomray` itself is its version).
LAYERS = [
    # paths, files written safely, the shipped presets and sweep files
    ["loomray", "loomray.paths", "loomray.files", "loomray.presets", "loomray.sweeps"],
    ["loomray.coupling", "loomray.flow", "loomray.cluster"],  # the method's parts, Ray's plumbing
    ["loomray.config", "loomray.models", "loomray.checkpoint"],
    ["loomray.data"],  # the contract and its kinds
    ["loomray.coupling.service", "loomray.latents"],  # the service (reads pairs), autoencoders
    ["loomray.evaluation"],
    ["loomray.train", "loomray.reflow"],
    ["loomray.sweep"],
    ["loomray.bench"],
    ["loomray.cli"],
    ["loomray.__main__"],
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each loomray module and the loomray modules it imports."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base]).strip(".")
                # `from package import module` imports the module
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [sub if sub in paths else base for sub in subs]
            else:
                continue
            out |= {t for t in targets if t in paths and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_command_lines_helpers_import_no_command_and_commands_no_other():
    graph = import_graph()
    commands = {m for m in graph if m.startswith("loomray.cli.") and m != "loomray.cli.common"}
    assert commands and "loomray.cli.common" in graph
    assert not {m for m in graph["loomray.cli.common"] if m.startswith("loomray.cli")}
    for module in commands:
        assert {m for m in graph[module] if m.startswith("loomray.cli")} <= {"loomray.cli.common"}


def test_no_import_circle():
    assert not circles(import_graph()), sorted(map(sorted, circles(import_graph())))


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_the_data_contract_imports_no_kind_and_every_kind_is_registered():
    from loomray.config import DATASETS
    from loomray.data import LOADERS

    graph = import_graph()
    assert not {m for m in graph["loomray.data.contract"] if m.startswith("loomray.data")}
    assert sorted(LOADERS) == sorted(DATASETS)


def layer_of(module: str) -> int | None:
    best, layer = "", None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            exact = module == p
            if (exact or (p != "loomray" and module.startswith(p + "."))) and len(p) > len(best):
                best, layer = p, i
    return layer


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    graph = import_graph()
    assert not [m for m in graph if layer_of(m) is None]
    upward = [(a, b) for a in graph for b in graph[a] if layer_of(b) > layer_of(a)]
    assert not upward, upward


# One concept per module, readable functions: the sizes the house keeps.
MOST_MODULE_LINES = 500
MOST_FUNCTION_LINES = 80


def test_no_module_or_function_outgrows_the_house():
    big, long = [], []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MOST_MODULE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MOST_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert not big and not long, big + long
