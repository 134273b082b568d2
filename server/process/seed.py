"""`kassa seed`: N funded accounts on a running server, for load tools (wrk, k6) to use.

Everything goes through the server's HTTP API, its own durable paths: `POST /v1/accounts`
for each account (a 409 `account_exists` is fine: a re-run), then one deposit of the
balance to each, `POST /v1/transactions/batch?wait=true`, up to 1,000 per batch. Every
deposit carries the idempotency key `kassa-seed:<account id>`, so a re-run with the same
API key replays the deposits instead of posting them again: nothing is funded twice.
Idempotency keys are scoped to the API key (docs/api.md, Idempotency): a re-run with
another key does fund again.

The answers: a summary line on stdout and exit 0; one line on stderr and exit 1 for an
answer of the server that is an error (4xx/5xx, a deposit refused or failed), exit 2 when
the server cannot be reached or no API key is found.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.process.settings import ConfigError, Settings, parse_api_keys

DEFAULT_PREFIX = "seed_"
DEFAULT_BALANCE = 1_000_000  # minor units: 10,000.00 in a currency of cents
DEFAULT_CURRENCY = "USD"
AMOUNT_MAX = 2**53 - 1  # docs/api.md, Amounts
BATCH_MAX = 1_000  # POST /v1/transactions/batch
ACCOUNT_CONCURRENCY = 8  # account creations in flight (one commit each)
REQUEST_TIMEOUT_S = 120.0  # a batch of 1,000 with ?wait=true answers within the server's 30 s
RETRIES = 5  # per item refused as idempotency_in_progress, overloaded or unavailable
RETRY_DELAY_S = 1.0  # the Retry-After of idempotency_in_progress and overloaded
RETRYABLE = frozenset({"idempotency_in_progress", "overloaded", "unavailable"})
POLL_TIMEOUT_S = 60.0  # deposits still processing when their batch answered
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3,10}")


class SeedFailed(Exception):
    """The server answered with an error: the message is the one line to print (exit 1)."""


class ServerUnreachable(Exception):
    """No answer from the server, or no key to ask with: one line, exit 2."""


@dataclass(frozen=True)
class Seeded:
    accounts: int
    created: int
    existed: int
    funded: int
    seconds: float


def account_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def idempotency_key(account_id: str) -> str:
    """The same on every run: a re-run replays the deposit instead of posting it again."""
    return f"kassa-seed:{account_id}"


def deposits(ids: Sequence[str], balance: int, currency: str) -> list[dict[str, Any]]:
    return [{"type": "deposit", "currency": currency, "destination": account, "amount": balance,
             "idempotency_key": idempotency_key(account)} for account in ids]


def chunks(items: Sequence[Any], size: int = BATCH_MAX) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def error_line(response: httpx.Response) -> str:
    """`<status> <code>: <message>` from the API's error body, else the body's start."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200]
        return f"{response.status_code} {text or response.reason_phrase}"


