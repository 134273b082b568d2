"""gunicorn settings for running Kassa under a plain `gunicorn` command:

    KASSA_DATABASE_URL=... gunicorn -c gunicorn.conf.py 'server.process.asgi:create_app()'

`kassa serve` uses the same values (server/process/gunicorn_app.py) and also runs migrations
and the embedded stack; prefer it. Host, port, workers and logging come from the KASSA_*
settings (KASSA_HOST, KASSA_PORT, KASSA_WORKERS, KASSA_LOG_LEVEL, KASSA_LOG_FORMAT). Without
KASSA_WORKERS, the workers are the CPUs this process may use (affinity, cgroup quota), and
the pool per worker is sized within KASSA_DB_CONNECTIONS_MAX (server/process/sizing.py);
the receipt and notification services run elsewhere here, so only the relays count.

There is no embedded stack here: without KASSA_DATABASE_URL or KASSA_KAFKA_BOOTSTRAP_SERVERS
(each worker's outbox relay publishes the events there; without one they would wait in
PostgreSQL unannounced), or with an invalid KASSA_* value, gunicorn stops at once with one
line on stderr and exit code 2, as `kassa serve` refuses a bad configuration. Without
KASSA_REDIS_URL it runs without Redis, and says so at start.
"""

import logging
import os
import sys
from typing import Any, NoReturn

from server.process.gunicorn_app import gunicorn_options
from server.process.logs import configure
from server.process.settings import ConfigError, Settings, env_name, load_settings
from server.process.sizing import Plan, plan

# `gunicorn -c` runs this file as the module `__config__`, and turns any exception raised
# here into "Failed to read config file" with a traceback and exit code 1; so under
# gunicorn a bad configuration is refused here, in one line. Imported otherwise (the tests),
# the error is raised and the requirements below are not enforced.
_UNDER_GUNICORN = __name__ == "__config__"
_EMBEDDED_HINT = "use `kassa serve` for the embedded stack"


def _refuse(reason: object) -> NoReturn:
    print(f"kassa: configuration error: {reason}", file=sys.stderr, flush=True)
    sys.exit(2)


def _required(settings: Settings) -> str | None:
    """Why plain gunicorn cannot run with these settings, or None."""
    if not settings.database_url:
        return (f"KASSA_DATABASE_URL is required under plain gunicorn (run `kassa migrate` on "
                f"it first); {_EMBEDDED_HINT}")
    if not settings.kafka_bootstrap_servers:
        return ("KASSA_KAFKA_BOOTSTRAP_SERVERS is required under plain gunicorn (the outbox "
                f"relay publishes events there); {_EMBEDDED_HINT}")
    if settings.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return ("KASSA_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR under plain gunicorn (an "
                "empty directory in memory, e.g. under /dev/shm: the master serves the port "
                "from the workers' metric files there)")
    return None


try:
    _settings = load_settings()
except ConfigError as exc:
    if not _UNDER_GUNICORN:
        raise
    _refuse(exc)
if _UNDER_GUNICORN and (_missing := _required(_settings)):
    _refuse(_missing)
# The workers fork from this process and keep its logging, as under `kassa serve`.
configure(_settings.log_level, _settings.log_format)
_log = logging.getLogger("kassa.gunicorn")
# Each worker's outbox relay holds one dedicated connection when Kafka is configured.
_RELAY = 1 if _settings.kafka_bootstrap_servers else 0


def _plan(cli_workers: int | None) -> Plan:
    try:
        return plan(_settings, os.environ, cli_workers=cli_workers, per_worker_extra=_RELAY,
                    fixed_others=0)
    except ConfigError as exc:
        _refuse(exc)


_sizing = _plan(None)
globals().update(gunicorn_options(_settings.host, _settings.port, _sizing.workers,
                                  _settings.log_level, _settings.log_format))


def on_starting(server: Any) -> None:
    """In the master before the first fork: `gunicorn -w N` overrides the count above, so
    the pool is sized for the final count, and the workers inherit it by environment."""
    sizing = _sizing if server.cfg.workers == _sizing.workers else _plan(server.cfg.workers)
    _log.info("%s", sizing.describe_workers().replace("--workers", "gunicorn -w"))
    _log.info("%s", sizing.pool.describe())
    os.environ[env_name("db_pool_max")] = str(sizing.pool.pool)
    if not _settings.redis_url:
        _log.warning("KASSA_REDIS_URL is unset: running without Redis (no shared status store, "
                     "account cache or idempotency fast path, no rate limit)")
