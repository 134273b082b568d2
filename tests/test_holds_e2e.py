"""Holds, captures, voids, expiry and reversals end to end: `kassa serve --workers 2` on
real PostgreSQL and Redis under a concurrent mixed load (docs/api.md, Holds and
Reversals), then with a worker SIGKILLed while holds expire and captures are in flight.

Every hold must end at most once (exactly once after its deadline), reversals never add up
past their original, what HTTP reports must match the database, and `kassa verify`'s
checks must hold.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer
from tests.invariants import assert_invariants, unfinished
from tests.load import SERVE_ENV, Reply, client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAST_RECOVERY = {"KASSA_LEASE_S": "2", "KASSA_SWEEP_INTERVAL_S": "0.5"}
FAST_EXPIRY = {"KASSA_HOLD_EXPIRY_INTERVAL_S": "0.3"}
UNSETTLED = ("processing", "executing")
# Lost connections of requests in flight on a killed worker.
DISCONNECTS = {"ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
               "ClientConnectorError"}
T = "/v1/transactions"


def serve(dsn: str, redis_url: str, **env: str) -> KassaProcess:
    return start_kassa({**SERVE_ENV, **FAST_EXPIRY, "KASSA_DATABASE_URL": dsn,
                        "KASSA_REDIS_URL": redis_url, **env})


# -- requests, answers and outcomes ---------------------------------------------------------

@dataclass
class Op:
    kind: str  # hold, transfer, capture, void, reverse
    path: str
    body: dict[str, Any] | None
    key: str
    group: str = ""  # the scenario it belongs to (a hold's or an original's receipt)
    result: Reply | Exception | None = None
    final: dict[str, Any] | None = None  # the status object of a 202's receipt, once settled

    @property
    def wait(self) -> bool:
        return "wait=true" in self.path

    @property
    def status(self) -> int | None:
        return self.result.status if isinstance(self.result, Reply) else None

    @property
    def receipt(self) -> str | None:
        if isinstance(self.result, Reply) and isinstance(self.result.body, dict):
            body = self.result.body
            return body.get("receipt_code") or body.get("error", {}).get("receipt_code")
        return None

    @property
    def outcome(self) -> str:
        """The receipt's status as answered or settled, or the error code it was refused with."""
        if self.status == 202:
            assert self.final is not None, f"{self.key} not settled"
            if self.final["status"] == "failed":
                return str(self.final["error"]["code"])
            return str(self.final["status"])
        assert isinstance(self.result, Reply), f"{self.key}: {self.result!r}"
        if self.status in (200, 201):
            return str(self.result.body["status"])
        return str(self.result.body["error"]["code"])

    @property
    def succeeded(self) -> bool:
        return self.outcome in ("completed", "voided", "held")

    def describe(self) -> str:
        return f"{self.kind} {self.path} {self.body} -> {self.status} {self.outcome}"


def outcome_name(result: Reply | Exception | None) -> str:
    return str(result.status) if isinstance(result, Reply) else type(result).__name__


async def send(http: aiohttp.ClientSession, op: Op) -> Reply:
    started = time.monotonic()
    # No body: aiohttp would label the empty body application/octet-stream (answered 415).
    headers = {"Idempotency-Key": op.key,
               **({"Content-Type": "application/json"} if op.body is None else {})}
    async with http.post(op.path, json=op.body, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return Reply(r.status, body, dict(r.headers), time.monotonic() - started)


async def drive_ops(url: str, ops: list[Op], concurrency: int = 32) -> None:
    """Send with at most `concurrency` in flight, in list order (neighbours race)."""
    cursor = iter(ops)

    async def worker(http: aiohttp.ClientSession) -> None:
        for op in cursor:
            try:
                op.result = await send(http, op)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                op.result = exc

    async with client(url, concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))


