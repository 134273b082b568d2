"""What the pipeline reports about itself; server/adapters/prometheus.py turns it into Prometheus metrics."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def accepted(self, kind: str, seconds: float, count: int = 1) -> None: ...
    def refused(self, code: str) -> None: ...
    def finished(self, counts: dict[tuple[str, str], int], accept_to_final_s: list[float]
                 ) -> None:
        """One executed batch: its transactions that reached a final status, by (status,
        type), and each one's accept-to-final latency (`held` is not final)."""
        ...
    def batch_executed(self, size: int, seconds: float) -> None: ...
    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None: ...


class NullObserver:
    def accepted(self, kind: str, seconds: float, count: int = 1) -> None:
        pass

    def refused(self, code: str) -> None:
        pass

    def finished(self, counts: dict[tuple[str, str], int], accept_to_final_s: list[float]
                 ) -> None:
        pass

    def batch_executed(self, size: int, seconds: float) -> None:
        pass

    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None:
        pass
