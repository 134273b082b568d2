"""gunicorn settings for running Kassa under a plain `gunicorn` command:

    KASSA_DATABASE_URL=... gunicorn -c gunicorn.conf.py 'server.process.asgi:create_app()'

`kassa serve` uses the same values (server/process/gunicorn_app.py) and also runs migrations
and the embedded stack; prefer it. Host, port, workers and logging come from the KASSA_*
settings (KASSA_HOST, KASSA_PORT, KASSA_WORKERS, KASSA_LOG_LEVEL, KASSA_LOG_FORMAT).
"""

from server.process.gunicorn_app import gunicorn_options
from server.process.logs import configure
from server.process.settings import load_settings

_settings = load_settings()
# The workers fork from this process and keep its logging, as under `kassa serve`.
configure(_settings.log_level, _settings.log_format)
globals().update(gunicorn_options(_settings.host, _settings.port, _settings.workers,
                                  _settings.log_level, _settings.log_format))
