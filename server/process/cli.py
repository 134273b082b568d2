"""The `kassa` command line (docs/api.md, Command line)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.adapters.grpc.security import GrpcSecurity
    from server.adapters.postgres.migrate import LockPolicy
    from server.process.sizing import Plan
from server.process.settings import ConfigError, Settings, env_name, load_settings
from server.version import package_version

log = logging.getLogger("kassa.cli")


def main(argv: list[str] | None = None) -> None:
    try:
        settings, config_error = load_settings(), None
        from server.tracing.setup import exporter_names

        exporter_names(os.environ)  # OTEL_*: refused here in one line, not in each worker
    except ConfigError as exc:
        # --help and --version still work; any command stops below with this one line.
        settings, config_error = Settings(), exc
    args = build_parser(settings).parse_args(argv)
    if config_error is not None:
        print(f"kassa: configuration error: {config_error}", file=sys.stderr)
        sys.exit(2)
    from server.process.logs import configure

    configure(settings.log_level, settings.log_format)
    COMMANDS[args.command](args, settings)


_HELP = argparse.ArgumentDefaultsHelpFormatter  # appends "(default: ...)" to every option


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line; option defaults come from the KASSA_* settings."""
    parser = argparse.ArgumentParser(
        prog="kassa", formatter_class=_HELP,
        description="Kassa transaction server. Configured by KASSA_* environment variables "
                    "(README.md, Configuration); options override the HTTP server's.")
    parser.add_argument("--version", action="version", version=f"kassa {package_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_serve(sub, settings)
    migrate = sub.add_parser(
        "migrate", formatter_class=_HELP, help="apply database migrations and exit",
        description="Applies the pending migrations to KASSA_DATABASE_URL, else to the "
                    "embedded PostgreSQL that `kassa serve` runs under --data-dir, and exits. "
                    "Every statement waits at most KASSA_MIGRATE_LOCK_TIMEOUT_MS for a lock "
                    "and is retried after a backoff. An unreachable database is one line on "
                    "stderr and exit code 2; an applied migration changed since, or a lock "
                    "never granted, one line and exit code 1.")
    _add_data_dir(migrate, settings)
    migrate.add_argument("--status", action="store_true",
                         help="list the applied migrations (with the state of their checksum) "
                              "and the pending ones, and change nothing")
    for name, port in (("receipt-service", 50051), ("notification-service", 50052)):
        p = sub.add_parser(name, formatter_class=_HELP, help=f"run the {name} gRPC server on its own",
                           description=f"Runs the {name} gRPC server in the foreground "
                                       "(KASSA_DATABASE_URL required).")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; beyond loopback, TLS and a token are required")
        p.add_argument("--port", type=int, default=port, help="port to listen on")
    sub.add_parser("relay", formatter_class=_HELP,
                   help="run the outbox relay (database to Kafka) on its own",
                   description="Publishes the events of KASSA_DATABASE_URL's finished "
                               "journals to KASSA_KAFKA_BOOTSTRAP_SERVERS, and registers "
                               "their receipts with KASSA_RECEIPT_SERVICE_ADDR when set, "
                               "until stopped. The event webhooks are sent by "
                               "`kassa webhook-sender`.")
    sub.add_parser("webhook-sender", formatter_class=_HELP,
                   help="send the event webhooks on their own (kassa serve starts one)",
                   description="Sends the events of KASSA_DATABASE_URL's finished journals "
                               "to the registered webhook endpoints and retries the due "
                               "deliveries, until stopped; of every such process on the "
                               "database, the one holding its lock sends. It serves no "
                               "requests: sending costs the serving workers nothing.")
    _add_verify(sub, settings)
    from server.process.seed import add_parser as add_seed

    add_seed(sub, settings, _HELP)
    return parser


def _add_data_dir(p: argparse.ArgumentParser, settings: Settings) -> None:
    p.add_argument("--data-dir", default=settings.data_dir,
                   help="without KASSA_DATABASE_URL, use the embedded PostgreSQL that `kassa "
                        "serve --data-dir` runs there (KASSA_DATA_DIR); none running is exit 2")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               settings: Settings) -> None:
    p = sub.add_parser(
        "serve", formatter_class=_HELP, help="run the HTTP server under gunicorn",
        description="Runs the HTTP server under gunicorn after applying migrations (with "
                    "KASSA_MIGRATE_ON_START=0: after checking that none is missing); starts "
                    "embedded PostgreSQL, Redis, Kafka and the gRPC services for whatever "
                    "is not configured.")
    p.add_argument("--host", default=settings.host, help="address to listen on (KASSA_HOST)")
    p.add_argument("--port", type=int, default=settings.port,
                   help="port to listen on (KASSA_PORT)")
    p.add_argument("--workers", type=_positive_int, default=argparse.SUPPRESS,
                   help="gunicorn worker processes (default: KASSA_WORKERS, else the CPUs this "
                        "process may use, from its affinity and cgroup CPU quota, lowered to "
                        f"fit KASSA_DB_CONNECTIONS_MAX; here {settings.workers})")
    p.add_argument("--data-dir", default=settings.data_dir,
                   help="where the embedded stack, the generated admin key and the child logs "
                        "live (KASSA_DATA_DIR)")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: at least 1")
    return value


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                settings: Settings) -> None:
    p = sub.add_parser(
        "verify", formatter_class=_HELP,
        help="check the ledger invariants on KASSA_DATABASE_URL (read-only)",
        description="Checks the ledger invariants (docs/design.md) on a live database "
                    "(KASSA_DATABASE_URL, else the embedded one under --data-dir) in one "
                    "read-only snapshot, prints one line per check (OK or the number of "
                    "violations, with a few examples) and exits 1 on any violation, 2 when "
                    "the database cannot be reached.")
    _add_data_dir(p, settings)
    p.add_argument(
        "--grace-s", type=float, default=60.0,
        help="journals still unfinished this long after their lease expired, and receipts "
             "not registered this long after their journal finished, count as violations")
    p.add_argument(
        "--no-receipts", action="store_true",
        help="skip the receipt-registration check (servers run without a receipt service)")


