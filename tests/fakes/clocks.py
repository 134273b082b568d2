"""A clock a test moves by hand, and a dependency whose ping a test turns off: for the
supervisor's decisions and the readiness rules (core/pipeline/health.py) without servers."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock: `now` seconds until the test sets or advances it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakePing:
    """A database or Redis as HealthCheck sees it: its ping raises while `up` is false."""

    def __init__(self, up: bool = True) -> None:
        self.up = up

    async def ping(self) -> None:
        if not self.up:
            raise ConnectionError("down")
