"""Event webhooks through HTTP against a real `kassa serve` (docs/api.md, Webhooks): the
endpoints' API, and deliveries checked on the receiving side by the `standardwebhooks`
package (a client no one here wrote), to a receiver process on loopback
(tests/webhook_receiver.py) that the tests can SIGKILL."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook

from server.adapters.postgres.outbox import PAST_CURSOR_SQL
from server.process.embedded import free_port, running_postgres_dsn
from tests.conftest import ADMIN_KEY, WRITE_KEY
from tests.fixtures.kassa_server import KassaProcess, start_kassa, stop_process
from tests.load import SERVE_ENV, drive, open_accounts, status_counts
from tests.test_e2e_events import receipts_of
from tests.test_supervision import child_pid, children, deposits
from tests.webhook_receiver import spawn

pytestmark = pytest.mark.slow

# Short retries so a test sees a dead letter: waits of at most 0.3 s, a 2 s window.
FAST_RETRIES = {**SERVE_ENV, "KASSA_WEBHOOK_RETRY_BASE_MS": "50", "KASSA_WEBHOOK_RETRY_CAP_S": "0.3",
                "KASSA_WEBHOOK_RETRY_WINDOW_S": "2", "KASSA_WEBHOOK_POLL_INTERVAL_MS": "100"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DELIVERED_WITHIN_S = 30.0


class Receiver:
    """tests/webhook_receiver.py as a child process we own."""

    def __init__(self, record: Path, port: int | None = None, fail: int = 0,
                 delay_ms: float = 0.0) -> None:
        self.record, self.port = record, port or free_port()
        self.process = spawn(self.port, "--record", str(record), "--fail", str(fail),
                             "--delay-ms", str(delay_ms))

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def messages(self, path: str | None = None) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [m for m in lines if path is None or m["path"] == path]


def verified(message: dict[str, Any], secret: str) -> dict[str, Any]:
    """The event, once standardwebhooks accepts its signature (it raises otherwise)."""
    event: dict[str, Any] = Webhook(secret).verify(base64.b64decode(message["body"]),
                                                    message["headers"])
    assert message["headers"]["webhook-id"] == f"msg_{event['receipt_code']}", message
    return event


def wait_for(check: Any, timeout_s: float = DELIVERED_WITHIN_S, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def kassa() -> Iterator[KassaProcess]:
    server = start_kassa(FAST_RETRIES, workers=2, timeout_s=90)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log_tail(60)


@pytest.fixture
def api(kassa: KassaProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kassa.url, headers=ADMIN, timeout=30) as client:
        yield client


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "received.jsonl")
    yield r
    stop_process(r.process)


def register(api: httpx.Client, url: str, events: list[str] | None = None) -> dict[str, Any]:
    r = api.post("/v1/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return dict(r.json())


def deposit(api: httpx.Client, account: str, amount: int = 1) -> str:
    r = api.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": account, "amount": amount})
    assert r.status_code == 201, r.text
    return str(r.json()["receipt_code"])


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"code", "message", "param", "request_id"}, error
    return error


def test_endpoints_are_registered_listed_and_deleted_by_admins_only(
        api: httpx.Client, kassa: KassaProcess) -> None:
    created = register(api, "https://example.com/hooks", ["transaction.completed"])
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    assert created["events"] == ["transaction.completed"]
    everything = register(api, "http://127.0.0.1:9/all")
    assert everything["events"] is None
    shown = api.get(f"/v1/webhooks/{created['id']}")
    assert shown.status_code == 200
    assert shown.json() == {k: v for k, v in created.items() if k != "secret"}
    listed = api.get("/v1/webhooks").json()["webhooks"]
    assert {w["id"] for w in listed} >= {created["id"], everything["id"]}
    assert all("secret" not in w for w in listed)

    with httpx.Client(base_url=kassa.url, timeout=30) as anonymous:
        assert error_of(anonymous.get("/v1/webhooks"), 401)["code"] == "unauthorized"
        writer = {"Authorization": f"Bearer {WRITE_KEY}"}
        assert error_of(anonymous.post("/v1/webhooks", json={"url": "https://a.example"},
                                       headers=writer), 403)["code"] == "forbidden"
        assert error_of(anonymous.get(f"/v1/webhooks/{created['id']}", headers=writer),
                        403)["code"] == "forbidden"
    refused = error_of(api.post("/v1/webhooks", json={"url": "ftp://example.com"}), 400)
    assert refused["param"] == "url" and refused["message"].startswith("url must be an http")
    for url in ("https://@a.example", "https://a.example:65536/", "https://a.example/\u00a0",
                "https://bücher.example/"):  # the schema's pattern refuses them too
        assert error_of(api.post("/v1/webhooks", json={"url": url}), 400)["param"] == "url"
    assert error_of(api.post("/v1/webhooks", json={"url": "https://a.example",
                                                   "events": ["transaction.lost"]}),
                    400)["param"] == "events[0]"
    assert error_of(api.post("/v1/webhooks", json={"url": "https://a.example", "x": 1}),
                    400)["code"] == "invalid_request"
    assert error_of(api.get("/v1/webhooks/nope"), 400)["code"] == "invalid_request"
    assert error_of(api.get(f"/v1/webhooks/{created['id']}/deliveries?status=lost"),
                    400)["param"] == "status"
    assert error_of(api.get(f"/v1/webhooks/{created['id']}/deliveries?cursor=zzz"),
                    400)["param"] == "cursor"
    assert error_of(api.post(f"/v1/webhooks/{created['id']}/deliveries/x/redeliver"),
                    400)["code"] == "invalid_request"
    assert error_of(api.post(f"/v1/webhooks/{created['id']}/deliveries/1/redeliver"),
                    404)["code"] == "not_found"

    for endpoint in (created, everything):
        assert api.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
        assert error_of(api.get(f"/v1/webhooks/{endpoint['id']}"), 404)["code"] == "not_found"
        assert error_of(api.delete(f"/v1/webhooks/{endpoint['id']}"), 404)["code"] == "not_found"
        assert error_of(api.get(f"/v1/webhooks/{endpoint['id']}/deliveries"), 404)["code"] \
            == "not_found"


def test_every_event_is_delivered_signed_to_the_endpoints_whose_filter_takes_it(
        api: httpx.Client, kassa: KassaProcess, receiver: Receiver) -> None:
    every = register(api, receiver.url("/every"))
    held_only = register(api, receiver.url("/held"), ["transaction.held"])
    asyncio.run(open_accounts(kassa.url, ["wh_filter"], 0))
    completed = {deposit(api, "wh_filter", 5) for _ in range(20)}
    r = api.post("/v1/transactions?wait=true", json={
        "type": "withdrawal", "currency": "USD", "source": "wh_filter", "amount": 7,
        "hold": True})
    assert r.status_code == 201, r.text
    held = r.json()["receipt_code"]
    try:
        wanted = completed | {held}
        wait_for(lambda: {verified(m, every["secret"])["receipt_code"]
                          for m in receiver.messages("/every")} >= wanted, what="every event")
        events = [verified(m, every["secret"]) for m in receiver.messages("/every")]
        kinds = {e["receipt_code"]: e["event"] for e in events}
        assert {kinds[c] for c in completed} == {"transaction.completed"}
        assert kinds[held] == "transaction.held"
        assert all(e["amount"] > 0 and e["legs"] for e in events), events

        got = wait_for(lambda: receiver.messages("/held"), what="the held event")
        assert [verified(m, held_only["secret"])["receipt_code"] for m in got] == [held]
        # The filtered endpoint has one delivery row: the held event, succeeded.
        page = api.get(f"/v1/webhooks/{held_only['id']}/deliveries").json()
        assert [(d["receipt_code"], d["event"], d["status"]) for d in page["deliveries"]] == [
            (held, "transaction.held", "succeeded")]
        # Signed with its own endpoint's secret only.
        with pytest.raises(Exception, match="signature"):
            Webhook(every["secret"]).verify(base64.b64decode(got[0]["body"]), got[0]["headers"])
    finally:
        api.delete(f"/v1/webhooks/{every['id']}")
        api.delete(f"/v1/webhooks/{held_only['id']}")


def test_a_receiver_answering_500_gets_the_event_again_with_the_same_id(
        api: httpx.Client, kassa: KassaProcess, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "received.jsonl", fail=3)
    endpoint = register(api, receiver.url())
    try:
        asyncio.run(open_accounts(kassa.url, ["wh_retry"], 0))
        code = deposit(api, "wh_retry")
        got = wait_for(receiver.messages, what="the retried event")
        assert [verified(m, endpoint["secret"])["receipt_code"] for m in got] == [code]
        deliveries = wait_for(lambda: api.get(
            f"/v1/webhooks/{endpoint['id']}/deliveries?status=succeeded").json()["deliveries"])
        assert [(d["receipt_code"], d["attempts"], d["last_status"]) for d in deliveries] == [
            (code, 4, 204)]
        assert deliveries[0]["message_id"] == got[0]["headers"]["webhook-id"]
    finally:
        api.delete(f"/v1/webhooks/{endpoint['id']}")
        stop_process(receiver.process)


# A delivery's row as the sink wrote it and as it ended: how it was first sent shows in its
# times (server/adapters/postgres/webhooks.py, WRITE_SQL).
SLOW_ROWS_SQL = """
SELECT receipt_code, status, attempts,
       last_attempt_at > created_at AS sent_after_written,
       next_attempt_at - created_at > interval '5 seconds' AS written_claimed
