"""What the bench's two peers (bench/naive_server.py, bench/funcledger_server.py) share: the
uvicorn worker pinned like Kassa's, `GET /healthz`, and the asyncpg pool per worker (min 2,
max from the environment, default 10 as Kassa's KASSA_DB_POOL_MAX)."""

from __future__ import annotations

import os

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from uvicorn_worker import UvicornWorker


class PeerWorker(UvicornWorker):
    """uvicorn_worker's worker pinned like Kassa's (uvloop, httptools, no access log), so
    the peers differ from Kassa in what the handler does, not in the HTTP stack."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "access_log": False,
                     "server_header": False}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def create_pool(dsn_var: str, pool_max_var: str) -> asyncpg.Pool:
    """The worker's pool on the DSN in the environment variable `dsn_var`."""
    env = os.environ
    return await asyncpg.create_pool(env[dsn_var], min_size=2,
                                     max_size=int(env.get(pool_max_var, "10")))
