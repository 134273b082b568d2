"""`kassa verify`, `kassa migrate` and `kassa seed` as a user runs them next to a `kassa serve`
with the embedded stack and no KASSA_* variables: they find its database and admin key
under --data-dir."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.adapters.postgres.verify import CHECKS
from server.process.embedded import running_postgres_dsn
from tests.fixtures.kassa_server import KASSA, KassaProcess, start_kassa
from tests.invariants import assert_invariants, scalar

pytestmark = pytest.mark.slow


def kassa(*args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The console script with none of the caller's KASSA_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    return subprocess.run([str(KASSA), *args], capture_output=True, text=True, cwd=cwd,
                          env={**clean, **(env or {})}, timeout=120, check=False)


@pytest.fixture(scope="module")
def served() -> Iterator[KassaProcess]:
    data_dir = Path("/tmp") / f"kassa-cli-{os.getpid()}"  # pgserver chmods parents o+rx
    server = start_kassa({}, workers=1, data_dir=data_dir, timeout_s=90)
    try:
        yield server
    finally:
        try:
            assert server.stop() == 0, server.log()
            # Stopped: nothing runs under the data dir any more, and verify says so.
            gone = kassa("verify", "--data-dir", str(data_dir))
            assert gone.returncode == 2 and "(no postmaster.pid)" in gone.stderr, gone
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def test_migrate_and_verify_find_the_embedded_database(served: KassaProcess) -> None:
    data_dir = str(served.data_dir)
    migrated = kassa("migrate", "--data-dir", data_dir)
    assert migrated.returncode == 0, migrated
    assert migrated.stdout == "applied 0 migrations: none needed\n"  # serve applied them
    verified = kassa("verify", "--data-dir", data_dir)
    assert verified.returncode == 0, verified
    lines = verified.stdout.splitlines()
    assert sum(line.strip().startswith("OK") for line in lines) == len(CHECKS), verified.stdout
    assert "all OK" in lines[-1]
    assert "Traceback" not in verified.stderr + migrated.stderr
    # No option: KASSA_DATA_DIR, relative to where the command runs, as `.kassa` after `make run`.
    relative = kassa("verify", env={"KASSA_DATA_DIR": served.data_dir.name},
                     cwd=served.data_dir.parent)
    assert relative.returncode == 0 and relative.stdout == verified.stdout, relative


def test_seed_funds_the_accounts_once(served: KassaProcess) -> None:
    data_dir = str(served.data_dir)
    key = (served.data_dir / "admin_api_key").read_text().strip()
    # The key: the one serve generated under --data-dir; the URL: --url.
    first = kassa("seed", "--accounts", "50", "--url", served.url, "--data-dir", data_dir)
    assert first.returncode == 0, first
    assert first.stdout.startswith("seeded 50 USD accounts seed_0..seed_49 (50 created, "
                                   "0 already there)"), first.stdout
    again = kassa("seed", "--accounts", "50", "--url", served.url, "--data-dir", data_dir)
    assert again.returncode == 0, again
    assert "(0 created, 50 already there)" in again.stdout, again.stdout
    options = kassa("seed", "--accounts", "3", "--balance", "250", "--prefix", "lt-",
                    "--currency", "EUR", "--url", served.url, "--api-key", key)
    assert options.returncode == 0, options
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for n in range(50):
            account = http.get(f"/v1/accounts/seed_{n}").json()
            assert (account["balance"], account["currency"]) == (1_000_000, "USD"), account
        assert http.get("/v1/accounts/@world:USD").json()["balance"] == -50 * 1_000_000
        assert [http.get(f"/v1/accounts/lt-{n}").json()["balance"] for n in range(3)] == [250] * 3
        assert http.get("/v1/accounts/lt-3").status_code == 404
    dsn = running_postgres_dsn(served.data_dir)
    deposits = asyncio.run(scalar(dsn, "SELECT count(*) FROM journals WHERE type = 'deposit' "
                                       "AND status = 'completed'"))
    assert deposits == 53  # the re-run posted nothing
    asyncio.run(assert_invariants(dsn))
    verified = kassa("verify", "--data-dir", data_dir)
    assert verified.returncode == 0, verified.stdout
    # An error answer of the server: one line, exit 1 (a key it does not know).
    refused = kassa("seed", "--accounts", "1", "--url", served.url, "--api-key", "nope")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
    assert refused.stderr.startswith("kassa: seed: POST /v1/accounts seed_0: 401 "), refused.stderr


@pytest.mark.parametrize("command", ["verify", "migrate"])
def test_no_database_under_a_data_dir_is_one_line_and_exit_2(command: str) -> None:
    result = kassa(command, "--data-dir", "/nonexistent")
    assert result.returncode == 2, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("kassa: no embedded PostgreSQL is running under "
                                    "/nonexistent/pg"), result.stderr
