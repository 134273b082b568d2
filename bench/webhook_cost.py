"""Worker CPU and WAL per transfer, with and without one registered webhook endpoint (a
receiver on loopback answering 204, bench/webhook.py): `python -m bench.webhook_cost
with|without`. A quick check beside `python -m bench --webhook`: 8,000 async deposits
over 2 workers, measured from the first request until every event is published to Kafka
and (with) every delivery succeeded. Worker CPU from /proc (utime + stime of the gunicorn
workers), WAL from pg_current_wal_lsn(). Alternate the modes: the machine's load moves
the figures by 10 % or more."""
import asyncio
import os
import sys
import time

import asyncpg

from bench.webhook import Receiver, register
from server.process.embedded import running_postgres_dsn
from tests.conftest import ADMIN_KEY
from tests.fixtures.kassa_server import start_kassa
from tests.load import SERVE_ENV, drive, open_accounts, status_counts
from tests.test_supervision import deposits

N = 8000
UNPUBLISHED = """SELECT count(*) FROM journals j, journal_cursors c WHERE c.sink = 'kafka'
AND j.event_xid IS NOT NULL AND (j.event_xid, j.id) > (c.xid, c.journal_id)"""
TICK = os.sysconf("SC_CLK_TCK")

def cpu(pids: list[int]) -> float:
    total = 0
    for p in pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total / TICK


async def main(mode: str) -> None:
    kassa = start_kassa(SERVE_ENV, workers=2, timeout_s=90)
    receiver = Receiver() if mode == "with" else None
    try:
        dsn = running_postgres_dsn(kassa.data_dir)
        await open_accounts(kassa.url, [f"c{i}" for i in range(50)], 0)
        if receiver:
            await register(kassa.url, ADMIN_KEY, receiver.url)
        await drive(kassa.url, deposits(500, "c1"), concurrency=32)
        await asyncio.sleep(3)  # the warm-up's events and deliveries settle (a measurement)
        conn = await asyncpg.connect(dsn)
        workers = kassa.worker_pids()
        lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        c0, t0 = cpu(workers), time.monotonic()
        reqs = [("POST", "/v1/transactions", {"type": "deposit", "currency": "USD",
                                              "destination": f"c{i % 50}", "amount": 1})
                for i in range(N)]
        replies = await drive(kassa.url, reqs, concurrency=32)
        assert status_counts(replies) == {"202": N}, status_counts(replies)
        load_s = time.monotonic() - t0
        while True:
            left = await conn.fetchval(UNPUBLISHED)
            pending = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'")
            done = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            if left == 0 and pending == 0 and (mode == "without" or done >= N + 500):
                break
            await asyncio.sleep(0.2)
        drained_s = time.monotonic() - t0
        c1 = cpu(workers)
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn0)
        print(f"{mode}: {N} deposits, load {load_s:.1f} s ({N / load_s:.0f}/s), drained "
              f"{drained_s:.1f} s; workers CPU {(c1 - c0) / N * 1e6:.0f} us/transfer, WAL "
              f"{float(wal) / N:.0f} B/transfer, webhooks delivered {done}")
        await conn.close()
    finally:
        if receiver:
            receiver.stop()
        kassa.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
