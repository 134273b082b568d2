"""Secrets read from files (KASSA_<NAME>_FILE) and the API keys file read again while the
server runs (server/process/settings.py, server/process/key_reload.py); the same through
a real `kassa serve`: tests/test_secrets.py."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from server.process.key_reload import KeyFileWatch, reload_requested
from server.process.settings import (
    SECRET_SETTINGS,
    ConfigError,
    api_keys_from_file,
    file_env_name,
    is_given,
    load_settings,
    parse_api_keys,
)

# A valid value of each secret setting; any other (a token) takes the default.
SAMPLES = {
    "api_keys": "k1:admin,k2:read",
    "database_url": "postgresql://kassa:pa55word@db:5432/kassa",
    "redis_url": "redis://:pa55word@redis:6379/0",
    "sms_webhook_url": "https://sms.example/send?token=pa55word",
    "push_webhook_url": "https://push.example/send?token=pa55word",
}


# What some secret settings need beside them to be valid.
COMPANIONS = {
    "sms_webhook_url": {"KASSA_WEBHOOK_SECRET": "whsec_c2VjcmV0"},
    "push_webhook_url": {"KASSA_WEBHOOK_SECRET": "whsec_c2VjcmV0"},
    "smtp_password": {"KASSA_SMTP_USERNAME": "kassa"},
}


def sample(name: str) -> str:
    return SAMPLES.get(name, "s3cret-token")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_every_secret_setting_is_read_from_its_file(name: str, tmp_path: Path) -> None:
    secret = write(tmp_path / name, sample(name) + "\n")  # as `echo value > file` writes it
    settings = load_settings({file_env_name(name): str(secret), **COMPANIONS.get(name, {})})
    assert getattr(settings, name) == sample(name)
    assert is_given(name, {file_env_name(name): str(secret)})


def test_the_value_and_its_file_both_set_refuse_naming_both(tmp_path: Path) -> None:
    secret = write(tmp_path / "url", SAMPLES["database_url"])
    env = {"KASSA_DATABASE_URL": SAMPLES["database_url"], "KASSA_DATABASE_URL_FILE": str(secret)}
    with pytest.raises(ConfigError, match="KASSA_DATABASE_URL and KASSA_DATABASE_URL_FILE"):
        load_settings(env)


@pytest.mark.parametrize("case", ["missing", "directory", "not utf-8", "blank"])
def test_an_unusable_file_names_the_file_never_its_contents(case: str, tmp_path: Path) -> None:
    path = tmp_path / "token"
    if case == "directory":
        path.mkdir()
    elif case == "not utf-8":
        path.write_bytes(b"pa55word\xff\n")
    elif case == "blank":
        path.write_text("\n")
    with pytest.raises(ConfigError) as raised:
        load_settings({"KASSA_GRPC_TOKEN_FILE": str(path)})
    message = str(raised.value)
    assert message.startswith(f"KASSA_GRPC_TOKEN_FILE={str(path)!r}: ")
    assert "pa55word" not in message


def test_only_secret_settings_have_files(tmp_path: Path) -> None:
    """KASSA_PORT_FILE is no setting: ignored, like any unknown variable."""
    assert load_settings({"KASSA_PORT_FILE": str(write(tmp_path / "p", "9000"))}).port == 8000


def test_a_value_from_a_file_is_checked_like_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "url", "kassa:pa55word@db.example:5432")
    with pytest.raises(ConfigError, match=r"KASSA_DATABASE_URL \(value not shown: a secret\) "
                                          "is not a URL") as raised:
        load_settings({"KASSA_DATABASE_URL_FILE": str(path)})
    assert "pa55word" not in str(raised.value)


def test_a_bad_api_key_entry_is_named_by_position_not_text(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", "good-key:admin\nsecret-key-typo:admni\n")
    with pytest.raises(ConfigError, match="entry 2 is not key:scope") as raised:
        load_settings({"KASSA_API_KEYS_FILE": str(path)})
    assert "secret-key-typo" not in str(raised.value)
    with pytest.raises(ConfigError, match="KASSA_API_KEYS: entry 1") as raised:
        parse_api_keys("secret-key-typo")
    assert "secret-key-typo" not in str(raised.value)


def test_an_api_keys_file_takes_one_entry_per_line_or_commas(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", "a:admin\nb:write,c:read\n\n")
    settings = load_settings({"KASSA_API_KEYS_FILE": str(path)})
    assert parse_api_keys(settings.api_keys or "") == {"a": "admin", "b": "write", "c": "read"}
    assert settings.api_keys_file == str(path)


def test_an_invalid_keys_file_keeps_the_last_valid_keys(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "keys", "new-key:admin\n")
    with pytest.raises(ConfigError):  # never valid in this process: refused (first start)
        api_keys_from_file(str(write(tmp_path / "other", "no scope\n")))
    assert api_keys_from_file(str(path)) == "new-key:admin"
    write(path, "half-written-k")
    with caplog.at_level(logging.ERROR, "kassa.settings"):
        assert api_keys_from_file(str(path)) == "new-key:admin"
    assert "keeping the API keys last read from it" in caplog.text
    path.unlink()
    assert load_settings({"KASSA_API_KEYS_FILE": str(path)}).api_keys == "new-key:admin"


def replace_file(path: Path, text: str) -> None:
    """As an operator should: write beside it, rename over it (a new inode)."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class Applied:
    def __init__(self) -> None:
        self.keys: list[dict[str, str]] = []

    def __call__(self, keys: dict[str, str]) -> None:
        self.keys.append(keys)