async def http_statuses(url: str, receipts: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with client(url, 32) as http:
        sem = asyncio.Semaphore(32)

        async def one(rc: str) -> None:
            async with sem, http.get(f"{T}/{rc}/status") as r:
                assert r.status == 200, await r.text()
                out[rc] = await r.json()

        await asyncio.gather(*(one(rc) for rc in receipts))
    return out


async def settle(url: str, ops: list[Op], timeout_s: float = 45) -> None:
    """Poll until every 202 receipt is past processing/executing; store its status object."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = {op.receipt: op for op in ops if op.status == 202 and op.final is None}
        if not waiting:
            return
        for rc, status in (await http_statuses(url, list(waiting))).items():
            if status["status"] not in UNSETTLED:
                waiting[rc].final = status
        if time.monotonic() > deadline:
            left = [rc for rc, op in waiting.items() if op.final is None]
            if left:
                raise AssertionError(f"{len(left)} accepted receipts never settled, e.g. {left[:3]}")
        await asyncio.sleep(0.2)


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def db_statuses(dsn: str, receipts: list[str]) -> dict[str, str]:
    rows = await fetch(dsn, "SELECT external_ref, status FROM journals WHERE external_ref = ANY($1)",
                       receipts)
    return {r["external_ref"]: r["status"] for r in rows}


async def wait_quiet(dsn: str, timeout_s: float = 45, due_within_s: float = 0) -> None:
    """Until no journal is processing and no hold due within `due_within_s` is pending
    (the server's expiry has voided every hold that was due by then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        overdue = (await fetch(dsn, "SELECT count(*) FROM journals WHERE status = 'held' "
                                    "AND hold_expires_at < now() + make_interval(secs => $1)",
                               float(due_within_s)))[0][0]
        left = await unfinished(dsn)
        if not overdue and not left:
            return
        assert time.monotonic() < deadline, f"{left} processing, {overdue} holds past deadline"
        await asyncio.sleep(0.2)


async def overdue_evidence(dsn: str, redis_url: str) -> str:
    """What keeps holds pending past their deadline: the oldest ones, any journal naming
    them, and the expiry's Idempotency-Key in Redis (value and TTL)."""
    rows = await fetch(dsn, "SELECT external_ref, hold_expires_at, now() - hold_expires_at AS late "
                            "FROM journals WHERE status = 'held' AND hold_expires_at < now() "
                            "ORDER BY hold_expires_at LIMIT 3")
    lines = [f"overdue holds (oldest first): {[tuple(r) for r in rows]}"]
    client = aioredis.from_url(redis_url)
    try:
        for r in rows:
            ref = r["external_ref"]
            named = await fetch(dsn, "SELECT external_ref, type, status, idempotency_key "
                                     "FROM journals WHERE target = $1", ref)
            name = f"kassa:idem:kassa:hold-expiry:expire:{ref}"
            lines.append(f"  {ref}: journals naming it {[tuple(n) for n in named]}; redis {name}"
                         f" = {await client.get(name)!r}, ttl {await client.ttl(name)}")
    finally:
        await client.aclose()
    return "\n".join(lines)


async def assert_http_matches_db(url: str, dsn: str, receipts: list[str],
                                 timeout_s: float = 15) -> None:
    """GET /status of every receipt says what the journals table says (within a bounded
    wait for status propagation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        db = await db_statuses(dsn, receipts)
        assert set(db) == set(receipts), f"answered receipts without a journal: {set(receipts) - set(db)}"
        http = await http_statuses(url, receipts)
        wrong = {rc: (http[rc]["status"], db[rc]) for rc in receipts if http[rc]["status"] != db[rc]}
        if not wrong:
            return
        assert time.monotonic() < deadline, \
            f"{len(wrong)} statuses over HTTP differ from the database (http, db): {list(wrong.items())[:5]}"
        await asyncio.sleep(0.3)


HOLD_ENDINGS = """
SELECT h.external_ref, h.status, h.hold_expires_at < now() AS expired,
  count(e.id) FILTER (WHERE e.type = 'capture' AND e.status = 'completed') AS captures,
  count(e.id) FILTER (WHERE e.type = 'void' AND e.status = 'voided') AS voids,
  count(e.id) FILTER (WHERE e.type = 'void' AND e.status = 'voided'
                      AND e.description = 'expired') AS expiries
