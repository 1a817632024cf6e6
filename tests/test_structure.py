"""The package's shape: its import graph (imports inside functions included) has no cycle, the
spaces import neither the supernet nor the search, no module takes another's underscored names,
and code outside the spaces never tests a space's name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("nas", "flows")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) belongs to."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Edges module -> imported project module, and every (module, 'other._name') reached into."""
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    private: list[tuple[str, str]] = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text())
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.append(full if full in known else base)
                    if (a.name.startswith("_") and not a.name.startswith("__")
                            and _resolve(base, known) not in (None, mod)):
                        private.append((mod, f"{base}.{a.name}"))
            for t in targets:
                r = _resolve(t, known)
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not colour.get(m):
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if not colour.get(n):
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_spaces_are_data():
    graph, _ = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("nas.spaces"):
            bad = [d for d in deps if not (d.startswith("nas.spaces") or d in ("nas.utils",))]
            assert not bad, f"{mod} imports {bad}"


def test_no_module_takes_another_modules_underscored_names():
    _, private = import_graph()
    assert not private, private
    known = _modules()
    attr = re.compile(r"\b(search|st|state|engine|space|method|bundle|tracker)\._[a-z]\w*")
    for path in known.values():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = attr.search(line)
            assert m is None or line.lstrip().startswith("#") or "self." in line[:m.start()][-5:], \
                f"{path.relative_to(REPO)}:{n}: {m.group(0)}"


def test_only_the_spaces_test_a_space_name():
    for mod, path in _modules().items():
        if mod.startswith("nas.spaces"):
            continue
        text = path.read_text()
        hits = re.findall(r"""(?:==|!=)\s*["']nb201["']|["']nb201["']\s*(?:==|!=)|\bin\s*\(["']nb201["']""", text)
        assert not hits, f"{path.relative_to(REPO)} tests the space name: {hits}"


MAX_FUNCTION_LINES = 60


def _functions(files: list[Path]):
    """``(path:line, function node)`` of every function or method in ``files``."""
    for path in files:
        where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{where}:{node.lineno}", node


def long_functions(files: list[Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function or method longer than ``limit`` lines."""
    out = []
    for where, node in _functions(files):
        n = node.end_lineno - node.lineno + 1
        if n > limit:
            out.append(f"{where} {node.name} ({n} lines)")
    return out


def test_no_function_is_longer_than_60_lines():
    files = sorted([*(REPO / "nas").rglob("*.py"), *(REPO / "flows").rglob("*.py")])
    assert not long_functions(files), long_functions(files)


def test_the_length_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    src = tmp_path / "m.py"
    src.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    found = long_functions([src], 60)
    assert len(found) == 1 and "long (62 lines)" in found[0]


MAX_PARAMETERS = 8


def wide_functions(files: list[Path], limit: int = MAX_PARAMETERS) -> list[str]:
    """``path:line name (n parameters)`` of every function or method taking more than ``limit``
    parameters (``self`` and ``cls`` aside; ``*args`` and ``**kwargs`` count one each): pass a
    typed object instead."""
    out = []
    for where, node in _functions(files):
        a = node.args
        names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
        n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
        n -= bool(names) and names[0] in ("self", "cls")
        if n > limit:
            out.append(f"{where} {node.name} ({n} parameters)")
    return out


def test_no_function_takes_more_than_8_parameters():
    files = sorted([*(REPO / "nas").rglob("*.py"), *(REPO / "flows").rglob("*.py")])
    assert not wide_functions(files), wide_functions(files)


def test_the_width_check_finds_a_wide_function(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("class C:\n    def ok(self, a, b, c, d, e, f, g, h):\n        pass\n\n\n"
                   "def wide(a, b, c, d, e, f, g, *rest, key=None):\n    pass\n")
    found = wide_functions([src], 8)
    assert found == [f"{src}:6 wide (9 parameters)"]
