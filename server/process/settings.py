"""Every setting and limit in one place, read from KASSA_* environment variables.

An invalid value raises ConfigError naming the variable; the CLI prints that one
line and exits. Units are last in names (`_ms`, `_s`, `_max`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from server.process.cpus import available_cpus

log = logging.getLogger("kassa.settings")


class ConfigError(Exception):
    pass


def _usable_cpus() -> int:
    """The CPUs this process may use (affinity, cgroup quota); KASSA_WORKERS overrides."""
    return available_cpus().count


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "kassa.transactions"
    receipt_service_addr: str | None = None
    notification_service_addr: str | None = None
    # gRPC services: a token required from every caller (then sent by the clients), and TLS,
    # both required to listen beyond loopback (server/adapters/grpc/security.py).
    grpc_token: str | None = None
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_ca: str | None = None
    api_keys: str | None = None
    # API keys read from this file (docs/operations.md, Secrets), instead of KASSA_API_KEYS;
    # each worker reads it again when it changes (polled this often) and on SIGHUP.
    api_keys_file: str | None = None
    api_keys_poll_interval_ms: float = 1000.0
    log_level: str = "info"
    log_format: str = "text"  # "json": one JSON object per log line (server/process/logs.py)
    rate_limit: str | None = None
    executor: str = "batch"
    node_id: int = -1  # -1: the lowest free id leased from PostgreSQL (codes made in-process)
    # HTTP server (`kassa serve` option defaults, and gunicorn.conf.py under plain gunicorn)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = field(default_factory=_usable_cpus)
    data_dir: str = ".kassa"  # embedded PostgreSQL, generated admin key, child logs
    body_size_max: int = 1_048_576
    # HTTP limits, enforced by each worker's protocol before any work (server/http/protocol.py)
    http_header_bytes_max: int = 65_536  # header names and values of one request; 431 beyond
    http_headers_max: int = 100  # header fields of one request; 431 beyond
    http_request_line_max: int = 8_192  # the request target (path and query); 414 beyond
    http_head_timeout_s: float = 10.0  # a whole request head, from accept or previous answer
    http_body_timeout_s: float = 30.0  # longest pause between chunks of a request body
    http_connections_max: int = 4_096  # open connections per worker; 503 beyond
    # Durable accept (group commit of pending journals)
    accept_batch_max: int = 256
    accept_flush_interval_ms: float = 1.0
    accept_in_flight_max: int = 2
    # "apply": a group of new journals is decided and posted in its own accept commit
    # while the writers are idle; "queue": recorded pending, applied by the writers.
    accept_mode: str = "apply"
    # Processor pool and batch executor
    processor_queue_size: int = 10_000
    processor_workers: int = 50
    executor_writers: int = 2
    executor_batch_max: int = 500
    transaction_timeout_s: float = 30.0
    execute_attempts_max: int = 5
    effect_queue_max: int = 10_000  # batches awaiting post-commit effects; full = dropped
    # After a lost COMMIT acknowledgement: how long to find out whether the group landed
    # (then 503 `outcome_unknown`).
    commit_check_timeout_ms: float = 2000.0
    # Recovery
    lease_s: float = 30.0
    sweep_interval_s: float = 2.0
    hold_expiry_interval_s: float = 1.0  # how often expired holds are looked for
    # Status tracker
    status_update_interval_ms: float = 1000.0
    status_ttl_s: int = 86_400
    status_memory_ttl_s: int = 600
    status_memory_max: int = 100_000  # final statuses kept in memory per process
    idempotency_ttl_s: int = 86_400
    # Receipt codes: blocks reserved from the receipt service, a new one when half is used
    receipt_block_size: int = 8192  # codes per block, 1..65536
    # Receipt registration after the outcome: batches of up to this many (1..10,000), one
    # call in flight; at most receipt_pending_max wait (then new ones are dropped, counted).
    receipt_batch_size: int = 2000
    receipt_flush_interval_ms: float = 50.0
    receipt_pending_max: int = 100_000
    receipt_timeout_ms: float = 2000.0  # per call, and the longest a request waits for codes
    receipt_retry_max_ms: float = 2000.0  # backoff cap while the receipt service is down
    # Notification batcher
    notification_batch_size: int = 100
    notification_flush_interval_ms: float = 50.0
    breaker_failures_max: int = 5
    breaker_reset_s: float = 5.0
    # The breaker around Redis (failures: KASSA_BREAKER_FAILURES_MAX): open, keyed requests
    # use the database's idempotency check at once; a trial call this often.
    redis_breaker_reset_ms: float = 1000.0
    # `kassa serve` restarts a child it started that died: after this wait, doubling per
    # quick death up to the max, back to the min once a child ran for 60 s (supervisor.py).
    restart_backoff_min_ms: float = 500.0
    restart_backoff_max_s: float = 30.0
    # Account cache (pre-validation), per process. This process's commits update cached
    # balances in place and account admin invalidates every process through Redis, so the
    # TTL only bounds how long other processes' commits go unseen (a refusal on funds reads
    # again) and facts whose invalidation was lost. About 500 bytes per entry.
    account_cache_size: int = 50_000
    account_cache_ttl_ms: float = 60_000.0
    # Database pool per process
    db_pool_min: int = 2
    db_pool_max: int = 10
    # Connections one instance may open to PostgreSQL in all (workers x pool, plus the
    # relay and the gRPC services); per-worker pools shrink to fit. PostgreSQL's default
    # max_connections is 100, a few of them reserved.
    db_connections_max: int = 80
    # The embedded stack: "auto" starts it for what is not configured (development),
    # "1" asks for it (loud warning: the data stays where the process runs), "0" refuses
    # to start without KASSA_DATABASE_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS (the image).
    embedded: str = "auto"
    # The embedded Redis's `maxmemory` in MB (policy noeviction: full, it refuses writes and
    # Kassa falls back to PostgreSQL; sizing in docs/operations.md, Redis).
    embedded_redis_maxmemory_mb: int = 1024
    # "1": the pure-Python twins of the Cython hot path (native/). native/__init__.py applies
    # it at its first import (native.twins_forced), before settings exist; defined here so
    # that it is validated and documented like every setting.
    no_extensions: str = "0"
    # The relay (events to Kafka, receipts to the receipt service): one publisher per
    # database (advisory lock), the others stand by
    relay_batch_max: int = 500
    relay_poll_interval_ms: float = 500.0  # publisher's fallback when no wake-up comes
    relay_linger_ms: float = 20.0  # under load, publish cycles start at most this often
    relay_standby_interval_ms: float = 1000.0  # standbys try the lock this often (takeover)
    relay_step_down_after_s: float = 30.0  # publisher failing this long lets another try
    # Event webhooks (/v1/webhooks), sent by the relay's leader (server/adapters/webhooks/):
    # a failed attempt waits a full-jitter draw from 0 to base * 2**(attempts - 1), capped,
    # and a delivery is dead-lettered at its first failure past the window.
    webhook_retry_base_ms: float = 5000.0
    webhook_retry_cap_s: float = 36_000.0  # 10 h
    webhook_retry_window_s: float = 86_400.0  # 24 h of retries at least
    webhook_timeout_ms: float = 10_000.0  # per attempt
    webhook_in_flight_max: int = 64  # first attempts at once over every endpoint, and as many retries
    webhook_poll_interval_ms: float = 500.0  # how often due retries are looked for
    webhook_retention_s: float = 2_592_000.0  # 30 days: ended deliveries are deleted after
    webhook_endpoints_max: int = 100
    # Migrations (server/adapters/postgres/migrate.py): every statement waits at most this
    # long for a lock (so a write queued behind it waits no longer), and is retried with
    # backoff when it times out, up to the attempts; "0": `kassa serve` does not migrate and
    # refuses to start on a database that lacks one of its migrations.
    migrate_lock_timeout_ms: float = 3000.0
    migrate_lock_attempts_max: int = 30
    migrate_on_start: str = "1"
    # /metrics (docs/operations.md, Metrics): on a port of its own (served by the gunicorn
    # master, no longer on the API port), and/or only with `Authorization: Bearer <token>`.
    metrics_port: int | None = None
    metrics_token: str | None = None  # a secret: also KASSA_METRICS_TOKEN_FILE
    # Shutdown
    shutdown_timeout_s: float = 30.0
    # Notification delivery, in the notification service (server/services/notifications/
    # delivery.py): a channel with nothing configured is delivered to the log.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "kassa@localhost"
    # Both or neither: SMTP AUTH with these (after STARTTLS when the server offers it).
    smtp_username: str | None = None
    smtp_password: str | None = None
    sms_webhook_url: str | None = None
    push_webhook_url: str | None = None
    # Standard Webhooks secret of the SMS and push webhooks: `whsec_` + base64 (the key is
    # the decoded part), or any other text (the key is its UTF-8 bytes). Required with a URL.
    webhook_secret: str = ""
    notify_attempts_max: int = 3
    notify_backoff_ms: int = 50  # doubles after each failed attempt
    notify_timeout_ms: int = 5000  # per delivery attempt

    @property
    def rate_limit_per_s(self) -> tuple[int, float] | None:
        """(burst, refill per second) from `<requests>/<seconds>`."""
        if not self.rate_limit:
            return None
        requests, seconds = self.rate_limit.split("/")
        return int(requests), int(requests) / float(seconds)


def env_name(field_name: str) -> str:
    """The environment variable of a Settings field."""
    return f"KASSA_{field_name.upper()}"


def is_given(field_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets this field (else its default applies)."""
    env = os.environ if environ is None else environ
    return bool(env.get(env_name(field_name), "").strip()
                or (field_name in SECRET_SETTINGS and env.get(file_env_name(field_name))))