def test_the_watch_applies_a_changed_file_once(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", "a:admin\n")
    applied = Applied()
    watch = KeyFileWatch(str(path), applied, {"a": "admin"})
    assert watch.check() is False  # unchanged: not even read
    replace_file(path, "b:read\n")
    assert watch.check() is True
    assert watch.check() is False
    with path.open("a") as file:  # an edit in place (the size changes)
        file.write("c:write\n")
    assert watch.check() is True
    assert applied.keys == [{"b": "read"}, {"b": "read", "c": "write"}]


def test_the_watch_keeps_the_keys_while_the_file_is_bad(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "keys", "a:admin\n")
    api_keys_from_file(str(path))
    applied = Applied()
    watch = KeyFileWatch(str(path), applied, {"a": "admin"})
    with caplog.at_level(logging.ERROR):
        replace_file(path, "a:root\n")
        assert watch.check() is False
        path.unlink()
        assert watch.check() is False
    assert applied.keys == []
    assert "entry 1 is not key:scope" in caplog.text and "cannot read the file" in caplog.text
    replace_file(path, "b:admin\n")
    assert watch.check() is True
    assert applied.keys == [{"b": "admin"}]


def test_force_reads_a_file_whose_identity_did_not_change(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", "a:admin\n")
    applied = Applied()
    watch = KeyFileWatch(str(path), applied, {"a": "admin"})
    stat = path.stat()
    path.write_text("b:admin\n")  # same size; the same times put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert watch.check() is False
    assert watch.check(force=True) is True
    assert applied.keys == [{"b": "admin"}]


async def test_a_reload_request_wakes_the_running_watch(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", "a:admin\n")
    changed = asyncio.Event()
    applied = Applied()

    def apply(keys: dict[str, str]) -> None:
        applied(keys)
        changed.set()

    watch = KeyFileWatch(str(path), apply, {"a": "admin"})
    stat = path.stat()
    path.write_text("b:admin\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # no poll would see it
    task = asyncio.create_task(watch.run(interval_s=3600))
    try:
        await asyncio.sleep(0)  # the watch registers itself
        reload_requested()  # what SIGHUP does in a worker
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        task.cancel()
    assert applied.keys == [{"b": "admin"}]



def test_the_operations_guide_lists_every_secret_setting() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = text[text.index("## Secrets\n"):text.index("\n## ", text.index("## Secrets\n") + 1)]
    missing = [file_env_name(name) for name in SECRET_SETTINGS
               if f"`{file_env_name(name)}`" not in section]
    assert missing == [], "add them to docs/operations.md, Secrets"
