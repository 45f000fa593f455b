"""Issue 23: the house has one way through. Every module's imports are read with `ast` (module-level and
function-level alike, without importing anything), then:

- no library module imports `richkd.cli` (only `richkd.cli` itself and `richkd.__main__` may);
- the graph of module-level imports has no cycle, and neither has the graph with function-level imports added;
- every package (`__init__.py`) opens with a docstring saying what it owns.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "richkd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, importer: str, is_package: bool, level: int) -> str:
    """An import's absolute module name (relative imports resolved against the importer)."""
    if level == 0:
        return name
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _known(name: str) -> str | None:
    """The richkd module an imported name lives in (`richkd.a.b.func` -> `richkd.a.b`), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(module-level imports, function-level imports) of a richkd module, as richkd module names.

    Module level includes `if TYPE_CHECKING:` blocks only when they run (they do not), so those are skipped;
    `from X import Y` counts X.Y when Y is a submodule, else X.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub, in_function)
                continue
            visit_stmt(child, in_function)

    def visit_stmt(child: ast.AST, in_function: bool) -> None:
        found = inner if in_function else top
        if isinstance(child, ast.Import):
            for alias in child.names:
                if (hit := _known(alias.name)) is not None:
                    found.add(hit)
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(child.module or "", module, path.name == "__init__.py", child.level)
            for alias in child.names:
                hit = _known(f"{base}.{alias.name}") or _known(base)
                if hit is not None:
                    found.add(hit)
        visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    top.discard(module)
    inner.discard(module)
    return top, inner


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


GRAPH = {m: imports_of(m) for m in MODULES}


def _parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def edges(*, functions: bool) -> dict[str, set[str]]:
    out = {}
    for module, (top, inner) in GRAPH.items():
        targets = top | inner if functions else top
        out[module] = {p for t in targets for p in [*_parents(t), t]} - {module} - set(_parents(module))
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_walk_sees_known_imports() -> None:
    """The walker itself: module-level, function-level, TYPE_CHECKING-only and relative imports of real modules."""
    top, inner = GRAPH["richkd.cli.app"]
    assert "richkd.cli.args" in top and "richkd.errors" in top  # module level
    assert "richkd.api" in inner and "richkd.cli.analysis" in inner  # inside cmd_train / build_parser
    top, inner = GRAPH["richkd.api.runs"]
    assert "richkd.config" not in top  # under `if TYPE_CHECKING:` only: never executed
    assert "richkd.engine.trainer" in inner
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_library_module_imports_the_cli() -> None:
    allowed = {"richkd.__main__"}
    offenders = sorted(
        f"{module} imports {target}"
        for module, (top, inner) in GRAPH.items()
        if module not in allowed and not (module == "richkd.cli" or module.startswith("richkd.cli."))
        for target in top | inner
        if target == "richkd.cli" or target.startswith("richkd.cli.")
    )
    assert not offenders, "the library must not reach up into the CLI (call richkd.api instead): " + "; ".join(
        offenders)


def test_no_import_cycle_at_module_level() -> None:
    cycles = find_cycles(edges(functions=False))
    assert not cycles, f"module-level import cycles: {cycles}"


def test_no_import_cycle_with_function_level_imports() -> None:
    """Deferred imports hide a cycle from Python, not from the design: none is allowed either."""
    cycles = find_cycles(edges(functions=True))
    assert not cycles, f"import cycles through function-level imports: {cycles}"


def test_every_package_has_a_docstring() -> None:
    missing = []
    for folder in sorted(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if not any(folder.glob("*.py")):
            continue  # a data folder (recipes' YAML layers)
        init = folder / "__init__.py"
        if not init.is_file() or not ast.get_docstring(ast.parse(init.read_text())):
            missing.append(str(folder.relative_to(SRC)))
    assert not missing, f"packages without an __init__.py docstring saying what they own: {missing}"