# The settings that hold a secret (keys, tokens, a password in a URL): each may instead be
# read from a file, as Docker and Kubernetes mount secrets, named by KASSA_<NAME>_FILE
# (docs/operations.md, Secrets). A new secret setting is one more name here.
# KASSA_GRPC_TLS_KEY is not one: it is already the path of the file that holds the key.
SECRET_SETTINGS = ("api_keys", "database_url", "redis_url", "grpc_token", "webhook_secret",
                   "sms_webhook_url", "push_webhook_url", "metrics_token", "smtp_password")


def _shown(name: str, value: str) -> str:
    """A setting and its value for an error message; a secret's value is not shown."""
    if name in SECRET_SETTINGS:
        return f"{env_name(name)} (value not shown: a secret)"
    return f"{env_name(name)}={value!r}"


def file_env_name(field_name: str) -> str:
    """The variable naming the file that holds a secret setting."""
    return f"{env_name(field_name)}_FILE"


def _raw_value(env: Mapping[str, str], name: str) -> str | None:
    """A setting's text: its variable's, or for a secret its file's (not both)."""
    raw = env.get(env_name(name)) or None
    path = env.get(file_env_name(name)) if name in SECRET_SETTINGS else None
    if not path:
        return raw
    if raw is not None:
        raise ConfigError(f"{env_name(name)} and {file_env_name(name)} are both set: "
                          "give the value or the file, not both")
    if name == "api_keys":
        return api_keys_from_file(path)
    return read_secret_file(file_env_name(name), path)


