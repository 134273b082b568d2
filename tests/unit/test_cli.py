"""The `kassa` command line as a user meets it: help on every command and option, with
defaults (taken from the KASSA_* settings), and --version."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.adapters.postgres.migrate import DatabaseUnreachable, connect, redacted
from server.process import seed as seed_module
from server.process.cli import build_parser
from server.process.embedded import EmbeddedUnavailable, running_postgres_dsn
from server.process.seed import SeedFailed, ServerUnreachable, default_api_key, default_url, seed
from server.process.settings import Settings

COMMANDS = ("serve", "migrate", "receipt-service", "notification-service", "relay", "verify",
            "seed")


def kassa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    clean["COLUMNS"] = "200"  # argparse wraps help to the terminal: keep each line whole
    return subprocess.run([sys.executable, "-m", "server.process.cli", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=60)


def test_help_lists_every_command() -> None:
    result = kassa("--help")
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)
    assert "--version" in result.stdout


def test_serve_help_shows_the_defaults_from_settings() -> None:
    result = kassa("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--workers", "--data-dir"):
        assert option in result.stdout
    assert "(default: 8000)" in result.stdout and "(default: .kassa)" in result.stdout
    configured = kassa("serve", "--help", env={"KASSA_PORT": "9123", "KASSA_DATA_DIR": "/srv/k"})
    assert "(default: 9123)" in configured.stdout and "(default: /srv/k)" in configured.stdout


def test_verify_help() -> None:
    result = kassa("verify", "--help")
    assert result.returncode == 0, result.stderr
    assert "--grace-s" in result.stdout and "(default: 60.0)" in result.stdout
    assert "--no-receipts" in result.stdout and "invariants" in result.stdout


def test_version_comes_from_the_package_metadata() -> None:
    result = kassa("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kassa {importlib.metadata.version('kassa')}\n"


def test_an_invalid_setting_stops_a_command_with_one_line() -> None:
    result = kassa("migrate", env={"KASSA_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.startswith("kassa: configuration error: KASSA_LOG_FORMAT='xml'")
    assert kassa("--help", env={"KASSA_LOG_FORMAT": "xml"}).returncode == 0


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [p for sub in action.choices.values() for p in _parsers(sub)]
    return found


@pytest.mark.parametrize("parser", _parsers(build_parser(Settings())), ids=lambda p: p.prog)
def test_every_option_and_command_has_help(parser: argparse.ArgumentParser) -> None:
    assert parser.description, parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions)
        else:
            assert action.help, (parser.prog, action.dest)


# migrate and verify: KASSA_DATABASE_URL, else the embedded PostgreSQL under --data-dir.

def test_verify_and_migrate_take_a_data_dir_defaulting_to_the_setting() -> None:
    parser = build_parser(Settings(data_dir="/srv/kassa"))
    for command in ("verify", "migrate"):
        assert parser.parse_args([command]).data_dir == "/srv/kassa"
        assert parser.parse_args([command, "--data-dir", "/d"]).data_dir == "/d"
    result = kassa("migrate", "--help", env={"KASSA_DATA_DIR": "/srv/k"})
    assert "--data-dir" in result.stdout and "(default: /srv/k)" in result.stdout


@pytest.mark.parametrize("command", ["verify", "migrate"])
def test_no_embedded_database_under_the_data_dir_is_one_line_and_exit_2(
        command: str, tmp_path: Path) -> None:
    for data_dir, why in ((tmp_path / "none", "no such directory"), (tmp_path, "no such directory")):
        result = kassa(command, "--data-dir", str(data_dir))
        assert result.returncode == 2, result
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert f"no embedded PostgreSQL is running under {data_dir}/pg ({why})" in result.stderr
        assert "KASSA_DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["verify", "migrate"])
def test_an_unreachable_database_url_is_one_line_without_the_password(command: str) -> None:
    result = kassa(command, env={"KASSA_DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:1/x"})
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("kassa: cannot connect to PostgreSQL at "
                                    "postgresql://u:***@127.0.0.1:1/x: ")
    assert "s3cret" not in result.stderr


def test_connect_turns_every_failure_to_connect_into_one_line() -> None:
    for dsn in ("postgresql://127.0.0.1:1/x", "postgresql://nohost.invalid/x",
                "postgresql://postgres:@/postgres?host=/nonexistent/dir", "postgresql://h:notaport/x"):
        with pytest.raises(DatabaseUnreachable) as caught:
            asyncio.run(connect(dsn, 5))
        assert "\n" not in str(caught.value) and str(caught.value).startswith(
            "cannot connect to PostgreSQL at "), caught.value


def test_redacted_hides_passwords_only() -> None:
    assert redacted("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redacted("postgresql://u@h/db?password=pw&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require")
    assert redacted("postgresql://postgres:@/postgres?host=/tmp/d/pg") == (
        "postgresql://postgres:***@/postgres?host=/tmp/d/pg")


def _postmaster_pid(data_dir: Path, pid: int, status: str = "ready",
                    socket_dir: str | None = None) -> None:
    pg = data_dir / "pg"
    pg.mkdir(parents=True, exist_ok=True)
    lines = [str(pid), str(pg), "1700000000", "5432", socket_dir if socket_dir is not None
             else str(pg), "", "  5432001    32768", status]
    (pg / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_the_embedded_dsn_comes_from_a_running_postmaster(tmp_path: Path) -> None:
    _postmaster_pid(tmp_path, os.getpid())  # alive: this process stands in for postgres
    assert running_postgres_dsn(tmp_path) == f"postgresql://postgres:@/postgres?host={tmp_path}/pg"
    _postmaster_pid(tmp_path, os.getpid(), socket_dir="/run/a dir")
    assert running_postgres_dsn(tmp_path) == "postgresql://postgres:@/postgres?host=/run/a%20dir"


def test_a_stale_or_starting_postmaster_is_refused(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    _postmaster_pid(tmp_path, dead.pid)
    with pytest.raises(EmbeddedUnavailable, match="stale postmaster.pid"):
        running_postgres_dsn(tmp_path)
    _postmaster_pid(tmp_path, os.getpid(), status="starting")
    with pytest.raises(EmbeddedUnavailable, match="not ready"):
        running_postgres_dsn(tmp_path)
    (tmp_path / "pg" / "postmaster.pid").unlink()
    with pytest.raises(EmbeddedUnavailable, match=r"\(no postmaster.pid\)"):
        running_postgres_dsn(tmp_path)


# kassa seed: arguments and defaults.

def test_seed_arguments_and_defaults() -> None:
    parser = build_parser(Settings(host="0.0.0.0", port=9001, data_dir="/d"))
    args = parser.parse_args(["seed", "--accounts", "5"])
    assert (args.accounts, args.balance, args.prefix, args.currency) == (5, 1_000_000, "seed_", "USD")
    assert args.url == "http://127.0.0.1:9001" and args.data_dir == "/d"
    assert not hasattr(args, "api_key")
    args = parser.parse_args(["seed", "--accounts", "2", "--balance", "0", "--prefix", "lt-",
                              "--currency", "USDC", "--api-key", "k", "--url", "http://h:1"])
    assert (args.balance, args.prefix, args.currency, args.api_key, args.url) == (
        0, "lt-", "USDC", "k", "http://h:1")
    assert default_url(Settings(host="::1", port=8000)) == "http://[::1]:8000"


@pytest.mark.parametrize("bad", [[], ["--accounts", "0"], ["--accounts", "x"],
                                 ["--accounts", "1", "--balance", "-1"],
                                 ["--accounts", "1", "--balance", str(2**53)],
                                 ["--accounts", "1", "--currency", "usd"],
                                 ["--accounts", "1", "--prefix", "no space"],
                                 ["--accounts", "1", "--prefix", "x" * 64]])
def test_seed_refuses_bad_arguments(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(Settings()).parse_args(["seed", *bad])
    assert exited.value.code == 2


def test_seed_api_key_default(tmp_path: Path) -> None:
    assert default_api_key(Settings(api_keys="r:read,w:write,a:admin,b:admin"), tmp_path) == "a"
    assert default_api_key(Settings(api_keys="r:read,w:write"), tmp_path) == "w"
    assert default_api_key(Settings(), tmp_path) is None
    (tmp_path / "admin_api_key").write_text("kassa_generated\n")
    assert default_api_key(Settings(), tmp_path) == "kassa_generated"
    assert default_api_key(Settings(api_keys="r:read"), tmp_path) == "kassa_generated"


def test_seed_without_any_key_or_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = kassa("seed", "--accounts", "1", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "no API key" in result.stderr
    result = kassa("seed", "--accounts", "1", "--api-key", "k", "--url", "http://127.0.0.1:1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("kassa: seed: cannot reach the Kassa server at "
                                    "http://127.0.0.1:1")


# kassa seed against a fake server (the real one: tests/test_cli_embedded.py).

class FakeKassa:
    """POST /v1/accounts, POST /v1/transactions/batch?wait=true with idempotency keys."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.balances: dict[str, int] = {}
        self.currencies: dict[str, str] = {}
        self.keys: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.batches: list[int] = []
        self.refuse_first = refuse_first  # items answered idempotency_in_progress once

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer k"
        body = json.loads(request.content)
        if request.url.path == "/v1/accounts":
            if body["id"] in self.balances:
                return httpx.Response(409, json={"error": {"code": "account_exists",
                                                           "message": "exists"}})
            self.balances[body["id"]] = 0
            self.currencies[body["id"]] = body["currency"]
            return httpx.Response(201, json=body)
        assert request.url.path == "/v1/transactions/batch" and request.url.params["wait"] == "true"
        items = body["transactions"]
        assert 1 <= len(items) <= 1_000
        self.batches.append(len(items))
        results: list[dict[str, Any]] = []
        for item in items:
            if self.refuse_first:
                self.refuse_first -= 1
                results.append({"error": {"code": "idempotency_in_progress", "message": "m"}})
            elif item["idempotency_key"] in self.keys:
                original, result = self.keys[item["idempotency_key"]]
                results.append(result if original == item else {
                    "error": {"code": "idempotency_key_reused", "message": "other body"}})
            elif self.currencies[item["destination"]] != item["currency"]:
                results.append({"error": {"code": "currency_mismatch", "message": "no"},
                                "receipt_code": "RCP-1"})
            else:
                self.balances[item["destination"]] += item["amount"]
                result = {"receipt_code": "RCP-2", "status": "completed"}
                self.keys[item["idempotency_key"]] = (item, result)
                results.append(result)
        return httpx.Response(201, json={"results": results})


