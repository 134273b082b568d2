"""gunicorn settings for running Kassa under a plain `gunicorn` command:

    KASSA_DATABASE_URL=... gunicorn -c gunicorn.conf.py 'server.process.asgi:create_app()'

`kassa serve` uses the same values (server/process/gunicorn_app.py) and also runs migrations
and the embedded stack; prefer it. Host, port, workers and logging come from the KASSA_*
settings (KASSA_HOST, KASSA_PORT, KASSA_WORKERS, KASSA_LOG_LEVEL, KASSA_LOG_FORMAT). Without
KASSA_WORKERS, the workers are the CPUs this process may use (affinity, cgroup quota), and
the pool per worker is sized within KASSA_DB_CONNECTIONS_MAX (server/process/sizing.py);
the receipt and notification services run elsewhere here, so only the relays count.
"""

import logging
import os
import sys
from typing import Any

from server.process.gunicorn_app import gunicorn_options
from server.process.logs import configure
from server.process.settings import ConfigError, env_name, load_settings
from server.process.sizing import Plan, plan

_settings = load_settings()
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
        print(f"kassa: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


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
