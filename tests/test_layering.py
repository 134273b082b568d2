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