FROM journals h LEFT JOIN journals e ON e.target = h.external_ref
WHERE h.hold_expires_at IS NOT NULL GROUP BY h.id"""

REVERSAL_SUMS = """
WITH r AS (SELECT rj.target, sum((leg->>2)::bigint) AS total FROM journals rj,
           jsonb_array_elements(rj.payload) leg
           WHERE rj.type = 'reversal' AND rj.status = 'completed' GROUP BY rj.target)
SELECT o.external_ref, o.reversed, r.total,
       (SELECT sum((leg->>2)::bigint) FROM jsonb_array_elements(o.payload) leg) AS amount
FROM r JOIN journals o ON o.external_ref = r.target"""


async def hold_endings(dsn: str) -> dict[str, asyncpg.Record]:
    return {r["external_ref"]: r for r in await fetch(dsn, HOLD_ENDINGS)}


def check_hold_row(row: asyncpg.Record) -> None:
    """A hold ends at most once; its status says how."""
    endings = row["captures"] + row["voids"]
    expected = {"held": (0, 0), "failed": (0, 0), "completed": (1, 0), "voided": (0, 1)}
    assert (row["captures"], row["voids"]) == expected[row["status"]], \
        f"hold {row['external_ref']} {row['status']}: {row['captures']} captures, " \
        f"{row['voids']} voids ({endings} endings)"


# The journals naming these (captures, voids, reversals), whatever their outcome, with amounts.
NAMING = """
SELECT target, external_ref, type, status,
       (SELECT sum((leg->>2)::bigint) FROM jsonb_array_elements(payload) leg) AS amount
