"""The ASGI application of a worker process: the HTTP app, with a lifespan that builds the
composition root (server/process/runtime.py) at start and stops it at exit.

    gunicorn -c gunicorn.conf.py 'server.process.asgi:create_app()'
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from server.http.app import build_app
from server.http.hot import HotRoutes
from server.process.runtime import build_runtime
from server.process.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> HotRoutes:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await build_runtime(settings or load_settings())
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    return build_app(lifespan)
