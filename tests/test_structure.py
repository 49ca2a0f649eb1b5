"""The package's shape (issue 16): no import cycle anywhere in fedasr/, and modules a newcomer can read."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fedasr"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """fedasr modules ``name`` imports anywhere (module level or inside functions), except under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node) if n is not node}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    out = set()
    for t in targets:
        if t in MODULES and t != name:
            out.add(t)
            # importing a submodule runs its package's __init__ first (unless we are inside that package)
            parent = t.rpartition(".")[0]
            while parent and not name.startswith(parent + ".") and parent != name:
                if parent in MODULES:
                    out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_import_walk_sees_function_level_and_relative_imports():
    assert "fedasr.seeding" in GRAPH["fedasr.partial"]  # `from .seeding import derive_seed`
    assert "fedasr.federated.client_update" in GRAPH["fedasr.federated.client_app"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_seeding_is_the_bottom_of_the_graph():
    assert GRAPH["fedasr.seeding"] == set()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_enough_to_read(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name]} has {n} lines (> {MAX_LINES}): split it by concept"