FROM journals WHERE target = ANY($1::text[]) ORDER BY id"""


async def http_transactions(url: str, receipts: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with client(url, 32) as http:
        sem = asyncio.Semaphore(32)

        async def one(rc: str) -> None:
            async with sem, http.get(f"{T}/{rc}") as r:
                assert r.status == 200, await r.text()
                out[rc] = await r.json()

        await asyncio.gather(*(one(rc) for rc in receipts))
    return out


def requested_legs(body: dict[str, Any], amount: int | None = None) -> list[dict[str, Any]]:
    """The one leg a single-leg request names (a withdrawal goes to @world:USD)."""
    return [{"source": body["source"], "destination": body.get("destination", "@world:USD"),
             "amount": body["amount"] if amount is None else amount}]


HOLD_FIELDS = ("captured_by", "voided_by", "captured_amount", "released_amount")


def expected_hold_fields(hold: dict[str, Any], naming: list[asyncpg.Record]) -> dict[str, Any]:
    """A hold's four fields from the journals naming it in the database: the completed
    capture, the void that voided it (a client's or the server's on expiry)."""
    captures = [r for r in naming if r["type"] == "capture" and r["status"] == "completed"]
    voids = [r for r in naming if r["type"] == "void" and r["status"] == "voided"]
    captured = sum(r["amount"] for r in captures)
    released = {"held": 0, "failed": 0, "completed": hold["amount"] - captured,
                "voided": hold["amount"]}[hold["status"]]
    return {"captured_by": [r["external_ref"] for r in captures],
            "voided_by": voids[0]["external_ref"] if voids else None,
            "captured_amount": captured, "released_amount": released}


async def assert_money_and_links(url: str, dsn: str, ops: list[Op]) -> None:
    """Every hold, capture and void answered with a receipt (and every transfer) carries its
    amount and legs as requested, whatever its status; a hold names its capture or void and
    says how much was captured and released; a capture or void names its hold; a
    `?wait=true` 201 answer has the money a later GET has."""
    ops = [op for op in ops if op.receipt is not None and op.kind != "reverse"]
    views = await http_transactions(url, [str(op.receipt) for op in ops])
    holds = {str(op.receipt): op for op in ops if op.kind == "hold"}
    naming: dict[str, list[asyncpg.Record]] = {}
    for r in await fetch(dsn, NAMING, list(holds)):
        naming.setdefault(r["target"], []).append(r)
    for op in ops:
        view = views[str(op.receipt)]
        if op.kind in ("hold", "transfer"):
            assert op.body is not None
            want_legs = requested_legs(op.body)
        else:
            hold = holds[op.group].body
            assert hold is not None
            part = op.body["amount"] if op.kind == "capture" and op.body else None
            want_legs = requested_legs(hold, part)
            assert view["captures" if op.kind == "capture" else "voids"] == op.group, view
        assert (view["amount"], view["legs"]) == (want_legs[0]["amount"], want_legs), \
            (op.describe(), view)
        if op.kind == "hold":
            assert {k: view[k] for k in HOLD_FIELDS} == \
                expected_hold_fields(view, naming.get(str(op.receipt), [])), (op.describe(), view)
            won = {str(o.receipt) for o in ops if o.group == op.receipt and o.succeeded}
            assert won <= {*view["captured_by"], view["voided_by"]}, (op.describe(), view, won)
        else:
            assert "captured_by" not in view and "voided_by" not in view, view
        if view["status"] == "failed":
            assert view["error"]["code"] and "param" in view["error"], view
        if op.status == 201:
            answered = op.result.body  # type: ignore[union-attr]
            assert (answered["amount"], answered["legs"]) == (view["amount"], view["legs"])
            if op.kind == "hold":  # pending when answered
                assert (answered["captured_by"], answered["voided_by"],
                        answered["captured_amount"], answered["released_amount"]) == \
                    ([], None, 0, 0), answered


async def open_accounts(url: str, accounts: list[tuple[str, int, int]]) -> None:
    async with client(url, 8) as http:
        for account_id, balance, overdraft in accounts:
            async with http.post("/v1/accounts", json={
                    "id": account_id, "currency": "USD", "overdraft_limit": overdraft}) as r:
                assert r.status == 201, await r.text()
            if balance:
                async with http.post(f"{T}?wait=true", json={
                        "type": "deposit", "currency": "USD", "destination": account_id,
                        "amount": balance}) as r:
                    assert r.status == 201, await r.text()


# -- 1. a mixed load from both workers ------------------------------------------------------

@dataclass
class Mix:
    rng: random.Random
    payers: list[str]
    sinks: list[str]
    ops: list[Op] = field(default_factory=list)
    n: int = 0

    def key(self, tag: str) -> str:
        self.n += 1
        return f"mix-{tag}-{self.n}"

    def path(self, wait_every: int) -> str:
        return f"{T}?wait=true" if self.rng.randrange(wait_every) == 0 else T

    def hold(self, expires_s: int, kind: str = "transfer") -> Op:
        source = self.rng.choice(self.payers)
        body: dict[str, Any] = {"type": kind, "currency": "USD", "source": source,
                                "amount": self.rng.randint(50, 400), "hold": True,
                                "hold_expires_in_s": expires_s}
        if kind == "transfer":
            body["destination"] = self.rng.choice([a for a in self.payers + self.sinks if a != source])
        return Op("hold", self.path(3), body, self.key("hold"), group=f"short{expires_s}"
                  if expires_s <= 3 else "long")

    def transfer(self, to_sink: bool = False) -> Op:
        source = self.rng.choice(self.payers)
        destination = self.rng.choice(self.sinks if to_sink else
                                      [a for a in self.payers + self.sinks if a != source])
        body = {"type": "transfer", "currency": "USD", "source": source,
                "destination": destination, "amount": self.rng.randint(100, 500)}
        return Op("transfer", self.path(3), body, self.key("transfer"),
                  group="to_sink" if to_sink else "")

    def linked(self, verb: str, receipt: str, body: dict[str, Any] | None = None) -> Op:
        kind = {"capture": "capture", "void": "void", "reverse": "reverse"}[verb]
        return Op(kind, self.path(4).replace(T, f"{T}/{receipt}/{verb}"), body,
                  self.key(verb), group=receipt)

    def filler(self) -> Op:
        roll = self.rng.random()
        if roll < 0.5:
            return self.transfer()
        if roll < 0.8:
            return self.hold(self.rng.randint(1, 3))
        return self.hold(self.rng.randint(1, 3), "withdrawal")


def amount_of(op: Op) -> int:
    assert op.body is not None
    return int(op.body["amount"])


def shuffled_groups(rng: random.Random, groups: list[list[Op]], fillers: list[Op]) -> list[Op]:
    """Groups kept together (their members race), fillers between, in a seeded order."""
    units = groups + [[f] for f in fillers]
    rng.shuffle(units)
    return [op for unit in units for op in unit]


HOLD_SCENARIOS = ("capture_full", "capture_partial", "void", "race_cv", "race_cc", "race_cvc",
                  "leave")


def hold_scenario(mix: Mix, scenario: str, hold: Op) -> list[Op]:
    rc = hold.receipt
    assert rc is not None
    amount = amount_of(hold)
    part = max(1, amount // 3)
    if scenario == "capture_full":
        return [mix.linked("capture", rc)]
    if scenario == "capture_partial":
        return [mix.linked("capture", rc, {"amount": part})]
    if scenario == "void":
        return [mix.linked("void", rc)]
    if scenario == "race_cv":
        return [mix.linked("capture", rc), mix.linked("void", rc)]
    if scenario == "race_cc":
        return [mix.linked("capture", rc, {"amount": part}), mix.linked("capture", rc)]
    if scenario == "race_cvc":
        return [mix.linked("capture", rc), mix.linked("void", rc),
                mix.linked("capture", rc, {"amount": part})]
    return []


REVERSAL_SCENARIOS = ("rev_full", "rev_partial", "rev_pair")


def reversal_scenario(mix: Mix, scenario: str, original: Op | str, amount: int) -> list[Op]:
    rc = original if isinstance(original, str) else original.receipt
    assert rc is not None
    if scenario == "rev_full":
        return [mix.linked("reverse", rc)]
    if scenario == "rev_partial":
        return [mix.linked("reverse", rc, {"amount": max(1, amount // 3),
                                           "description": "partial"})]
    # Two partial reversals of 60% each: together over the original, exactly one fits.
    share = amount * 3 // 5 + 1
    return [mix.linked("reverse", rc, {"amount": share}), mix.linked("reverse", rc, {"amount": share})]


EXPECTED = {  # (kind, wait) -> HTTP statuses a correct server may answer
    ("hold", False): {202, 422}, ("hold", True): {201, 422},
    ("transfer", False): {202, 422}, ("transfer", True): {201, 422},
    ("capture", False): {202, 409}, ("capture", True): {201, 409},
    ("void", False): {202, 409}, ("void", True): {201, 409},
    ("reverse", False): {202, 409, 422}, ("reverse", True): {201, 409, 422},
}


def check_answers(ops: list[Op]) -> None:
    bad = [op.describe() if isinstance(op.result, Reply) else f"{op.kind} {op.path}: {op.result!r}"
           for op in ops if op.status not in EXPECTED[(op.kind, op.wait)]]
    assert not bad, f"{len(bad)} unexpected answers, e.g. {bad[:5]}"


async def test_mixed_operations_from_both_workers(pg_server: PostgresServer,
                                                  redis_url: str) -> None:
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_url)
    started = time.monotonic()
    try:
        payers = [f"p{i:02}" for i in range(18)]
        sinks = ["sink0", "sink1"]  # only ever credited (and debited by reversals)
        await open_accounts(kassa.url, [(a, 20_000, 3_000 if i % 4 == 0 else 0)
                                        for i, a in enumerate(payers)]
                            + [(a, 1_000, 0) for a in sinks])
        assert len(kassa.worker_pids()) == 2
        mix = Mix(random.Random(1212), payers, sinks)

        # Phase A (700): holds (long and short), transfers, transfers into the sinks.
        phase_a = ([mix.hold(600) for _ in range(300)]
                   + [mix.hold(mix.rng.randint(1, 3), mix.rng.choice(["transfer", "withdrawal"]))
                      for _ in range(80)]
                   + [mix.transfer(to_sink=True) for _ in range(120)]
                   + [mix.transfer() for _ in range(200)])
        mix.rng.shuffle(phase_a)
        await drive_ops(kassa.url, phase_a)
        check_answers(phase_a)
        await settle(kassa.url, phase_a)

        # Phase B (1100): captures and voids of the long holds (single and racing), captures
        # of the short ones (racing their expiry), reversals of the sink transfers (single
        # and racing pairs over the original), new transfers and short holds.
        long_held = [op for op in phase_a if op.group == "long" and op.outcome == "held"]
        short_held = [op for op in phase_a if op.group.startswith("short") and op.outcome == "held"]
        to_sink = [op for op in phase_a if op.group == "to_sink" and op.outcome == "completed"]
        assert len(long_held) > 250 and len(to_sink) > 100, (len(long_held), len(to_sink))
        scenario_of: dict[str, str] = {}
        groups: list[list[Op]] = []
        for i, hold in enumerate(long_held):
            scenario = HOLD_SCENARIOS[i % len(HOLD_SCENARIOS)]
            assert hold.receipt is not None
            scenario_of[hold.receipt] = scenario
            groups.append(hold_scenario(mix, scenario, hold))
        groups.extend([mix.linked("capture", str(hold.receipt))] for hold in short_held[::2])
        for i, original in enumerate(to_sink):
            scenario = REVERSAL_SCENARIOS[i % len(REVERSAL_SCENARIOS)]
            scenario_of[str(original.receipt)] = scenario
            groups.append(reversal_scenario(mix, scenario, original, amount_of(original)))
        linked = sum(len(g) for g in groups)
        assert linked < 1100, linked
        phase_b = shuffled_groups(mix.rng, groups, [mix.filler() for _ in range(1100 - linked)])
        await drive_ops(kassa.url, phase_b)
        check_answers(phase_b)
        await settle(kassa.url, phase_b)

        # Phase C (200): reversals of completed captures (their destination may lack the
        # funds: 422), racing pairs among them, and more transfers and holds.
        captures = [op for op in phase_b if op.kind == "capture" and op.outcome == "completed"]
        amounts = {str(op.receipt): amount_of(op) for op in phase_a if op.kind == "hold"}
        groups = []
        for i, capture in enumerate(captures[:50]):
            held = amounts[capture.group]
            amount = capture.body["amount"] if capture.body else held
            groups.append(reversal_scenario(mix, REVERSAL_SCENARIOS[i % 3], capture, amount))
        linked = sum(len(g) for g in groups)
        phase_c = shuffled_groups(mix.rng, groups, [mix.filler() for _ in range(200 - linked)])
        await drive_ops(kassa.url, phase_c)
        check_answers(phase_c)
        await settle(kassa.url, phase_c)
        everything = phase_a + phase_b + phase_c
        assert len(everything) == 2000

        await wait_quiet(dsn, due_within_s=60)  # the short holds (1..3 s) all ended
        await assert_invariants(dsn)

        # Each scenario on a long hold: exactly one of its operations ended it, the others
        # were refused hold_not_pending; the hold's status says which.
        by_group: dict[str, list[Op]] = {}
        for op in phase_b + phase_c:
            if op.kind in ("capture", "void", "reverse"):
                by_group.setdefault(op.group, []).append(op)
        endings = await hold_endings(dsn)
        for row in endings.values():
            check_hold_row(row)
        for rc, scenario in scenario_of.items():
            ops = by_group.get(rc, [])
            if scenario.startswith("rev"):
                won = [op for op in ops if op.succeeded]
                lost = {op.outcome for op in ops if not op.succeeded}
                if scenario == "rev_pair":
                    assert len(won) == 1 and lost == {"reversal_exceeds_original"}, \
                        [op.describe() for op in ops]
                else:
                    assert len(won) == 1, [op.describe() for op in ops]
                continue
            row = endings[rc]
            if scenario == "leave":
                assert row["status"] == "held", (rc, row)
                continue
            won = [op for op in ops if op.succeeded]
            assert len(won) == 1, (rc, scenario, [op.describe() for op in ops])
            assert {op.outcome for op in ops if not op.succeeded} <= {"hold_not_pending"}, \
                [op.describe() for op in ops]
            assert row["status"] == ("completed" if won[0].kind == "capture" else "voided"), \
                (rc, row, [op.describe() for op in ops])
        # Short holds: captured in time or voided by the server, never both.
        for op in phase_a + phase_b + phase_c:
            if op.kind == "hold" and op.group.startswith("short") and op.outcome == "held":
                row = endings[str(op.receipt)]
                assert row["status"] in ("completed", "voided"), row
                if row["status"] == "voided":
                    assert row["expiries"] == 1, row
        assert sum(r["expiries"] for r in endings.values()) > 20, "few holds expired"
        assert all(r["status"] != "held" or not r["expired"] for r in endings.values())

        print("answers:", {f"{k}:{v}" for k, v in (
            (op.kind, outcome_name(op.result)) for op in everything)},
            "outcomes of linked ops:", sorted({(op.kind, op.outcome) for op in everything
                                              if op.kind in ("capture", "void", "reverse")}),
            "expired:", sum(r["expiries"] for r in endings.values()))
        # No reversal sum over its original.
        for row in await fetch(dsn, REVERSAL_SUMS):
            assert row["total"] == row["reversed"] <= row["amount"], dict(row)

        # HTTP says what the database says, for every receipt answered (holds included).
        receipts = [str(op.receipt) for op in everything if op.receipt is not None]
        assert len(set(receipts)) == len(receipts), "a receipt code was handed out twice"
        await assert_http_matches_db(kassa.url, dsn, receipts)
        await assert_money_and_links(kassa.url, dsn, everything)
        assert time.monotonic() - started < 100
    except BaseException:
        print(kassa.log_tail(80))
        raise
    finally:
        kassa.stop()


# -- 2. holds end exactly once through a worker's SIGKILL -----------------------------------

async def test_holds_end_once_when_a_worker_is_killed(pg_server: PostgresServer,
                                                      redis_url: str) -> None:
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_url, **FAST_RECOVERY)
    try:
        ids = [f"k{i:02}" for i in range(20)]
        await open_accounts(kassa.url, [(a, 1_000_000, 0) for a in ids])
        workers_before = kassa.worker_pids()
        assert len(workers_before) == 2
        rounds, iterations = 32, 20
        done = 0
        kill_now = asyncio.Event()
        ops: list[Op] = []

        async def worker(n: int, http: aiohttp.ClientSession) -> None:
            nonlocal done
            rng = random.Random(5000 + n)
            for i in range(iterations):
                source, destination = rng.sample(ids, 2)
                amount = rng.randint(10, 1000)
                hold = Op("hold", f"{T}?wait=true", {
                    "type": "transfer", "currency": "USD", "source": source,
                    "destination": destination, "amount": amount, "hold": True,
                    "hold_expires_in_s": rng.randint(1, 2)}, f"kill-hold-{n}-{i}")
                ops.append(hold)
                try:
                    hold.result = await send(http, hold)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    hold.result = exc
                roll = rng.random()
                if hold.status == 201 and roll < 0.75:
                    verb = "void" if roll < 0.15 else "capture"
                    body = {"amount": rng.randint(1, amount)} if verb == "capture" and roll < 0.45 \
                        else None
                    linked = Op(verb, f"{T}/{hold.receipt}/{verb}", body, f"kill-{verb}-{n}-{i}",
                                group=str(hold.receipt))
                    ops.append(linked)
                    try:
                        linked.result = await send(http, linked)
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        linked.result = exc
                done += 1
                if done == rounds * iterations // 3:
                    kill_now.set()

        async def killer() -> int:
            await kill_now.wait()
            victim = kassa.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            return victim

        async with client(kassa.url, rounds) as http:
            kill = asyncio.create_task(killer())
            await asyncio.gather(*(worker(n, http) for n in range(rounds)))
            victim = await kill

        counts: dict[str, int] = {}
        for op in ops:
            counts[f"{op.kind}:{outcome_name(op.result)}"] = \
                counts.get(f"{op.kind}:{outcome_name(op.result)}", 0) + 1
        print(f"answers: {counts}")
        # A ?wait=true hold may answer 202 when its outcome is not known in time.
        allowed = ({f"hold:{s}" for s in ("201", "202", "503", *DISCONNECTS)}
                   | {f"{k}:{s}" for k in ("capture", "void") for s in ("202", "409", "503", *DISCONNECTS)})
        assert set(counts) <= allowed, counts
        assert counts.get("hold:201", 0) > 400, counts
        assert counts.get("capture:202", 0) > 150, counts
        assert sum(v for k, v in counts.items() if k.split(":")[1] in DISCONNECTS | {"503"}) < 100, counts

        # Every 202 ends final; then every hold ends once its deadline has passed.
        await settle(kassa.url, ops, 45)
        odd = [(op.kind, op.key, op.receipt, op.final) for op in ops
               if op.final is not None and op.final["status"] not in ("completed", "voided", "failed")
               and not (op.kind == "hold" and op.final["status"] == "held")]
        assert not odd, f"{len(odd)} accepted receipts settled on a non-final status: {odd[:5]}"
        try:
            await wait_quiet(dsn, 45, due_within_s=60)  # every hold (1..2 s) is due
        except AssertionError:
            print(await overdue_evidence(dsn, redis_url))
            raise
        endings = await hold_endings(dsn)
        for row in endings.values():
            check_hold_row(row)
        assert not [r for r in endings.values() if r["status"] == "held"], "holds never ended"
        answered = {str(op.receipt) for op in ops if op.kind == "hold" and op.status == 201}
        assert answered <= set(endings), "answered holds without a journal"
        assert all(endings[rc]["status"] in ("completed", "voided") for rc in answered)
        print("hold endings:", {s: sum(1 for r in endings.values() if r["status"] == s)
                                for s in ("completed", "voided", "failed")},
              "expired:", sum(r["expiries"] for r in endings.values()))
        assert sum(r["expiries"] for r in endings.values()) > 50, "few holds expired"
        # A capture answered 202 that completed ended its hold, and the hold says so.
        for op in ops:
            if op.status == 202 and op.final is not None:
                want = {"completed": "completed", "voided": "voided"}.get(op.final["status"])
                if want:
                    assert endings[op.group]["status"] == want, (op.describe(), endings[op.group])
                else:
                    assert op.final["error"]["code"] == "hold_not_pending", op.describe()
        receipts = [str(op.receipt) for op in ops if op.receipt is not None]
        await assert_http_matches_db(kassa.url, dsn, receipts)
        await assert_money_and_links(kassa.url, dsn, ops)
        await assert_invariants(dsn)
        assert victim not in kassa.worker_pids()
        assert len(kassa.worker_pids()) == 2, "the master did not replace the killed worker"
    except BaseException:
        print(kassa.log_tail(80))
        raise
    finally:
        kassa.stop()