def read_secret_file(var: str, path: str) -> str:
    """The file's text without its trailing line breaks (`echo` and editors add one). A file
    that cannot be read or is blank is a ConfigError naming the variable and the file, never
    what it holds."""
    try:
        text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{var}={path!r}: cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{var}={path!r}: the file is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(f"{var}={path!r}: the file is empty")
    return text


# The last valid text of each KASSA_API_KEYS_FILE this process read. gunicorn forks its
# workers from the master, so they inherit it: a worker started while the file is invalid
# (being rewritten, or a bad edit) serves these keys instead of failing, which would stop
# the whole server and lock every client out.
_valid_key_files: dict[str, str] = {}


def api_keys_from_file(path: str) -> str:
    """KASSA_API_KEYS_FILE's text once checked; while it is unreadable or invalid, the text
    last valid in this process (the error logged), else a ConfigError (first start)."""
    var = file_env_name("api_keys")
    try:
        text = read_secret_file(var, path)
        parse_api_keys(text, source=f"{var}={path!r}")
    except ConfigError as exc:
        if path not in _valid_key_files:
            raise
        log.error("%s; keeping the API keys last read from it", exc)
        return _valid_key_files[path]
    _valid_key_files[path] = text
    return text


_CHOICES = {
    "executor": ("batch", "single"),
    "accept_mode": ("apply", "queue"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
    "embedded": ("auto", "1", "0"),
    "no_extensions": ("0", "1"),
    "migrate_on_start": ("0", "1"),
}
# Numbers bounded otherwise than "positive": (lowest, highest), both allowed.
_RANGES: dict[str, tuple[int, int]] = {
    "port": (1, 65_535),
    "metrics_port": (1, 65_535),
    "smtp_port": (1, 65_535),
    "notify_attempts_max": (1, 20),
    "notify_backoff_ms": (0, 60_000),  # 0: retry at once
    "notify_timeout_ms": (1, 120_000),
}
_POSITIVE_EXCEPT = {"node_id", *_RANGES}
_HTTP_URLS = ("sms_webhook_url", "push_webhook_url")


def _convert(name: str, kind: type, raw: str) -> object:
    var = env_name(name)
    try:
        value: object = kind(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    if isinstance(value, int | float) and name not in _POSITIVE_EXCEPT and value <= 0:
        raise ConfigError(f"{var}={raw!r} must be positive")
    if name in _RANGES and isinstance(value, int | float):
        low, high = _RANGES[name]
        if not low <= value <= high:
            raise ConfigError(f"{var}={raw!r} must be between {low} and {high}")
    return value


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for setting in fields(Settings):
        raw = _raw_value(env, setting.name)
        if raw is None or raw == "":
            continue
        kind = {"int": int, "float": float}.get(str(setting.type).split(" ")[0], str)
        values[setting.name] = _convert(setting.name, kind, raw.strip())
    settings = Settings(**values)  # type: ignore[arg-type]
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    for name, allowed in _CHOICES.items():
        if getattr(s, name) not in allowed:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)!r}: use one of {allowed}")
    if s.rate_limit is not None and not re.fullmatch(r"[1-9]\d*/[1-9]\d*", s.rate_limit):
        raise ConfigError(f"KASSA_RATE_LIMIT={s.rate_limit!r}: use <requests>/<seconds>, e.g. 1000/1")
    if s.api_keys is not None:
        parse_api_keys(s.api_keys)
    for name in ("database_url", "redis_url"):
        url = getattr(s, name)
        if url is not None and "://" not in url:
            raise ConfigError(f"{_shown(name, url)} is not a URL")
    for name in _HTTP_URLS:
        url = getattr(s, name)
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{_shown(name, url)} is not an http:// or https:// URL")
    if (s.sms_webhook_url or s.push_webhook_url) and not s.webhook_secret.strip():
        raise ConfigError("KASSA_WEBHOOK_SECRET is empty: SMS and push webhooks are signed with "
                          "it (set it, or unset KASSA_SMS_WEBHOOK_URL and KASSA_PUSH_WEBHOOK_URL)")
    if (s.smtp_username is None) != (s.smtp_password is None):
        raise ConfigError("KASSA_SMTP_USERNAME and KASSA_SMTP_PASSWORD go together: set both "
                          "(SMTP AUTH) or neither")
    if s.webhook_retry_base_ms / 1000 > s.webhook_retry_cap_s:
        raise ConfigError("KASSA_WEBHOOK_RETRY_BASE_MS must not exceed KASSA_WEBHOOK_RETRY_CAP_S")
    if s.metrics_port == s.port:
        raise ConfigError(f"KASSA_METRICS_PORT={s.metrics_port} is the API port (KASSA_PORT)")
    if s.accept_batch_max > s.processor_queue_size:
        raise ConfigError("KASSA_ACCEPT_BATCH_MAX must not exceed KASSA_PROCESSOR_QUEUE_SIZE")
    _check_receipts(s)


