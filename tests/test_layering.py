"""core imports no I/O library and nothing of server; native imports nothing of the project."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {"asyncpg", "redis", "aiokafka", "grpc", "httpx", "starlette", "uvicorn",
                "gunicorn", "prometheus_client", "aiosmtplib", "socket", "subprocess", "server"}


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_core_imports_no_io_library_and_not_server() -> None:
    bad = {path: names & IO_LIBRARIES for path, names in imported_modules("core").items()
           if names & IO_LIBRARIES}
    assert not bad, bad


def test_native_imports_nothing_of_the_project() -> None:
    sources = imported_modules("native")
    assert sources, "native/ has Python sources"
    bad = {path: names & {"core", "server"} for path, names in sources.items()
           if names & {"core", "server"}}
    pyx = (ROOT / "native" / "_speedups.pyx")
    if pyx.exists():
        text = pyx.read_text()
        assert "import core" not in text and "from core" not in text and "server" not in text
    assert not bad, bad


# ---- server: handlers see use cases; adapters never see HTTP; no cycles -------------------

# server/http sees use cases only; the ASGI entry point that builds the composition root
# is server/process/asgi.py.
HTTP_MUST_NOT_IMPORT = ("server.adapters", "server.services", "server.process",
                        "asyncpg", "redis", "aiokafka", "grpc")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """Full names a statement imports: `from a import b` names a.b (a module or not)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        origin = ".".join([*base, *([node.module] if node.module else [])])
    else:
        origin = node.module or ""
    return {origin} | {f"{origin}.{alias.name}" for alias in node.names}


def all_imports(path: Path) -> set[str]:
    """Everything a file imports, wherever the statement is (lazy imports count too)."""
    module = module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= import_targets(node, module, path.name == "__init__.py")
    return found


def top_level_imports(path: Path) -> set[str]:
    """What importing the module imports: statements outside functions and classes and
    outside `if TYPE_CHECKING:` blocks."""
    module = module_name(path)
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(import_targets(node, module, path.name == "__init__.py"))
            elif isinstance(node, ast.If) and not is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text()).body)
    return found


def matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_http_layer_imports_no_adapter_and_not_the_composition_root() -> None:
    bad: dict[str, set[str]] = {}
    for path in (ROOT / "server" / "http").rglob("*.py"):
        names = {n for n in all_imports(path) if matches(n, HTTP_MUST_NOT_IMPORT)}
        if names:
            bad[str(path.relative_to(ROOT))] = names
    assert not bad, bad


def test_adapters_and_services_import_nothing_of_http() -> None:
    bad = {str(path.relative_to(ROOT)): names
           for package in ("server/adapters", "server/services")
           for path in (ROOT / package).rglob("*.py")
           if (names := {n for n in all_imports(path) if matches(n, ("server.http",))})}
    assert not bad, bad


def module_graph(*packages: str) -> dict[str, set[str]]:
    paths = [p for package in packages for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from a import b` depends on module a.b when it is one, else on a.
        graph[name] = {target if target in modules else target.rpartition(".")[0]
                       for target in top_level_imports(path)} & modules.keys()
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles_between_modules() -> None:
    graph = module_graph("core", "server")
    assert "server.http.hot" in graph and "core.pipeline.accept" in graph
    assert not cycles(graph), cycles(graph)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
