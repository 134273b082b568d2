"""gunicorn as the process manager of `kassa serve`: this process is the master."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from uvicorn_worker import UvicornWorker

from server.process import metrics_server
from server.process.key_reload import KeyFileWatch, reload_requested
from server.process.logs import use_format
from server.process.settings import api_keys_from_file, parse_api_keys


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

    def init_signals(self) -> None:
        # uvicorn_worker resets SIGHUP to its default, which ends the process: until the
        # loop's handler below is installed, a SIGHUP forwarded by the master is ignored.
        super().init_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def run(self) -> None:
        # uvloop closes a listening socket it serves itself when the server closes: libuv
        # closes the descriptor, then uvloop calls the socket object's close() and ignores
        # the EBADF that follows. Handed gunicorn's wrappers (gunicorn/sock.py), that
        # close() is gunicorn's, which catches the EBADF first and logged "Error while
        # closing socket [Errno 9] Bad file descriptor" at every stop. So uvicorn gets the
        # sockets themselves; its own close() after the server's is a no-op on them.
        self.sockets = [getattr(s, "sock", s) for s in self.sockets]
        super().run()

    async def _serve(self) -> None:
        """uvicorn_worker's own, but a startup that fails because a dependency is down
        (the database unreachable, restarting or out of resources: the one classification
        in server/adapters/postgres/pool.py) is tried again in this process with backoff,
        instead of exiting with gunicorn's WORKER_BOOT_ERROR (3): the master halts the
        whole server on that code, which is right for a broken installation and wrong for
        a database that is down for a while. Any other startup failure still exits 3."""
        from uvicorn.server import Server

        # SIGHUP (forwarded by KassaArbiter): the API keys file is read again now.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_requested)
        app = StartupWatch(self.wsgi, self.config)
        self.config.app = app
        delay_s = BOOT_RETRY_MIN_S
        while True:
            app.error = None
            server = Server(config=self.config)
            self._install_sigquit_handler()
            try:
                await server.serve(sockets=self.sockets)
            except SystemExit:
                if server.started or server.should_exit or not dependency_down(app.error):
                    raise
            else:
                if server.started or server.should_exit or not dependency_down(app.error):
                    break
            wait_s = delay_s * random.uniform(0.5, 1.0)
            self.log.warning("worker %d: startup failed, a dependency is unavailable (%s); "
                             "retrying in %.1fs", os.getpid(), type(app.error).__name__, wait_s)
            gc.collect()  # what the failed attempt opened (connections) is closed now
            await self._boot_pause(wait_s)
            delay_s = min(delay_s * 2, BOOT_RETRY_MAX_S)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _boot_pause(self, seconds: float) -> None:
        """Sleep, telling the master this worker is alive (its timeout would kill it)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.notify()
            await asyncio.sleep(min(left, 1.0))
        self.notify()


BOOT_RETRY_MIN_S = 0.5
BOOT_RETRY_MAX_S = 10.0


class StartupWatch:
    """The app as uvicorn loads it in a worker: the same, but it keeps the exception that
    failed the lifespan startup, for KassaWorker to judge. Once the startup is complete it
    hands uvicorn the app itself, so requests do not pass through it."""

    def __init__(self, app: Any, config: Any) -> None:
        self.app = app
        self.config = config
        self.error: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete" and self.config.loaded_app is self:
                self.config.loaded_app = self.app  # connections made from now on
                freeze_startup_objects()
            if message["type"] == "lifespan.startup.failed":
                # Starlette sends this from inside its `except`, with the traceback as the
                # message, which uvicorn logs as an error: for a dependency that is down,
                # KassaWorker logs one line per retry instead.
                failure = sys.exc_info()[1]
                if dependency_down(failure):
                    message = {**message, "message": f"startup failed: {failure!r}"}
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            self.error = exc
            raise


def freeze_startup_objects() -> None:
    """Once a worker has started, before it serves: what start-up left as garbage is
    collected, and every object still alive (modules, the app, pools, settings: tens of
    thousands, kept for the life of the process) is moved to the collector's permanent
    generation (gc.freeze), which no later collection walks. Measured: a full collection
    over a worker's start-up objects (about 60,000 before its lifespan) took 25 ms, a
    pause of the event loop each time the collector reaches the oldest generation under
    load; over what is left after the freeze, well under 1 ms. The Python documentation
    pairs gc.freeze with fork for copy-on-write (freeze in the parent right before it):
    gunicorn's master loads no app here, so its workers share little to begin with, and
    the gain sought is the shorter collections; a worker's objects stay where they are."""
    gc.collect()
    gc.freeze()


def dependency_down(exc: BaseException | None) -> bool:
    """Whether a startup failed only because a dependency is down for now."""
    if exc is None:
        return False
    from core.ledger.errors import KassaError
    from server.adapters.postgres.pool import UNAVAILABLE

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # also when raised `from` such an error
        seen.add(id(exc))
        if (isinstance(exc, KassaError) and exc.retriable) or isinstance(exc, UNAVAILABLE):
            return True
        exc = exc.__cause__
    return False


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
        # /metrics on KASSA_METRICS_PORT, served by this master (metrics_server.py).
        "when_ready": metrics_server.when_ready,
        "post_fork": metrics_server.post_fork,
        "on_exit": metrics_server.on_exit,
        "logger_class": f"server.process.gunicorn_app.{logger}",
    }


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class KassaArbiter(Arbiter):  # type: ignore[misc]
    """Ctrl-C stops as gracefully as SIGTERM (gunicorn's default SIGINT is a quick stop,
    which would kill workers with their in-flight transactions). SIGHUP reads the API keys
    file again in every worker (server/process/key_reload.py), which keep their connections:
    gunicorn's own SIGHUP starts new workers (which would read it) and stops the old ones,
    which closes every keep-alive connection and starts every pool and relay again."""

    def __init__(self, app: KassaApplication) -> None:
        super().__init__(app)
        self.key_watch: KeyFileWatch | None = None
        if app.api_keys_file:
            # No keys are served here: the watch keeps the last valid text for the workers
            # forked later (settings.api_keys_from_file).
            keys = parse_api_keys(api_keys_from_file(app.api_keys_file))
            self.key_watch = KeyFileWatch(app.api_keys_file, lambda keys: None, keys)

    def handle_int(self) -> None:
        self.handle_term()

    def handle_hup(self) -> None:
        if self.key_watch is None:
            self.log.warning("SIGHUP: no KASSA_API_KEYS_FILE to read again; nothing done")
            return
        self.key_watch.check(force=True)
        self.log.info("SIGHUP: the %d workers read %s again", len(self.WORKERS),
                      self.key_watch.path)
        self.kill_workers(signal.SIGHUP)

    def manage_workers(self) -> None:
        # Once per pass of the master's loop (about 1 s), before any worker is forked.
        if self.key_watch is not None:
            self.key_watch.check()
        super().manage_workers()


class KassaApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], api_keys_file: str | None = None) -> None:
        self._options = options
        self.api_keys_file = api_keys_file
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        KassaArbiter(self).run()

    def load(self) -> Any:
        from server.process.asgi import create_app

        return create_app()
