"""The PostgreSQL-function ledger, the bench's second peer (scenarios `funcledger` and
`funcledger-bulk`).

    gunicorn -w 2 -k bench.funcledger_server.FuncLedgerWorker bench.funcledger_server:app

The ledger is PL/pgSQL (SCHEMA below, in its own schema `funcledger` on the PostgreSQL Kassa
uses in this run): `accounts(id, currency, balance, floor)` (the balance may not go below
`floor`: 0 = no overdraft), `transfers`, and `entries` (two per transfer, each with the
account's `balance_after`). `funcledger.transfer(src, dst, amount, currency)` locks both
accounts in id order, moves the money, inserts the transfer and its two entries and returns
the transfer's id, or raises `insufficient_funds` / `account_not_found` /
`currency_mismatch` / `validation_error` (the whole call rolled back). The batch variant
`funcledger.transfer_batch(srcs, dsts, amounts, currencies)` takes arrays: it locks every
account of the batch once, in id order, applies the items one after the other (an item that
cannot be applied is refused alone, as Kassa's batch refuses items), inserts all transfers
and entries with one INSERT each, and returns one `(transfer_id, error)` row per item.

The HTTP layer is as thin as bench/naive_server.py's (Starlette, asyncpg, the same uvicorn
worker settings): `POST /v1/transactions` takes Kassa's transfer body and makes one call,
one commit: 201 `{"receipt_code", "status": "completed"}`, or 422 `{"error": {"code"}}` like
Kassa's refusals. `POST /v1/transactions/batch` takes `{"transactions": [...]}` and makes one
call, one commit: 201 `{"results": [...]}`, each item `{"receipt_code", "status"}` or
`{"receipt_code": null, "error": {"code"}}` (bench/wrk/batch.lua counts items with a
receipt_code key minus those with an error object). No Redis, no broker: the money is
on the destination account when the answer leaves.

Settings (environment): FUNCLEDGER_DATABASE_URL, FUNCLEDGER_DB_POOL_MAX (per worker,
default 10 as Kassa's KASSA_DB_POOL_MAX). The schema must exist before the workers start
(bench/funcledger.py makes it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.peer_server import PeerWorker, create_pool, healthz

SCHEMA_NAME = "funcledger"
SCHEMA = """
DROP SCHEMA IF EXISTS funcledger CASCADE;
CREATE SCHEMA funcledger;
CREATE TABLE funcledger.accounts (
    id       text PRIMARY KEY,
    currency text NOT NULL,
    balance  bigint NOT NULL DEFAULT 0,
    floor    bigint NOT NULL DEFAULT 0  -- the balance may not go below it (0: no overdraft)
);
CREATE TABLE funcledger.transfers (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    destination text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    currency    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE funcledger.entries (
    id            bigserial PRIMARY KEY,
    transfer_id   bigint NOT NULL,
    account_id    text NOT NULL,
    amount        bigint NOT NULL,
    balance_after bigint NOT NULL
);
-- An account's statement, newest first.
CREATE INDEX entries_account ON funcledger.entries (account_id, id);

-- Why (src, dst, amount, currency) cannot be applied now, or NULL. The rows are locked.
CREATE FUNCTION funcledger.refusal(p_src text, p_dst text, p_amount bigint, p_currency text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    s funcledger.accounts;
    d funcledger.accounts;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 OR p_src IS NULL OR p_dst IS NULL OR p_src = p_dst THEN
        RETURN 'validation_error';
    END IF;
    SELECT * INTO s FROM funcledger.accounts WHERE id = p_src;
    SELECT * INTO d FROM funcledger.accounts WHERE id = p_dst;
    IF s.id IS NULL OR d.id IS NULL THEN
        RETURN 'account_not_found';
    END IF;
    IF s.currency <> p_currency OR d.currency <> p_currency THEN
        RETURN 'currency_mismatch';
    END IF;
    IF s.balance - p_amount < s.floor THEN
        RETURN 'insufficient_funds';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION funcledger.transfer(p_src text, p_dst text, p_amount bigint, p_currency text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    src_after bigint;
    dst_after bigint;
    why text;
    tid bigint;
BEGIN
    -- Both accounts locked in id order: two transfers between the same pair cannot deadlock.
    PERFORM 1 FROM funcledger.accounts WHERE id IN (p_src, p_dst) ORDER BY id FOR UPDATE;
    UPDATE funcledger.accounts SET balance = balance - p_amount
     WHERE id = p_src AND currency = p_currency AND balance - p_amount >= floor
       AND p_amount > 0 AND p_src <> p_dst
    RETURNING balance INTO src_after;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', coalesce(funcledger.refusal(p_src, p_dst, p_amount, p_currency),
                                      'validation_error');
    END IF;
    UPDATE funcledger.accounts SET balance = balance + p_amount
     WHERE id = p_dst AND currency = p_currency
    RETURNING balance INTO dst_after;
    IF NOT FOUND THEN  -- the exception rolls the debit back
        why := funcledger.refusal(p_src, p_dst, p_amount, p_currency);
        RAISE EXCEPTION '%', coalesce(why, 'account_not_found');
    END IF;
    INSERT INTO funcledger.transfers (source, destination, amount, currency)
    VALUES (p_src, p_dst, p_amount, p_currency) RETURNING id INTO tid;
    INSERT INTO funcledger.entries (transfer_id, account_id, amount, balance_after)
    VALUES (tid, p_src, -p_amount, src_after), (tid, p_dst, p_amount, dst_after);
    RETURN tid;
END $$;

CREATE FUNCTION funcledger.transfer_batch(p_src text[], p_dst text[], p_amount bigint[],
                                          p_currency text[])
RETURNS TABLE (transfer_id bigint, error text) LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_src, 1), 0);
    ids bigint[] := '{}';
    errors text[] := '{}';
    t_src text[] := '{}'; t_dst text[] := '{}'; t_amount bigint[] := '{}';
    t_cur text[] := '{}'; t_id bigint[] := '{}';
    e_tid bigint[] := '{}'; e_acc text[] := '{}'; e_amount bigint[] := '{}';
    e_after bigint[] := '{}';
    src_after bigint;
    dst_after bigint;
    why text;
    tid bigint;