FROM webhook_deliveries WHERE endpoint_id = $1
"""


def test_a_slow_receiver_gets_every_event_once_and_each_row_is_written_with_its_outcome(
        api: httpx.Client, kassa: KassaProcess, tmp_path: Path) -> None:
    """Answers that take 1.5 s outlast the sink's 1 s wait, and 100 events outnumber the 64
    first attempts in flight: some rows are written claimed while their attempt is in
    flight (its outcome recorded when it ends), some written due and sent as retries are.
    Each event still arrives once, in one attempt."""
    receiver = Receiver(tmp_path / "slow.jsonl", delay_ms=1500)
    endpoint = register(api, receiver.url())
    try:
        asyncio.run(open_accounts(kassa.url, ["wh_slow"], 0))
        replies = asyncio.run(drive(kassa.url, deposits(100, "wh_slow"), concurrency=32))
        codes = set(receipts_of(replies))
        assert status_counts(replies) == {"202": 100} and len(codes) == 100
        wait_for(lambda: {verified(m, endpoint["secret"])["receipt_code"]
                          for m in receiver.messages()} >= codes, what="every event")
        rows = wait_for(lambda: _ended(asyncio.run(_fetch(kassa, SLOW_ROWS_SQL, endpoint["id"]))),
                        what="every delivery recorded")
        assert {r["receipt_code"] for r in rows} == codes
        assert {(r["status"], r["attempts"]) for r in rows} == {("succeeded", 1)}
        assert any(r["written_claimed"] for r in rows), "no row written while in flight"
        assert any(r["sent_after_written"] for r in rows), "no row written before its attempt"
        sent = [verified(m, endpoint["secret"])["receipt_code"] for m in receiver.messages()]
        assert sorted(sent) == sorted(codes), "an event was sent twice"
    finally:
        api.delete(f"/v1/webhooks/{endpoint['id']}")
        stop_process(receiver.process)


def test_without_endpoints_the_sender_moves_past_the_journals_and_writes_nothing(
        api: httpx.Client, kassa: KassaProcess) -> None:
    """No endpoint registered: the webhooks cursor still follows the journals (reading only
    their keys), and no delivery row is made; an endpoint registered later gets only what
    finishes after it."""
    assert api.get("/v1/webhooks").json()["webhooks"] == []
    deliveries_before = asyncio.run(_fetch(kassa, "SELECT count(*) AS n FROM webhook_deliveries"))
    asyncio.run(open_accounts(kassa.url, ["wh_none"], 0))
    for _ in range(5):
        deposit(api, "wh_none")
    wait_for(lambda: asyncio.run(_fetch(kassa, PAST_CURSOR_SQL, "webhooks"))[0][0] == 0,
             what="the webhooks cursor past every finished journal")
    assert asyncio.run(_fetch(kassa, "SELECT count(*) AS n FROM webhook_deliveries")) == \
        deliveries_before


def test_ended_deliveries_are_deleted_after_the_retention_and_pending_ones_kept(
        tmp_path: Path) -> None:
    """KASSA_WEBHOOK_RETENTION_S: a succeeded delivery's row goes once it is older; one
    still being retried (its receiver refuses connections) stays."""
    kassa = start_kassa({**SERVE_ENV, "KASSA_WEBHOOK_RETENTION_S": "2",
                         "KASSA_WEBHOOK_POLL_INTERVAL_MS": "100"}, workers=1, timeout_s=90)
    receiver = Receiver(tmp_path / "received.jsonl")
    try:
        with httpx.Client(base_url=kassa.url, headers=ADMIN, timeout=30) as api:
            good = register(api, receiver.url())
            refused = register(api, f"http://127.0.0.1:{free_port()}/hook")
            asyncio.run(open_accounts(kassa.url, ["wh_old"], 0))
            codes = {deposit(api, "wh_old") for _ in range(3)}

            def listed(endpoint: dict[str, Any]) -> list[tuple[str, str]]:
                r = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries")
                return [(d["receipt_code"], d["status"]) for d in r.json()["deliveries"]]

            wait_for(lambda: sorted(listed(good)) == sorted((c, "succeeded") for c in codes),
                     what="the deliveries succeeded")
            wait_for(lambda: listed(good) == [], timeout_s=15, what="the old rows deleted")
            assert sorted(listed(refused)) == sorted((c, "pending") for c in codes)
    finally:
        stop_process(receiver.process)
        assert kassa.stop() == 0, kassa.log_tail(60)


def _ended(rows: list[Any]) -> list[Any] | None:
    return rows if len(rows) == 100 and all(r["status"] != "pending" for r in rows) else None


async def _fetch(kassa: KassaProcess, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(running_postgres_dsn(kassa.data_dir))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def test_a_delivery_failing_past_its_window_is_dead_lettered_and_can_be_redelivered(
        api: httpx.Client, kassa: KassaProcess, tmp_path: Path) -> None:
    failing = Receiver(tmp_path / "refused.jsonl", fail=10**9)
    endpoint = register(api, failing.url())
    try:
        asyncio.run(open_accounts(kassa.url, ["wh_dead"], 0))
        code = deposit(api, "wh_dead")
        path = f"/v1/webhooks/{endpoint['id']}/deliveries"
        dead = wait_for(lambda: api.get(f"{path}?status=failed").json()["deliveries"],
                        what="the dead letter")
        assert [(d["receipt_code"], d["status"], d["last_status"]) for d in dead] == [
            (code, "failed", 500)]
        assert dead[0]["attempts"] >= 2 and dead[0]["next_attempt_at"] is None
        assert api.get(f"{path}?status=pending").json()["deliveries"] == []

        failing.kill()  # a receiver that works, on the same port
        receiver = Receiver(tmp_path / "received.jsonl", port=failing.port)
        try:
            r = api.post(f"{path}/{dead[0]['id']}/redeliver")
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "pending"
            got = wait_for(receiver.messages, what="the redelivered event")
            assert [verified(m, endpoint["secret"])["receipt_code"] for m in got] == [code]
            assert got[0]["headers"]["webhook-id"] == dead[0]["message_id"]
            done = wait_for(lambda: api.get(f"{path}?status=succeeded").json()["deliveries"])
            assert [d["id"] for d in done] == [dead[0]["id"]]
        finally:
            stop_process(receiver.process)
    finally:
        api.delete(f"/v1/webhooks/{endpoint['id']}")
        stop_process(failing.process)


def test_every_event_arrives_signed_although_receiver_sender_and_broker_die_mid_load(
        tmp_path: Path) -> None:
    """The webhook sender's process and the receiver SIGKILLed and the Kafka broker stopped
    (SIGSTOP: it stays down, the supervisor cannot restart it) during the load: the
    supervisor starts the sender again, and every accepted transaction's event still
    reaches the receiver, signature-valid, at least once."""
    env = {**SERVE_ENV, "KASSA_WEBHOOK_RETRY_BASE_MS": "100", "KASSA_WEBHOOK_RETRY_CAP_S": "1",
           "KASSA_WEBHOOK_POLL_INTERVAL_MS": "100"}
    kassa = start_kassa(env, workers=2, timeout_s=90)
    receiver = Receiver(tmp_path / "received.jsonl")
    broker = child_pid(kassa, b"tansu")
    sender = child_pid(kassa, b"webhook-sender")
    assert broker is not None and sender is not None, children(kassa)
    try:
        with httpx.Client(base_url=kassa.url, headers=ADMIN, timeout=30) as api:
            endpoint = register(api, receiver.url())
        asyncio.run(open_accounts(kassa.url, ["wh_kill"], 0))
        accepted: set[str] = set()

        async def load() -> None:
            async def batch(n: int) -> None:
                replies = await drive(kassa.url, deposits(n, "wh_kill"), concurrency=10)
                assert status_counts(replies) == {"202": n}, status_counts(replies)
                accepted.update(receipts_of(replies))

            await batch(200)
            os.kill(sender, signal.SIGKILL)
            receiver.kill()
            await batch(200)
            os.kill(broker, signal.SIGSTOP)
            await batch(200)

        asyncio.run(load())
        revived = Receiver(receiver.record, port=receiver.port)
        try:
            wait_for(lambda: {verified(m, endpoint["secret"])["receipt_code"]
                              for m in revived.messages()} >= accepted,
                     timeout_s=90, what="every accepted transaction's event")
        finally:
            stop_process(revived.process)
        assert child_pid(kassa, b"webhook-sender") not in (None, sender), children(kassa)
    finally:
        os.kill(broker, signal.SIGCONT)
        stop_process(receiver.process)
        assert kassa.stop() == 0, kassa.log_tail(60)
