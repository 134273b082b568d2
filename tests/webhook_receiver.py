"""A webhook receiver for tests and the benchmark, run as its own process (so a test can
SIGKILL it): `python -m tests.webhook_receiver --port P [--record FILE] [--fail N] [--delay-ms MS]`.

Each request is appended to FILE as one JSON line (path, headers, body in base64) before
the answer, so every 2xx the sender saw is on record; the first `--fail` requests get 500
instead (nothing recorded); `--delay-ms` holds every answer that long (a slow receiver).
Without --record it only answers 204 (the benchmark's cost of a
registered endpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time

from aiohttp import web


def build(record: str | None, fail: int, delay_ms: float = 0.0) -> web.Application:
    state = {"failures_left": fail}
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if record else None

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if state["failures_left"] > 0:
            state["failures_left"] -= 1
            return web.Response(status=500)
        if fd is not None:
            line = json.dumps({"path": request.path, "headers": dict(request.headers),
                               "body": base64.b64encode(body).decode()})
            os.write(fd, line.encode() + b"\n")  # one write: whole lines even when killed
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receive)
    return app


def spawn(port: int, *options: str, timeout_s: float = 15.0) -> subprocess.Popen[bytes]:
    """This receiver as a child process on `port` (`options`: --record, --fail, --delay-ms), once it
    accepts connections; RuntimeError if it exits or does not listen within `timeout_s`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.webhook_receiver", "--port", str(port), *options])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the webhook receiver did not start") from None
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record")
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(build(args.record, args.fail, args.delay_ms), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