def run_seed(fake: FakeKassa, count: int, **options: Any) -> seed_module.Seeded:
    return asyncio.run(seed("http://kassa", "k", count, transport=httpx.MockTransport(fake.handle),
                            **options))


def test_seed_creates_funds_and_a_rerun_funds_nothing_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seed_module, "RETRY_DELAY_S", 0)
    fake = FakeKassa(refuse_first=3)
    seeded = run_seed(fake, 2_500, balance=7, prefix="p")
    assert (seeded.created, seeded.existed, seeded.funded) == (2_500, 0, 2_500)
    assert fake.balances == {f"p{n}": 7 for n in range(2_500)}
    assert fake.batches == [1_000, 3, 1_000, 500]  # the refused three retried alone
    again = run_seed(fake, 2_501, balance=7, prefix="p")
    assert (again.created, again.existed, again.funded) == (1, 2_500, 2_501)
    assert set(fake.balances.values()) == {7}
    only = run_seed(FakeKassa(), 3, balance=0)
    assert (only.created, only.funded) == (3, 0)


def test_seed_stops_on_an_error_answer_with_one_line() -> None:
    fake = FakeKassa()
    fake.balances, fake.currencies = {"seed_0": 0}, {"seed_0": "EUR"}
    with pytest.raises(SeedFailed, match=r"^deposit to seed_0 failed: currency_mismatch: no$"):
        run_seed(fake, 2)  # seed_0 exists in EUR
    fake = FakeKassa()
    run_seed(fake, 2)
    with pytest.raises(SeedFailed, match=r"^deposit to seed_0 refused: idempotency_key_reused: "
                                         r"other body \(seeded before with another --balance"):
        run_seed(fake, 2, balance=5)
    refused = httpx.MockTransport(lambda r: httpx.Response(
        401, json={"error": {"code": "unauthorized", "message": "bad key"}}))
    with pytest.raises(SeedFailed, match=r"^POST /v1/accounts seed_\d: 401 unauthorized: bad key$"):
        asyncio.run(seed("http://kassa", "k", 3, transport=refused))
    broken = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(SeedFailed, match=r"502 <html>bad gateway</html>$"):
        asyncio.run(seed("http://kassa", "k", 1, transport=broken))

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    with pytest.raises(ServerUnreachable, match="cannot reach the Kassa server at http://kassa"):
        asyncio.run(seed("http://kassa", "k", 1, transport=httpx.MockTransport(down)))
