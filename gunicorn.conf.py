"""gunicorn settings for running Kassa under a plain `gunicorn` command:

    KASSA_DATABASE_URL=... gunicorn -c gunicorn.conf.py 'server.http.app:create_app()'

`kassa serve` uses the same values (server/process/gunicorn_app.py) and also runs migrations
and the embedded stack; prefer it.
"""

import multiprocessing
import os

from server.process.gunicorn_app import gunicorn_options

_options = gunicorn_options(
    os.environ.get("KASSA_HOST", "127.0.0.1"),
    int(os.environ.get("KASSA_PORT", "8000")),
    int(os.environ.get("KASSA_WORKERS", multiprocessing.cpu_count())),
    os.environ.get("KASSA_LOG_LEVEL", "info"),
)
globals().update(_options)
