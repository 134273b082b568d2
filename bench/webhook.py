"""`--webhook`: the cost of a registered event webhook. A tiny receiver process on loopback
(tests/webhook_receiver.py, answering 204) and, on each server, one endpoint taking every
event; the relay's leader then turns every journal into a delivery and sends it (issue 20,
2: at most 5 % more CPU per transfer)."""

from __future__ import annotations

import subprocess

import httpx

from server.process.embedded import free_port
from tests.webhook_receiver import spawn


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = spawn(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def endpoint(self) -> str:
        """Its root, for an OTLP/HTTP exporter (which posts to /v1/traces): --trace's sink."""
        return f"http://127.0.0.1:{self.port}"

    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def register(server_url: str, api_key: str, receiver_url: str) -> str:
    async with httpx.AsyncClient(base_url=server_url, timeout=30,
                                 headers={"Authorization": f"Bearer {api_key}"}) as http:
        r = await http.post("/v1/webhooks", json={"url": receiver_url, "events": None})
        r.raise_for_status()
        return str(r.json()["id"])
