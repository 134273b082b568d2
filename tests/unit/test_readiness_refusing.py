"""/readyz on a database that answers a ping but refuses writes for lack of resources (a full
disk, D1 of issue 18): the adapter's alarm, and the health check reporting it."""

from __future__ import annotations

import asyncpg

from core.pipeline.health import HealthCheck
from server.adapters.postgres.pool import ResourceAlarm, unavailable
from tests.fakes.clocks import FakeClock, FakePing


def health(refusing: str | None, *, database_up: bool = True) -> HealthCheck:
    return HealthCheck(database=FakePing(database_up), redis=None, has_room=lambda: True,
                       dependency_states=dict, stopping=lambda: False,
                       database_refusing=lambda: refusing)


def test_the_alarm_names_the_refusal_and_fades() -> None:
    clock = FakeClock()
    alarm = ResourceAlarm(clock)
    assert alarm.recent(5) is None
    alarm.record("53100")
    assert alarm.recent(5) == "disk_full"
    clock.now += 4.9
    assert alarm.recent(5) == "disk_full"
    clock.now += 0.2
    assert alarm.recent(5) is None
    alarm.record("53000")
    assert alarm.recent(5) == "out_of_resources"


def test_a_class_53_error_sets_the_process_alarm() -> None:
    from server.adapters.postgres import pool

    clock = FakeClock()
    original, pool.RESOURCE_ALARM = pool.RESOURCE_ALARM, ResourceAlarm(clock)
    try:
        error = asyncpg.DiskFullError("could not extend file")
        assert unavailable(error) is not None
        assert pool.RESOURCE_ALARM.recent(5) == "disk_full"
        assert unavailable(ConnectionResetError()) is not None  # lost, not refusing
        clock.now += 10
        assert pool.RESOURCE_ALARM.recent(5) is None
    finally:
        pool.RESOURCE_ALARM = original


async def test_a_refusing_database_is_not_ready_with_the_reason() -> None:
    refused = await health("disk_full").readiness()
    assert not refused.ready
    assert refused.checks["postgres"] == "disk_full"
    assert refused.reasons == ("postgres: disk_full (the database refused a statement for "
                               "lack of resources just now)",)
    fine = await health(None).readiness()
    assert fine.ready and fine.checks["postgres"] == "ok" and fine.reasons == ()


async def test_a_database_that_does_not_answer_stays_down() -> None:
    down = await health("disk_full", database_up=False).readiness()
    assert not down.ready and down.checks["postgres"] == "down"
    assert down.reasons[0].startswith("postgres: down")
