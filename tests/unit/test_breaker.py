"""The circuit breaker state machine, on a fake clock."""

from __future__ import annotations

import pytest

from core.kit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kw: int) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "svc", failures_max=kw.get("failures_max", 3), reset_ms=kw.get("reset_ms", 1000),
        half_open_calls_max=kw.get("trials", 1), clock=clock,
        on_change=lambda name, old, new: changes.append((old, new)),
    )
    return breaker, changes


def test_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    breaker, changes = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.value == 2
    assert not breaker.allow()
    assert changes == [(CLOSED, OPEN)]


def test_half_open_after_cool_down_lets_limited_trials(clock: FakeClock) -> None:
    breaker, _ = make(clock, trials=2)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 0.999
    assert breaker.state == OPEN and breaker.retry_after_s() == 1
    clock.now += 0.001
    assert breaker.state == HALF_OPEN and breaker.value == 1
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow()  # the third concurrent trial is refused


def test_trial_success_closes(clock: FakeClock) -> None:
    breaker, changes = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.value == 0
    assert breaker.allow() and breaker.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # The failure streak starts again from zero.
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_trial_failure_reopens_and_restarts_cool_down(clock: FakeClock) -> None:
    breaker, _ = make(clock, reset_ms=5000)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    clock.now += 2
    breaker.record_failure()
    assert breaker.state == OPEN
    assert breaker.retry_after_s() == 5
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_late_success_does_not_close_an_open_breaker(clock: FakeClock) -> None:
    breaker, _ = make(clock, failures_max=1)
    breaker.record_failure()
    breaker.record_success()  # a call admitted before the breaker opened
    assert breaker.state == OPEN


def test_rejects_nonsense_settings(clock: FakeClock) -> None:
    with pytest.raises(AssertionError):
        CircuitBreaker("x", failures_max=0, clock=clock)
