"""server/process/gunicorn_app.py: what a worker does once its start-up is complete."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any

from server.process.gunicorn_app import StartupWatch


class Node:
    ref: Any = None


async def test_a_started_worker_freezes_its_objects_after_collecting_garbage() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        garbage = Node()
        garbage.ref = garbage  # a cycle: only the collector frees it
        left_behind.append(weakref.ref(garbage))
        del garbage
        await send({"type": "lifespan.startup.complete"})

    async def send(message: Any) -> None:
        sent.append(message["type"])
        assert gc.get_freeze_count() > 0, "frozen before the server is told it started"

    async def receive() -> Any:
        raise AssertionError("not called")

    left_behind: list[weakref.ref[Node]] = []
    sent: list[str] = []
    config = SimpleNamespace(loaded_app=None)
    watch = StartupWatch(app, config)
    config.loaded_app = watch
    gc.disable()  # no automatic collection meanwhile: the freeze's own collection frees it
    try:
        await watch({"type": "lifespan"}, receive, send)
        assert sent == ["lifespan.startup.complete"] and config.loaded_app is app
        assert left_behind[0]() is None  # collected, not frozen for the life of the worker
        assert not any(o is watch for o in gc.get_objects())  # frozen: no collection walks it
    finally:
        gc.unfreeze()
        gc.enable()