RECEIPT_BLOCK_SIZE_MAX = 65_536  # native.BLOCK_SPAN: offsets per block number
RECEIPT_BATCH_SIZE_MAX = 10_000  # items per RegisterReceipts call the receipt service takes


def _check_receipts(s: Settings) -> None:
    if s.receipt_block_size > RECEIPT_BLOCK_SIZE_MAX:
        raise ConfigError(f"KASSA_RECEIPT_BLOCK_SIZE={s.receipt_block_size}: at most "
                          f"{RECEIPT_BLOCK_SIZE_MAX}")
    if s.receipt_batch_size > RECEIPT_BATCH_SIZE_MAX:
        raise ConfigError(f"KASSA_RECEIPT_BATCH_SIZE={s.receipt_batch_size}: at most "
                          f"{RECEIPT_BATCH_SIZE_MAX}")
    if s.receipt_pending_max < s.receipt_batch_size:
        raise ConfigError("KASSA_RECEIPT_PENDING_MAX must not be below KASSA_RECEIPT_BATCH_SIZE")


SCOPES = ("admin", "write", "read")


def parse_api_keys(raw: str, source: str = "KASSA_API_KEYS") -> dict[str, str]:
    """`key:scope,key:scope` to {key: scope}; a file may put one per line. A bad entry is
    named by its position, never by its text (a key must not reach the logs)."""
    keys: dict[str, str] = {}
    items = filter(None, (part.strip() for part in raw.replace("\n", ",").split(",")))
    for number, item in enumerate(items, 1):
        key, sep, scope = item.rpartition(":")
        if not sep or not key or scope not in SCOPES:
            raise ConfigError(f"{source}: entry {number} is not key:scope with scope in {SCOPES}")
        keys[key] = scope
    if not keys:
        raise ConfigError(f"{source} is empty")
    return keys

