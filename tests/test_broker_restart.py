"""The embedded broker SIGKILLed under a real `kassa serve`: once the supervisor has started
it again on the same port, events flow again.

Tansu keeps its topics in memory, so the events published before the kill are gone with
it (README). Every transaction accepted while the broker was down or after its restart
must have its event on the recreated topic within a bounded time, and the Kafka cursor
must pass every finished journal (the relay moves it once Kafka acknowledged them)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest

from server.process.embedded import running_postgres_dsn
from tests.fixtures.kassa_server import start_kassa
from tests.invariants import unpublished_events
from tests.load import SERVE_ENV, drive, open_accounts, status_counts
from tests.test_e2e_events import consume, receipts_of
from tests.test_supervision import child_pid, children, deposits, wait_restarted

pytestmark = pytest.mark.slow

# The broker stays down for about KASSA_RESTART_BACKOFF_MIN_MS: long enough to accept
# transactions meanwhile, whose events wait past the Kafka cursor.
ENV = {**SERVE_ENV, "KASSA_RESTART_BACKOFF_MIN_MS": "3000", "KASSA_RECEIPT_BLOCK_SIZE": "8192"}
EVENTS_WITHIN_S = 30


def broker_port(cmdline: bytes) -> int:
    match = re.search(rb"--listener-url\x00tcp://127\.0\.0\.1:(\d+)", cmdline)
    assert match, cmdline
    return int(match.group(1))


async def wait_all_published(dsn: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := await unpublished_events(dsn)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert left == 0, f"{left} journals' events still unpublished after {timeout_s}s"


def accepted(n: int, account: str, url: str) -> set[str]:
    replies = asyncio.run(drive(url, deposits(n, account), concurrency=10))
    assert status_counts(replies) == {"202": n}, status_counts(replies)
    return set(receipts_of(replies))


def test_events_flow_again_after_the_broker_is_sigkilled_and_restarted() -> None:
    kassa = start_kassa(ENV, workers=2, timeout_s=90)
    try:
        dsn = running_postgres_dsn(kassa.data_dir)
        asyncio.run(open_accounts(kassa.url, ["br"], 0))
        old = child_pid(kassa, b"tansu")
        assert old is not None, children(kassa)
        bootstrap = f"127.0.0.1:{broker_port(children(kassa)[old])}"

        before = accepted(50, "br", kassa.url)
        assert before <= asyncio.run(consume(bootstrap, before, EVENTS_WITHIN_S)).keys()
        asyncio.run(wait_all_published(dsn, 10))

        os.kill(old, signal.SIGKILL)
        killed_at = time.monotonic()
        during = accepted(50, "br", kassa.url)  # the restart is 3 s away
        assert child_pid(kassa, b"tansu") is None, "restarted before the writes were done"
        new = wait_restarted(kassa, b"tansu", old, timeout_s=20)
        assert broker_port(children(kassa)[new]) == int(bootstrap.rsplit(":", 1)[1])
        after = accepted(50, "br", kassa.url)

        started = time.monotonic()
        seen = asyncio.run(consume(bootstrap, during | after, EVENTS_WITHIN_S))
        assert during | after <= seen.keys()
        # The recreated topic holds only what was published after the restart.
        assert not before & seen.keys()
        asyncio.run(wait_all_published(dsn, EVENTS_WITHIN_S - (time.monotonic() - started) + 5))

        # Killed and restarted while the relay is idle: its producer saw no error yet.
        os.kill(new, signal.SIGKILL)
        newer = wait_restarted(kassa, b"tansu", new, timeout_s=20)
        assert broker_port(children(kassa)[newer]) == int(bootstrap.rsplit(":", 1)[1])
        idle = accepted(50, "br", kassa.url)
        seen = asyncio.run(consume(bootstrap, idle, EVENTS_WITHIN_S))
        assert idle <= seen.keys() and not (during | after) & seen.keys()
        asyncio.run(wait_all_published(dsn, EVENTS_WITHIN_S))
        assert "Traceback" not in kassa.log(), kassa.log_tail(100)
        # aiokafka logs an unreachable broker on every retry (100 ms apart): at most one
        # line of each kind every 5 s per worker gets through.
        for line in ("aiokafka: Unable connect to node", "aiokafka: Unable to update metadata",
                     "Got error produce response"):
            seen_n = kassa.log().count(line)
            assert seen_n <= 2 * ((time.monotonic() - killed_at) / 5 + 2), (line, seen_n)
    finally:
        assert kassa.stop() == 0, kassa.log_tail(100)