async def seed(url: str, api_key: str, count: int, *, balance: int = DEFAULT_BALANCE,
               prefix: str = DEFAULT_PREFIX, currency: str = DEFAULT_CURRENCY,
               transport: httpx.AsyncBaseTransport | None = None) -> Seeded:
    """Create `prefix`0 … `prefix`<count-1> in `currency` and deposit `balance` to each
    (none when 0). Raises SeedFailed or ServerUnreachable."""
    started = time.monotonic()
    ids = account_ids(prefix, count)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=REQUEST_TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {api_key}"}) as http:
        try:
            created = await create_accounts(http, ids, currency)
            funded = await fund(http, ids, balance, currency) if balance else 0
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(
                f"cannot reach the Kassa server at {url} ({_reason(exc)}): start `kassa "
                "serve`, or pass --url") from None
        except httpx.TransportError as exc:
            raise SeedFailed(f"no answer from the Kassa server at {url} ({_reason(exc)})"
                             ) from None
    return Seeded(count, created, count - created, funded, time.monotonic() - started)


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def create_accounts(http: httpx.AsyncClient, ids: Sequence[str], currency: str) -> int:
    """How many were created now; an id that exists already (409) counts as done."""
    pending = iter(ids)
    created = 0

    async def worker() -> None:
        nonlocal created
        for account in pending:
            r = await http.post("/v1/accounts", json={"id": account, "currency": currency})
            if r.status_code == 201:
                created += 1
            elif not (r.status_code == 409 and _code(r) == "account_exists"):
                raise SeedFailed(f"POST /v1/accounts {account}: {error_line(r)}")

    workers = [asyncio.create_task(worker()) for _ in range(min(ACCOUNT_CONCURRENCY, len(ids)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return created


def _code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def fund(http: httpx.AsyncClient, ids: Sequence[str], balance: int, currency: str) -> int:
    """Deposit `balance` to each account (replayed, never posted twice, on a re-run)."""
    funded = 0
    for batch in chunks(deposits(ids, balance, currency)):
        funded += await fund_batch(http, list(batch))
    return funded


async def fund_batch(http: httpx.AsyncClient, items: list[dict[str, Any]]) -> int:
    processing: list[tuple[str, str]] = []  # (account, receipt code)
    done = 0
    for attempt in range(RETRIES + 1):
        r = await http.post("/v1/transactions/batch?wait=true", json={"transactions": items})
        if r.status_code != 201:
            raise SeedFailed(f"POST /v1/transactions/batch: {error_line(r)}")
        retry = []
        for item, result in zip(items, r.json()["results"], strict=True):
            account = item["destination"]
            status = result.get("status")
            if status == "completed":
                done += 1
            elif status == "processing":
                processing.append((account, result["receipt_code"]))
            elif "receipt_code" in result:  # failed at execution
                error = result.get("error", {})
                raise SeedFailed(f"deposit to {account} failed: {error.get('code')}: "
                                 f"{error.get('message')}")
            elif result.get("error", {}).get("code") in RETRYABLE and attempt < RETRIES:
                retry.append(item)
            else:
                error = result.get("error", {})
                hint = (" (seeded before with another --balance or --currency: use another "
                        "--prefix)" if error.get("code") == "idempotency_key_reused" else "")
                raise SeedFailed(f"deposit to {account} refused: {error.get('code')}: "
                                 f"{error.get('message')}{hint}")
        if not retry:
            break
        items = retry
        await asyncio.sleep(RETRY_DELAY_S)
    for account, code in processing:
        await wait_completed(http, account, code)
        done += 1
    return done


async def wait_completed(http: httpx.AsyncClient, account: str, receipt_code: str) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        r = await http.get(f"/v1/transactions/{receipt_code}/status")
        if r.status_code != 200:
            raise SeedFailed(f"GET /v1/transactions/{receipt_code}/status: {error_line(r)}")
        body = r.json()
        if body["status"] == "completed":
            return
        if body["status"] != "processing":
            error = body.get("error") or {}
            raise SeedFailed(f"deposit to {account} ({receipt_code}) {body['status']}: "
                             f"{error.get('code')}: {error.get('message')}")
        if time.monotonic() > deadline:
            raise SeedFailed(f"deposit to {account} ({receipt_code}) still processing after "
                             f"{POLL_TIMEOUT_S:g}s; it will finish: run seed again to check")
        await asyncio.sleep(0.2)


# The command line.

def default_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def default_api_key(settings: Settings, data_dir: str | Path) -> str | None:
    """KASSA_API_KEYS' first admin key (accounts need admin), else its first write key,
    else the admin key `kassa serve` generated under the data dir."""
    if settings.api_keys:
        try:
            keys = parse_api_keys(settings.api_keys)
        except ConfigError:
            keys = {}
        for scope in ("admin", "write"):
            found = [key for key, given in keys.items() if given == scope]
            if found:
                return found[0]
    try:
        return (Path(data_dir) / "admin_api_key").read_text().strip() or None
    except OSError:
        return None


def _count(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: at least 1")
    return value


def _balance(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= AMOUNT_MAX:
        raise argparse.ArgumentTypeError(f"{raw!r}: 0 (no deposit) to 2**53 - 1 minor units")
    return value


def _currency(raw: str) -> str:
    if not _CURRENCY.fullmatch(raw):
        raise argparse.ArgumentTypeError(f"{raw!r}: 3 to 10 uppercase letters")
    return raw


def _prefix(raw: str) -> str:
    if not _ID.fullmatch(raw + "0"):
        raise argparse.ArgumentTypeError(
            f"{raw!r}: letters, digits, _ and - only, the ids at most 64 characters")
    return raw


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: Settings,
               formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "seed", formatter_class=formatter,
        help="create and fund N accounts on a running server (for wrk and k6)",
        description="Creates the accounts <prefix>0 .. <prefix><N-1> over the server's HTTP "
                    "API (an existing one is kept) and deposits --balance to each in batches "
                    "of up to 1,000, with idempotency keys: a re-run with the same API key "
                    "funds nothing twice. Exit 1 on an error answer, 2 when the server cannot "
                    "be reached.")
    p.add_argument("--accounts", type=_count, required=True, metavar="N", default=argparse.SUPPRESS,
                   help="how many accounts")
    p.add_argument("--balance", type=_balance, default=DEFAULT_BALANCE, metavar="B",
                   help="deposited to each account, in minor units (0: create only)")
    p.add_argument("--prefix", type=_prefix, default=DEFAULT_PREFIX, metavar="P",
                   help="account ids are <prefix><n>")
    p.add_argument("--currency", type=_currency, default=DEFAULT_CURRENCY, metavar="C",
                   help="the accounts' currency")
    p.add_argument("--url", default=default_url(settings),
                   help="the server (KASSA_HOST and KASSA_PORT)")
    p.add_argument("--api-key", default=argparse.SUPPRESS,
                   help="an admin key (default: the first admin key of KASSA_API_KEYS, else its "
                        "first write key, else the generated one in <data-dir>/admin_api_key)")
    p.add_argument("--data-dir", default=settings.data_dir,
                   help="where `kassa serve` keeps its generated admin key (KASSA_DATA_DIR)")


def run(args: argparse.Namespace, settings: Settings) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    api_key = getattr(args, "api_key", None) or default_api_key(settings, args.data_dir)
    if not api_key:
        print(f"kassa: seed: no API key: pass --api-key, set KASSA_API_KEYS, or start `kassa "
              f"serve --data-dir {args.data_dir}` (it writes admin_api_key there)",
              file=sys.stderr)
        sys.exit(2)
    try:
        seeded = asyncio.run(seed(args.url.rstrip("/"), api_key, args.accounts,
                                  balance=args.balance, prefix=args.prefix,
                                  currency=args.currency))
    except ServerUnreachable as exc:
        print(f"kassa: seed: {exc}", file=sys.stderr)
        sys.exit(2)
    except SeedFailed as exc:
        print(f"kassa: seed: {exc}", file=sys.stderr)
        sys.exit(1)
    print(summary(seeded, args.prefix, args.currency, args.balance), flush=True)


def summary(seeded: Seeded, prefix: str, currency: str, balance: int) -> str:
    last = f"{prefix}{seeded.accounts - 1}"
    funding = (f"each holds a deposit of {balance} (a re-run replays it, never posts it twice)"
               if balance else "no deposits (--balance 0)")
    return (f"seeded {seeded.accounts} {currency} accounts {prefix}0..{last} "
            f"({seeded.created} created, {seeded.existed} already there); {funding}; "
            f"{seeded.seconds:.1f}s")