BEGIN
    -- Every account of the batch locked once, in id order (no deadlock between batches).
    PERFORM 1 FROM funcledger.accounts WHERE id = ANY (p_src || p_dst) ORDER BY id FOR UPDATE;
    FOR i IN 1 .. n LOOP
        why := funcledger.refusal(p_src[i], p_dst[i], p_amount[i], p_currency[i]);
        IF why IS NOT NULL THEN
            ids := ids || NULL::bigint;
            errors := errors || why;
            CONTINUE;
        END IF;
        UPDATE funcledger.accounts SET balance = balance - p_amount[i] WHERE id = p_src[i]
        RETURNING balance INTO src_after;
        UPDATE funcledger.accounts SET balance = balance + p_amount[i] WHERE id = p_dst[i]
        RETURNING balance INTO dst_after;
        tid := nextval('funcledger.transfers_id_seq');
        ids := ids || tid;
        errors := errors || NULL::text;
        t_id := t_id || tid; t_src := t_src || p_src[i]; t_dst := t_dst || p_dst[i];
        t_amount := t_amount || p_amount[i]; t_cur := t_cur || p_currency[i];
        e_tid := e_tid || tid || tid;
        e_acc := e_acc || p_src[i] || p_dst[i];
        e_amount := e_amount || (-p_amount[i]) || p_amount[i];
        e_after := e_after || src_after || dst_after;
    END LOOP;
    INSERT INTO funcledger.transfers (id, source, destination, amount, currency)
    SELECT * FROM unnest(t_id, t_src, t_dst, t_amount, t_cur);
    INSERT INTO funcledger.entries (transfer_id, account_id, amount, balance_after)
    SELECT * FROM unnest(e_tid, e_acc, e_amount, e_after);
    RETURN QUERY SELECT * FROM unnest(ids, errors);
END $$;
"""
TRANSFER = "SELECT funcledger.transfer($1, $2, $3, $4)"
TRANSFER_BATCH = "SELECT transfer_id, error FROM funcledger.transfer_batch($1, $2, $3, $4)"
REFUSALS = frozenset({"insufficient_funds", "account_not_found", "currency_mismatch",
                      "validation_error"})


class FuncLedgerWorker(PeerWorker):
    """The peers' worker (bench/peer_server.py), as bench/naive_server.py's NaiveWorker
    (uvloop, httptools, no access log): the peers differ in what the handler does, not in
    the HTTP stack."""


class State:
    pool: asyncpg.Pool


state = State()


def refused(code: str) -> Response:
    return JSONResponse({"error": {"code": code}}, status_code=422)


def parse_item(tx: object) -> tuple[str, str, int, str]:
    if not isinstance(tx, dict):
        raise TypeError("not an object")
    return str(tx["source"]), str(tx["destination"]), int(tx["amount"]), str(tx["currency"])


async def create_transfer(request: Request) -> Response:
    try:
        src, dst, amount, currency = parse_item(json.loads(await request.body()))
    except (ValueError, KeyError, TypeError):
        return refused("validation_error")
    try:
        tid = await state.pool.fetchval(TRANSFER, src, dst, amount, currency)
    except asyncpg.RaiseError as exc:  # RAISE EXCEPTION in PL/pgSQL: SQLSTATE P0001
        if exc.message in REFUSALS:
            return refused(exc.message)
        raise
    return JSONResponse({"receipt_code": f"F{tid}", "status": "completed"}, status_code=201)


async def create_batch(request: Request) -> Response:
    try:
        items = [parse_item(tx) for tx in json.loads(await request.body())["transactions"]]
    except (ValueError, KeyError, TypeError):
        return refused("validation_error")
    if not items:
        return refused("validation_error")
    srcs, dsts, amounts, currencies = (list(column) for column in zip(*items, strict=True))
    rows = await state.pool.fetch(TRANSFER_BATCH, srcs, dsts, amounts, currencies)
    results = [{"receipt_code": f"F{r['transfer_id']}", "status": "completed"}
               if r["error"] is None else {"receipt_code": None, "error": {"code": r["error"]}}
               for r in rows]
    return JSONResponse({"results": results}, status_code=201)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state.pool = await create_pool("FUNCLEDGER_DATABASE_URL", "FUNCLEDGER_DB_POOL_MAX")
    try:
        yield
    finally:
        await state.pool.close()


app = Starlette(routes=[Route("/v1/transactions", create_transfer, methods=["POST"]),
                        Route("/v1/transactions/batch", create_batch, methods=["POST"]),
                        Route("/healthz", healthz)], lifespan=lifespan)