# What migrate and verify wait for a connection: an unreachable database is a quick line.
CLI_CONNECT_TIMEOUT_S = 10.0


def database_dsn(args: argparse.Namespace, settings: Settings) -> str:
    """KASSA_DATABASE_URL, else the embedded PostgreSQL `kassa serve` runs under --data-dir
    (never one started here); none running: one line on stderr and exit 2."""
    if settings.database_url:
        return settings.database_url
    from server.process.embedded import EmbeddedUnavailable, running_postgres_dsn

    try:
        return running_postgres_dsn(args.data_dir)
    except EmbeddedUnavailable as exc:
        print(f"kassa: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from server.adapters.postgres.migrate import (
        DatabaseUnreachable,
        MigrationRefused,
        apply_migrations,
        migration_status,
    )

    dsn = database_dsn(args, settings)
    try:
        if args.status:
            states = asyncio.run(migration_status(dsn, connect_timeout_s=CLI_CONNECT_TIMEOUT_S))
            for state in states:
                print(f"{state.version:<40} {state.state:<10} {state.applied_at}".rstrip())
            return
        applied = asyncio.run(apply_migrations(dsn, connect_timeout_s=CLI_CONNECT_TIMEOUT_S,
                                               policy=lock_policy(settings)))
    except DatabaseUnreachable as exc:
        print(f"kassa: {exc}", file=sys.stderr)
        sys.exit(2)
    except MigrationRefused as exc:
        print(f"kassa: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"applied {len(applied)} migrations: {', '.join(applied) or 'none needed'}")


def lock_policy(settings: Settings) -> LockPolicy:
    from server.adapters.postgres.migrate import LockPolicy

    return LockPolicy(timeout_ms=settings.migrate_lock_timeout_ms,
                      attempts_max=settings.migrate_lock_attempts_max)


def migrate_on_start(dsn: str, settings: Settings) -> None:
    """`kassa serve`: migrate (KASSA_MIGRATE_ON_START=1, the default), or check that the
    database has every migration of this release; either refusal is one line and exit 1."""
    from server.adapters.postgres.migrate import (
        MigrationRefused,
        apply_migrations,
        check_schema,
        migration_status,
    )

    try:
        if settings.migrate_on_start == "1":
            asyncio.run(apply_migrations(dsn, policy=lock_policy(settings)))
        else:
            check_schema(asyncio.run(migration_status(dsn)))
    except MigrationRefused as exc:
        print(f"kassa: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from server.adapters.postgres.migrate import DatabaseUnreachable
    from server.process.embedded import EmbeddedStack
    from server.process.gunicorn_app import KassaApplication, gunicorn_options

    # Until gunicorn installs its own handlers, SIGTERM must still stop the children.
    signal.signal(signal.SIGTERM, _raise_exit)
    sizing = serve_plan(args, settings)  # refuses before anything is started
    log.info("%s", sizing.describe_workers())
    log.info("%s", sizing.pool.describe())
    # The workers read their pool size from the environment they inherit.
    os.environ[env_name("db_pool_max")] = str(sizing.pool.pool)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = EmbeddedStack(data_dir, reserved_ports={args.port})
    try:
        env = start_dependencies(stack, settings, data_dir)
        os.environ.update(env)
        try:
            migrate_on_start(settings.database_url or env["KASSA_DATABASE_URL"], settings)
        except DatabaseUnreachable as exc:
            print(f"kassa: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        prepare_metrics_dir(data_dir)
        # After the metrics directory: its deliveries are counted in /metrics.
        stack.spawn_python("webhook-sender", ["webhook-sender"], None, dict(os.environ))
        # A child that dies from now on is started again, on the same address (the
        # workers reconnect); stack.stop() ends the supervision first.
        stack.supervise()
        options = gunicorn_options(args.host, args.port, sizing.workers, settings.log_level,
                                   settings.log_format)
        log.info("kassa serving on http://%s:%d with %d workers", args.host, args.port,
                 sizing.workers)
        KassaApplication(options, settings.api_keys_file).run()
    finally:
        stack.stop()


WEBHOOK_SENDER_CONNECTIONS = 1


def serve_plan(args: argparse.Namespace, settings: Settings) -> Plan:
    """Workers and pool per worker within KASSA_DB_CONNECTIONS_MAX, counting the relay's
    connection per worker, the webhook sender's and the pools of the services this instance
    will start; a budget
    that cannot fit an explicit worker count stops here with one line."""
    from server.process.sizing import plan
    from server.services.notifications.service import POOL_SIZE_MAX as NOTIFICATION_POOL
    from server.services.receipts.service import POOL_SIZE_MAX as RECEIPT_POOL

    # The webhook sender (always started) holds one dedicated connection, like a relay.
    services = ((0 if settings.receipt_service_addr else RECEIPT_POOL)
                + (0 if settings.notification_service_addr else NOTIFICATION_POOL)
                + WEBHOOK_SENDER_CONNECTIONS)
    try:
        # Every worker runs an outbox relay (Kafka is embedded when not configured), and
        # each relay holds one dedicated connection (server/adapters/kafka/relay.py).
        return plan(settings, os.environ, cli_workers=getattr(args, "workers", None), per_worker_extra=1,
                    fixed_others=services)
    except ConfigError as exc:
        print(f"kassa: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


def start_dependencies(stack: object, settings: Settings, data_dir: Path) -> dict[str, str]:
    """Start what is not configured; returns the KASSA_* variables the workers need."""
    from server.process.embedded import EmbeddedStack

    assert isinstance(stack, EmbeddedStack)
    env: dict[str, str] = {}
    if not settings.database_url:
        env["KASSA_DATABASE_URL"] = stack.start_postgres()
    if not settings.redis_url:
        env["KASSA_REDIS_URL"] = stack.start_redis()
    if not settings.api_keys:
        env["KASSA_API_KEYS"] = f"{admin_key(data_dir)}:admin"
    if not settings.kafka_bootstrap_servers:
        env["KASSA_KAFKA_BOOTSTRAP_SERVERS"] = stack.start_kafka()
    database_url = settings.database_url or env["KASSA_DATABASE_URL"]
    child_env = {**os.environ, **env}
    if not settings.receipt_service_addr:
        port = stack.free_port()
        stack.spawn_python("receipt-service", ["receipt-service", "--port", str(port)], port, child_env)
        env["KASSA_RECEIPT_SERVICE_ADDR"] = f"127.0.0.1:{port}"
    if not settings.notification_service_addr:
        port = stack.free_port()
        stack.spawn_python("notification-service", ["notification-service", "--port", str(port)],
                           port, child_env)
        env["KASSA_NOTIFICATION_SERVICE_ADDR"] = f"127.0.0.1:{port}"
    assert database_url
    return env


def admin_key(data_dir: Path) -> str:
    """The generated admin key: made and printed once, then read from the data dir."""
    path = data_dir / "admin_api_key"
    if path.exists():
        return path.read_text().strip()
    key = f"kassa_{secrets.token_urlsafe(24)}"
    # Created owner-only: never readable by others, not even between a write and a chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    print(f"Generated admin API key (stored in {path}; shown once): {key}", flush=True)
    return key


METRICS_PREFIX = "kassa-metrics-"


def prepare_metrics_dir(data_dir: Path) -> None:
    """prometheus_client multiprocess mode: one fresh directory per server run, in memory
    ($XDG_RUNTIME_DIR or /dev/shm), never on the data disk, and removed when this process
    exits.

    Why not on the data disk: every worker memory-maps its own metric files. A file is
    created sparse (ftruncate to 64 KB, which succeeds on a full file system) and its pages
    get their disk blocks only when first written through the mapping; on a full file
    system that write cannot be given a block, and the kernel answers it with SIGBUS. So
    when PostgreSQL filled the data disk, each new worker died by SIGBUS at its first
    metric, and so did any worker writing its first value on a new page."""
    import atexit
    import tempfile

    shutil.rmtree(data_dir / "metrics", ignore_errors=True)  # where older versions kept it
    base = metrics_base()
    remove_stale_metrics_dirs(base)
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-", dir=base))
    # Workers are forked from this process and run its atexit handlers too: only the
    # process that made the directory removes it.
    atexit.register(_remove_metrics_dir, metrics_dir, os.getpid())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def metrics_base() -> Path:
    """The first memory-backed directory this user may write: /dev/shm, $XDG_RUNTIME_DIR;
    else the temporary directory."""
    import tempfile

    for candidate in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR", "")):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


def remove_stale_metrics_dirs(base: Path) -> None:
    """Directories of earlier runs of this user whose server is gone (killed, so its exit
    did not remove them)."""
    for path in base.glob(f"{METRICS_PREFIX}*-*"):
        try:
            pid = int(path.name[len(METRICS_PREFIX):].split("-", 1)[0])
            if path.stat().st_uid != os.getuid() or _process_alive(pid):
                continue
        except (ValueError, OSError):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_metrics_dir(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _require_database(settings: Settings) -> str:
    if not settings.database_url:
        print("kassa: configuration error: KASSA_DATABASE_URL is required", file=sys.stderr)
        sys.exit(2)
    return settings.database_url


def _grpc_security(args: argparse.Namespace, settings: Settings) -> GrpcSecurity:
    """The services' security settings, refusing a non-loopback address without TLS and a token."""
    from server.adapters.grpc.security import GrpcSecurity, InsecureListen

    security = GrpcSecurity.from_settings(settings)
    try:
        security.check_listen(args.host)
    except InsecureListen as exc:
        print(f"kassa: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    return security


def cmd_receipt_service(args: argparse.Namespace, settings: Settings) -> None:
    from server.services.receipts.service import run_receipt_service

    security = _grpc_security(args, settings)
    run_receipt_service(args.port, _require_database(settings), args.host, security)


def cmd_notification_service(args: argparse.Namespace, settings: Settings) -> None:
    from server.services.notifications.delivery import NotificationConfig
    from server.services.notifications.service import run_notification_service

    config = NotificationConfig.from_settings(settings)
    security = _grpc_security(args, settings)
    run_notification_service(args.port, _require_database(settings), config, args.host, security)


def cmd_relay(args: argparse.Namespace, settings: Settings) -> None:
    if not settings.kafka_bootstrap_servers:
        print("kassa: configuration error: KASSA_KAFKA_BOOTSTRAP_SERVERS is required",
              file=sys.stderr)
        sys.exit(2)
    asyncio.run(_relay(_require_database(settings), settings))


async def _relay(dsn: str, settings: Settings) -> None:
    """The relay publishes to Kafka and, with KASSA_RECEIPT_SERVICE_ADDR, registers the
    receipts of the journals it reads."""
    from server.adapters.grpc.receipt_client import ReceiptRegistrar
    from server.adapters.kafka.relay import run_standalone

    assert settings.kafka_bootstrap_servers
    registrar = ReceiptRegistrar.from_settings(settings)
    try:
        await run_standalone(dsn, settings.kafka_bootstrap_servers, settings.kafka_topic,
                             register_receipts=registrar.register if registrar else None)
    finally:
        if registrar is not None:
            await registrar.close()


def cmd_webhook_sender(args: argparse.Namespace, settings: Settings) -> None:
    from server.adapters.kafka.relay import WEBHOOK_POLL_INTERVAL_MS, run_standalone
    from server.adapters.webhooks.sender import sender_options

    asyncio.run(run_standalone(
        _require_database(settings), None, settings.kafka_topic,
        batch_size_max=settings.relay_batch_max, poll_interval_ms=WEBHOOK_POLL_INTERVAL_MS,
        linger_ms=settings.relay_linger_ms,
        standby_interval_ms=settings.relay_standby_interval_ms,
        webhooks=sender_options(settings)))


def cmd_verify(args: argparse.Namespace, settings: Settings) -> None:
    from server.adapters.postgres.migrate import DatabaseUnreachable
    from server.adapters.postgres.verify import verify

    dsn = database_dsn(args, settings)
    try:
        report = asyncio.run(verify(dsn, grace_s=args.grace_s, receipts=not args.no_receipts,
                                    connect_timeout_s=CLI_CONNECT_TIMEOUT_S))
    except DatabaseUnreachable as exc:
        print(f"kassa: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(report.lines()), flush=True)
    sys.exit(0 if report.ok else 1)


def cmd_seed(args: argparse.Namespace, settings: Settings) -> None:
    from server.process.seed import run

    run(args, settings)


COMMANDS = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "receipt-service": cmd_receipt_service,
    "notification-service": cmd_notification_service,
    "relay": cmd_relay,
    "webhook-sender": cmd_webhook_sender,
    "verify": cmd_verify,
    "seed": cmd_seed,
}

if __name__ == "__main__":
    main()
