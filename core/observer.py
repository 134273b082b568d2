"""What the pipeline reports about itself; server/metrics.py turns it into Prometheus metrics."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def accepted(self, kind: str, seconds: float) -> None: ...
    def refused(self, code: str) -> None: ...
    def finished(self, status: str, type: str, accept_to_final_s: float) -> None: ...
    def batch_executed(self, size: int, seconds: float) -> None: ...
    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None: ...


class NullObserver:
    def accepted(self, kind: str, seconds: float) -> None:
        pass

    def refused(self, code: str) -> None:
        pass

    def finished(self, status: str, type: str, accept_to_final_s: float) -> None:
        pass

    def batch_executed(self, size: int, seconds: float) -> None:
        pass

    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None:
        pass
