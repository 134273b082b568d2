"""server/process/settings.py is the one reader of KASSA_* variables: every one is
documented in README.md, invalid values stop startup naming the variable, and gunicorn,
the notification delivery and the gRPC clients take their values and defaults from it."""

from __future__ import annotations

import inspect
import logging
import re
import runpy
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

import native
from server.adapters.grpc.clients import NotificationClient, ReceiptClient
from server.process.cpus import available_cpus
from server.process.settings import (
    SECRET_SETTINGS,
    ConfigError,
    Settings,
    env_name,
    file_env_name,
    load_settings,
)
from server.services.notifications.delivery import NotificationConfig

ROOT = Path(__file__).resolve().parents[2]
SETTING_VARIABLES = {env_name(setting.name) for setting in fields(Settings)}
# KASSA_<NAME>_FILE of each secret setting: the file that holds its value instead.
FILE_VARIABLES = {file_env_name(name) for name in SECRET_SETTINGS}


def readme_configuration() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Configuration\n")
    return text[start:text.index("\n## ", start + 1)]


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`(KASSA_[A-Z0-9_]+)`", readme_configuration()))
    assert SETTING_VARIABLES - documented == set(), "add these to README.md, Configuration"
    assert documented - SETTING_VARIABLES - FILE_VARIABLES == set(), "README.md documents no such setting"


def test_no_other_module_reads_kassa_variables() -> None:
    reader = re.compile(r"(?:environ(?:\.get)?|getenv)\s*[\[(]\s*f?[\"']KASSA_")
    sources = [*ROOT.glob("server/**/*.py"), *ROOT.glob("core/**/*.py"), *ROOT.glob("native/*.py"),
               ROOT / "gunicorn.conf.py"]
    readers = [str(path.relative_to(ROOT)) for path in sources
               if path.name != "settings.py" and reader.search(path.read_text())]
    assert readers == []


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8000, ".kassa")
    assert settings.workers == available_cpus().count  # affinity and cgroup quota
    assert (settings.log_format, settings.execute_attempts_max, settings.notify_timeout_ms) == (
        "text", 5, 5000)


def test_values_are_parsed() -> None:
    settings = load_settings({
        "KASSA_HOST": "0.0.0.0", "KASSA_PORT": "9000", "KASSA_WORKERS": "3",
        "KASSA_DATA_DIR": "/srv/kassa", "KASSA_LOG_FORMAT": "json",
        "KASSA_EXECUTE_ATTEMPTS_MAX": "7", "KASSA_NOTIFY_BACKOFF_MS": "0",
    })
    assert (settings.host, settings.port, settings.workers, settings.data_dir) == (
        "0.0.0.0", 9000, 3, "/srv/kassa")
    assert (settings.log_format, settings.execute_attempts_max, settings.notify_backoff_ms) == (
        "json", 7, 0)


@pytest.mark.parametrize(("variable", "value"), [
    ("KASSA_PORT", "0"), ("KASSA_PORT", "65536"), ("KASSA_PORT", "http"),
    ("KASSA_WORKERS", "0"), ("KASSA_WORKERS", "many"),
    ("KASSA_LOG_FORMAT", "xml"), ("KASSA_LOG_LEVEL", "loud"),
    ("KASSA_EXECUTE_ATTEMPTS_MAX", "0"),
    ("KASSA_NOTIFY_TIMEOUT_MS", "0"), ("KASSA_NOTIFY_TIMEOUT_MS", "120001"),
    ("KASSA_NOTIFY_ATTEMPTS_MAX", "21"), ("KASSA_NOTIFY_BACKOFF_MS", "-1"),
    ("KASSA_SMTP_PORT", "70000"), ("KASSA_SMS_WEBHOOK_URL", "mailto:x@y"),
    ("KASSA_PUSH_WEBHOOK_URL", "ftp://x"),
])
def test_an_invalid_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_notification_config_is_built_from_settings() -> None:
    settings = load_settings({
        "KASSA_SMTP_HOST": "mail", "KASSA_SMTP_PORT": "2525", "KASSA_SMTP_FROM": "k@x",
        "KASSA_PUSH_WEBHOOK_URL": "https://h/push", "KASSA_WEBHOOK_SECRET": "s",
        "KASSA_NOTIFY_ATTEMPTS_MAX": "4", "KASSA_NOTIFY_BACKOFF_MS": "10",
        "KASSA_NOTIFY_TIMEOUT_MS": "750",
    })
    assert NotificationConfig.from_settings(settings) == NotificationConfig(
        smtp_host="mail", smtp_port=2525, smtp_from="k@x", push_webhook_url="https://h/push",
        webhook_secret="s", attempts_max=4, backoff_ms=10, attempt_timeout_ms=750)
    assert NotificationConfig() == NotificationConfig.from_settings(Settings())


def _defaults(cls: type) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_client_defaults_are_the_settings_defaults() -> None:
    s = Settings()
    receipt = _defaults(ReceiptClient)
    assert {k: receipt[k] for k in ("block_size", "batch_size_max", "flush_interval_ms",
                                    "timeout_ms", "pending_max", "retry_max_ms")} == {
        "block_size": s.receipt_block_size, "batch_size_max": s.receipt_batch_size,
        "flush_interval_ms": s.receipt_flush_interval_ms, "timeout_ms": s.receipt_timeout_ms,
        "pending_max": s.receipt_pending_max, "retry_max_ms": s.receipt_retry_max_ms}
    notification = _defaults(NotificationClient)
    assert (notification["batch_size_max"], notification["flush_interval_ms"]) == (
        s.notification_batch_size, s.notification_flush_interval_ms)
    for defaults in (receipt, notification):
        assert (defaults["breaker_failures_max"], defaults["breaker_reset_ms"]) == (
            s.breaker_failures_max, s.breaker_reset_s * 1000)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """gunicorn.conf.py configures logging for the whole process: put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_gunicorn_conf_takes_its_values_from_settings(
    monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    for name, value in {"KASSA_HOST": "0.0.0.0", "KASSA_PORT": "9123", "KASSA_WORKERS": "3",
                        "KASSA_LOG_LEVEL": "warning", "KASSA_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (conf["bind"], conf["workers"], conf["loglevel"]) == ("0.0.0.0:9123", 3, "warning")
    assert conf["logger_class"] == "server.process.gunicorn_app.JsonLogger"


def test_gunicorn_conf_refuses_an_invalid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASSA_WORKERS", "lots")
    with pytest.raises(ConfigError, match="KASSA_WORKERS"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))


@pytest.mark.parametrize("value", ["", "0", "1", " 1 "])
def test_native_applies_no_extensions_as_settings_reads_it(value: str) -> None:
    """native/ cannot import settings (layering) and chooses at its import; its rule for
    KASSA_NO_EXTENSIONS must be the setting's."""
    environ = {"KASSA_NO_EXTENSIONS": value}
    assert native.NO_EXTENSIONS_VARIABLE == env_name("no_extensions")
    assert native.twins_forced(environ) == (load_settings(environ).no_extensions == "1")


def test_an_invalid_no_extensions_stops_startup() -> None:
    with pytest.raises(ConfigError, match="KASSA_NO_EXTENSIONS"):
        load_settings({"KASSA_NO_EXTENSIONS": "yes"})
