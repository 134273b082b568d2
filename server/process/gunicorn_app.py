"""gunicorn as the process manager of `kassa serve`: this process is the master."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from uvicorn_worker import UvicornWorker

from server.process.logs import use_format


class KassaWorker(UvicornWorker):
    """uvicorn under gunicorn, pinned to uvloop and httptools (the fast path)."""

    # No proxy-headers middleware: Kassa never uses the client's address, and the
    # middleware is one more coroutine per request.
    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "lifespan": "on",
                     "access_log": False, "server_header": False, "proxy_headers": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # uvicorn's httptools protocol with the HTTP limits of the KASSA_HTTP_* settings
        # enforced before any work (server/http/protocol.py); Config(http=) takes the class.
        from server.http.protocol import Limits, protocol_class
        from server.process.settings import load_settings

        limits = Limits.from_settings(load_settings())
        self.CONFIG_KWARGS = {**type(self).CONFIG_KWARGS, "http": protocol_class(limits)}
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        # uvloop closes a listening socket it serves itself when the server closes: libuv
        # closes the descriptor, then uvloop calls the socket object's close() and ignores
        # the EBADF that follows. Handed gunicorn's wrappers (gunicorn/sock.py), that
        # close() is gunicorn's, which catches the EBADF first and logged "Error while
        # closing socket [Errno 9] Bad file descriptor" at every stop. So uvicorn gets the
        # sockets themselves; its own close() after the server's is a no-op on them.
        self.sockets = [getattr(s, "sock", s) for s in self.sockets]
        super().run()


class KassaLogger(Logger):  # type: ignore[misc]
    """gunicorn's error and access logs in Kassa's format (server/process/logs.py), and so
    uvicorn's too: its worker writes through their handlers ("Booting worker", "Started
    server process", "Handling signal: term" read like every other line)."""

    log_format = "text"

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # also on SIGHUP/USR1: handlers are remade, formatted again
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                use_format(handler, self.log_format)


class JsonLogger(KassaLogger):
    """The same as JSON lines, like the rest of Kassa's under KASSA_LOG_FORMAT=json."""

    log_format = "json"


def gunicorn_options(host: str, port: int, workers: int, log_level: str,
                     log_format: str = "text") -> dict[str, Any]:
    """The tuned defaults (docs/performance.md says how they were chosen)."""
    logger = "JsonLogger" if log_format == "json" else "KassaLogger"
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "server.process.gunicorn_app.KassaWorker",
        "backlog": 2048,
        "keepalive": 30,
        "timeout": 60,
        # Workers get this long after SIGTERM: 30 s to finish in-flight work, plus closing.
        "graceful_timeout": 38,
        "loglevel": "warning" if log_level in ("warning", "error") else "info",
        "accesslog": None,
        # Several servers may run side by side (tests, benchmarks): no shared control socket.
        "control_socket_disable": True,
        "child_exit": child_exit,
        "logger_class": f"server.process.gunicorn_app.{logger}",
    }


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class KassaArbiter(Arbiter):  # type: ignore[misc]
    """Ctrl-C stops as gracefully as SIGTERM (gunicorn's default SIGINT is a quick stop,
    which would kill workers with their in-flight transactions)."""

    def handle_int(self) -> None:
        self.handle_term()


class KassaApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        KassaArbiter(self).run()

    def load(self) -> Any:
        from server.process.asgi import create_app

        return create_app()
