"""The layout rules the code relies on, checked on the source itself (no import needed):

- no import cycle among the modules of ``gateway``, ``routes`` and ``upstreams``, counting
  imports under ``TYPE_CHECKING`` too, since a cycle there is still two modules that
  cannot be understood one without the other;
- ``routes`` and ``upstreams`` never import ``gateway``: they are the libraries the gateway
  is made of;
- only ``gateway/environment.py`` reads the process environment;
- only ``gateway/server/`` imports the servers (hypercorn, h11, httptools, uvicorn, wsproto),
  and ``gateway/asgi.py``, the plain-server entry; ``create_app`` patches nothing: the
  engines install what they change of their server, each in its own worker.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "routes", "upstreams")


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imported(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _imported(tree) if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the packages
    assert _cycles(graph) == []


def test_routes_and_upstreams_never_import_gateway() -> None:
    offenders = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if not name.startswith("gateway")
        for target in targets
        if target.startswith("gateway")
    ]
    assert offenders == []


def _environment_reads(tree: ast.AST) -> Iterator[int]:
    """Lines that read ``os.environ`` or call ``os.getenv`` (assignments, ``pop`` and
    ``setdefault`` on ``os.environ`` are writes and allowed)."""
    writes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
            for target in targets:
                if isinstance(target, ast.Subscript) and _is_environ(target.value):
                    writes.add(id(target.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("pop", "setdefault")
            and _is_environ(node.func.value)
        ):
            writes.add(id(node.func.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if (_is_environ(node) and id(node) not in writes) or node.attr == "getenv":
            yield node.lineno


def _is_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def test_the_environment_reader_finder_finds_reads_and_skips_writes() -> None:
    source = (
        "import os\n"
        "a = os.environ.get('X')\n"
        "os.environ['Y'] = '1'\n"
        "os.environ.pop('Y', None)\n"
        "b = os.getenv('Z')\n"
        "c = dict(os.environ)\n"
    )
    assert sorted(_environment_reads(ast.parse(source))) == [2, 5, 6]


def test_only_gateway_environment_reads_the_environment() -> None:
    readers = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in _modules().items()
        if name != "gateway.environment"
        for line in _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert readers == []


#: The server libraries: only gateway/server/ (and the gateway.asgi entry) may import them.
SERVERS = ("hypercorn", "h11", "httptools", "uvicorn", "wsproto")


def _server_imports(tree: ast.AST) -> list[str]:
    return sorted({m for m in _imported(tree) if m.split(".")[0] in SERVERS})


def test_only_gateway_server_imports_the_servers() -> None:
    offenders = {
        name: found
        for name, path in _modules().items()
        if not name.startswith("gateway.server") and name != "gateway.asgi"
        for found in [_server_imports(ast.parse(path.read_text(encoding="utf-8")))]
        if found
    }
    assert offenders == {}


def test_the_server_import_finder_finds_lazy_imports() -> None:
    tree = ast.parse("def f():\n    from hypercorn.config import Config\n    import uvicorn\n")
    assert _server_imports(tree) == ["hypercorn.config", "hypercorn.config.Config", "uvicorn"]


def test_create_app_patches_nothing() -> None:
    """The app factory installs no server patch: gateway/app.py imports no server and
    nothing of gateway/server/ but the limits value its engine hands it."""
    tree = ast.parse((ROOT / "gateway" / "app.py").read_text(encoding="utf-8"))
    server_modules = {m for m in _imported(tree) if m.startswith("gateway.server")}
    assert server_modules == {"gateway.server.limits", "gateway.server.limits.ServerLimits"}
    assert _server_imports(tree) == []
