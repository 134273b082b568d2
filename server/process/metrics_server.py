"""/metrics on a port of its own (KASSA_METRICS_PORT), served by the gunicorn master.

Why the master, not a worker or a separate process started by `kassa serve`: it is the one
process that lives as long as the server and sees every worker's metric files (the
PROMETHEUS_MULTIPROC_DIR workers write to), so one scrape gives the whole instance while
workers are being restarted, there is no further process to supervise, and plain
`gunicorn -c gunicorn.conf.py` gets it from the same hooks (gunicorn_app.gunicorn_options).
It is a small threaded HTTP server on a daemon thread: rendering reads the files, which
takes no lock any worker takes, and the master's own loop (signals, worker management)
never waits for it. Forked workers close their copy of its listening socket (`post_fork`).

KASSA_METRICS_TOKEN (or KASSA_METRICS_TOKEN_FILE: it is one of settings.SECRET_SETTINGS) is
required here as on the API port.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server.http.metrics_auth import CHALLENGE, token_matches
from server.process.settings import ConfigError, load_settings

log = logging.getLogger("kassa.metrics")

def render_all_workers() -> tuple[bytes, str]:
    """Every worker's metrics, from the multiprocess directory."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/metrics":
            self._answer(404, b"only /metrics here\n", "text/plain")
            return
        token = self.server.token
        if token is not None and not token_matches(self.headers.get("Authorization", ""), token):
            self._answer(401, b"send Authorization: Bearer <metrics token>\n", "text/plain",
                         {"WWW-Authenticate": CHALLENGE})
            return
        try:
            body, content_type = render_all_workers()
        except Exception:
            log.exception("rendering /metrics failed")
            self._answer(500, b"rendering the metrics failed\n", "text/plain")
            return
        self._answer(200, body, content_type)

    def _answer(self, status: int, body: bytes, content_type: str,
                headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("metrics port: " + format, *args)


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.token = token
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="kassa-metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%s/metrics%s", *self.server_address[:2],
                 " (bearer token required)" if self.token else "")

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


_SERVER: MetricsServer | None = None  # the master's, once started


def when_ready(arbiter: Any) -> None:
    """gunicorn hook, in the master before the first worker is forked: start the metrics
    port's server when KASSA_METRICS_PORT is set (a port taken stops the start here)."""
    global _SERVER
    settings = load_settings()
    if settings.metrics_port is None:
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise ConfigError("KASSA_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR (kassa serve sets "
                          "it): the master reads the workers' metrics from there")
    _SERVER = MetricsServer(api_host(arbiter.cfg.bind, settings.host), settings.metrics_port,
                            settings.metrics_token)
    _SERVER.start()


def api_host(binds: list[str], default: str) -> str:
    """The host of the API's first `host:port` bind (`kassa serve --host` included): the
    metrics port listens on the same interface (on KASSA_HOST when the API is on a socket
    file)."""
    if not binds or binds[0].startswith(("unix:", "fd://")):
        return default
    host, sep, _ = binds[0].rpartition(":")
    return host.strip("[]") if sep and host else default


def post_fork(arbiter: Any, worker: Any) -> None:
    """gunicorn hook, in each new worker: its copy of the listening socket is closed (the
    serving thread is not copied by fork)."""
    if _SERVER is not None:
        _SERVER.socket.close()


def on_exit(arbiter: Any) -> None:
    if _SERVER is not None:
        _SERVER.stop()
