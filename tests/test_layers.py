"""The package's layering, read from the source with ast (no import is executed).

Layers, bottom to top (docs/architecture.md): an aceserver module may import modules of its own
layer or below, never above; no import cycle between files; `aceserver` imports inside functions
only in the CLI (`cli.py`, `commands/`), whose sub-commands import lazily to start fast; `models/`
holds model folders only (scripts live in tools/).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aceserver"

# first match wins: (module prefix, layer)
LAYERS = [
    ("aceserver.errors", 0), ("aceserver.structure", 0),
    ("aceserver.kernels", 1),
    ("aceserver.basis", 2), ("aceserver.io", 2), ("aceserver.benchmarking", 2),
    ("aceserver.evaluation", 3),
    ("aceserver.ace1", 4), ("aceserver.pacemaker", 4),
    ("aceserver.loading", 5), ("aceserver.catalogue", 5), ("aceserver.active_sets", 5),
    ("aceserver.calculator", 6), ("aceserver.fitting", 6),
    ("aceserver.jobs", 7), ("aceserver.learning", 7),
    ("aceserver.serving", 8),
    ("aceserver.commands", 9), ("aceserver.cli", 9),
]
# deprecated re-exports of old import paths, kept for one release: they import upwards by design
SHIMS = {"aceserver.model"}
LAZY_ALLOWED = ("aceserver.cli", "aceserver.commands")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/architecture.md")


def lazy_names() -> dict[str, str]:
    """`aceserver/__init__.py`'s _LAZY map: `from aceserver import load_model` is an import of the
    module that defines it (plain `import aceserver`, for `__version__`, imports nothing)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY":
            return ast.literal_eval(node.value)
    return {}


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]):
    """(target module, line, inside a function) for every aceserver import of a file."""
    tree = ast.parse(path.read_text(), str(path))
    lazy = lazy_names()
    is_pkg = path.name == "__init__.py"
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known
                       else lazy.get(a.name, prefix) if prefix == "aceserver" else prefix
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t.startswith("aceserver") and t != name:
                yield t, node.lineno, id(node) in in_function


def graph():
    mods = modules()
    known = set(mods)
    return mods, {m: list(imports(m, p, known)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in modules():
        if m != "aceserver" and m not in SHIMS:
            layer(m)


def test_imports_go_down_the_layers():
    _, edges = graph()
    bad = [f"{m}:{line} imports {t} (layer {layer(t)} above {layer(m)})"
           for m, targets in edges.items() if m != "aceserver" and m not in SHIMS
           for t, line, _ in targets if t != "aceserver" and layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_kernels_import_only_kernels_and_errors():
    _, edges = graph()
    bad = [f"{m} imports {t}" for m, targets in edges.items() if m.startswith("aceserver.kernels")
           for t, _, _ in targets
           if not (t.startswith("aceserver.kernels") or t == "aceserver.errors")]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    _, edges = graph()
    # a package's __init__ re-exporting its own submodules is not a cycle of files
    adj = {m: {t for t, _, _ in ts if not t.startswith(m + ".") and t != "aceserver"}
           for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(v, stack):
        state[v] = 1
        stack.append(v)
        for w in sorted(adj.get(v, ())):
            if state.get(w) == 1:
                cycles.append(" -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w, stack)
        stack.pop()
        state[v] = 2

    for v in sorted(adj):
        if v not in state:
            visit(v, [])
    assert not cycles, "\n".join(cycles)


def test_no_aceserver_imports_inside_functions_outside_the_cli():
    _, edges = graph()
    bad = [f"{m}:{line} imports {t} inside a function" for m, targets in edges.items()
           if not m.startswith(LAZY_ALLOWED) for t, line, lazy in targets if lazy]
    assert not bad, "\n".join(bad)


def test_models_holds_model_folders_only():
    stray = [p.name for p in (ROOT / "models").iterdir() if p.is_file() and p.suffix == ".py"]
    assert not stray, f"scripts in models/: {stray} (tools/ is their home)"
