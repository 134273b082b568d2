"""A circuit breaker: stop calling a dependency that keeps failing, probe it now and then.

    closed ──(failures_max consecutive failures)──▶ open
    open ──(reset_ms elapsed)──▶ half_open
    half_open ──(a trial call succeeds)──▶ closed
    half_open ──(a trial call fails)──▶ open (the cool-down starts again)

In half_open at most `half_open_calls_max` trial calls are let through at once; the
rest are refused as if open, so a dependency coming back is not hit by the whole
backlog at once. Pure logic: time comes from an injected monotonic clock, so the
state machine is tested without sleeping, and callers do the I/O around it:

    if not breaker.allow():
        raise Unavailable(...)
    try:
        result = await call()
    except SomeError:
        breaker.record_failure()
        raise
    breaker.record_success()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

CLOSED: Final = "closed"
HALF_OPEN: Final = "half_open"
OPEN: Final = "open"

# The value exported as the kassa_circuit_breaker_state gauge.
STATE_VALUES: Final[dict[str, int]] = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

StateListener = Callable[[str, str, str], None]  # (breaker name, old state, new state)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures_max: int = 5,
        reset_ms: float = 1000,
        half_open_calls_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        assert failures_max >= 1 and reset_ms >= 0 and half_open_calls_max >= 1
        self.name = name
        self._failures_max = failures_max
        self._reset_s = reset_ms / 1000
        self._trials_max = half_open_calls_max
        self._clock = clock
        self._on_change = on_change
        self._state: str = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0  # trial calls let through in this half_open period

    @property
    def state(self) -> str:
        """The current state; reading it may move open to half_open once cooled down."""
        self._cool_down()
        return self._state

    @property
    def value(self) -> int:
        return STATE_VALUES[self.state]

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed (0 after any success): above 0, the
        last call failed even though the breaker has not opened yet."""
        return self._failures

    def allow(self) -> bool:
        """May a call go through now? In half_open this takes one trial slot."""
        self._cool_down()
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and self._trials < self._trials_max:
            self._trials += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state == HALF_OPEN:
            self._set(CLOSED)
        # A late success from a call let through before the breaker opened proves
        # little about now: an open breaker waits for its own trial.

    def record_failure(self) -> None:
        if self._state == HALF_OPEN:
            self._open()
            return
        if self._state == CLOSED:
            self._failures += 1
            if self._failures >= self._failures_max:
                self._open()

    def record_abandoned(self) -> None:
        """A call let through ended without an answer either way (cancelled): it proves
        nothing about the dependency, but a half_open trial slot it held is given back."""
        if self._state == HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def retry_after_s(self) -> int:
        """Whole seconds until a trial call may go through (at least 1), for Retry-After."""
        if self.state != OPEN:
            return 1
        left = self._opened_at + self._reset_s - self._clock()
        return max(1, math.ceil(left))

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set(OPEN)

    def _cool_down(self) -> None:
        if self._state == OPEN and self._clock() - self._opened_at >= self._reset_s:
            self._set(HALF_OPEN)

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        self._trials = 0
        if old != state and self._on_change is not None:
            self._on_change(self.name, old, state)
