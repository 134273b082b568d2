"""/metrics behind a bearer token (KASSA_METRICS_TOKEN, KASSA_METRICS_TOKEN_FILE) and on a
port of its own (KASSA_METRICS_PORT, served by the gunicorn master), on a real `kassa
serve`; by default it stays open on the API port (tests/test_http_metrics.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.process.embedded import free_port
from tests.conftest import ADMIN_KEY
from tests.fixtures.kassa_server import KassaProcess, serve_new_database
from tests.fixtures.prometheus_server import prometheus
from tests.fixtures.servers import PostgresServer, RedisServer

TOKEN = "metrics-token-0123456789"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def with_token_file(pg_server: PostgresServer, redis_server: RedisServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaProcess]:
    secret = tmp_path_factory.mktemp("secrets") / "metrics_token"
    secret.write_text(TOKEN + "\n")  # as secrets are mounted: with a newline
    yield from serve_new_database(pg_server, redis_server, {"KASSA_METRICS_TOKEN_FILE": str(secret)})


@pytest.fixture(scope="module")
def with_port(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[tuple[KassaProcess, int]]:
    port = free_port()
    for kassa in serve_new_database(pg_server, redis_server, {"KASSA_METRICS_PORT": str(port),
                                                 "KASSA_METRICS_TOKEN": TOKEN}):
        yield kassa, port


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_token_guards_metrics_on_the_api_port(with_token_file: KassaProcess) -> None:
    url = with_token_file.url
    for headers in ({}, bearer("wrong"), bearer(ADMIN_KEY), {"Authorization": TOKEN}):
        refused = httpx.get(url + "/metrics", headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "kassa_" not in refused.text
    page = httpx.get(url + "/metrics", headers=bearer(TOKEN))
    assert page.status_code == 200 and "kassa_build_info{" in page.text
    # Nothing else changes: health needs no key, the API its keys (not the token).
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/v1/accounts/x", headers=bearer(TOKEN)).status_code == 401


def pids_of(page: str, family: str) -> set[str]:
    return {s.labels["pid"] for f in text_string_to_metric_families(page) if f.name == family
            for s in f.samples}


def test_metrics_move_to_their_own_port_served_by_the_master(
        with_port: tuple[KassaProcess, int]) -> None:
    kassa, port = with_port
    assert httpx.get(kassa.url + "/metrics", headers=bearer(TOKEN)).status_code == 404
    metrics_url = f"http://127.0.0.1:{port}"
    assert httpx.get(metrics_url + "/metrics").status_code == 401
    assert httpx.get(metrics_url + "/metrics", headers=bearer("wrong")).status_code == 401
    assert httpx.get(metrics_url + "/v1/accounts", headers=bearer(TOKEN)).status_code == 404
    # One page for the whole instance: both workers' series (each worker's gauge carries
    # its pid), whichever worker is busy.
    deadline = time.monotonic() + 20
    while True:
        page = httpx.get(metrics_url + "/metrics", headers=bearer(TOKEN))
        assert page.status_code == 200 and "text/plain" in page.headers["Content-Type"]
        pids = pids_of(page.text, "kassa_executor_writers_busy_ratio")
        if pids == {str(p) for p in kassa.worker_pids()} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pids == {str(p) for p in kassa.worker_pids()}, (pids, kassa.worker_pids())
    assert "kassa_build_info{" in page.text


def test_prometheus_scrapes_the_metrics_port_with_the_token(
        with_port: tuple[KassaProcess, int]) -> None:
    _, port = with_port
    with prometheus(f"127.0.0.1:{port}", bearer_token=TOKEN) as prom:
        deadline = time.monotonic() + 20
        while not (up := prom.query('up{job="kassa"} == 1 and on () kassa_build_info == 1')):
            assert time.monotonic() < deadline, prom.log.read_text()[-2000:]
            time.sleep(0.5)
        assert up


def test_the_metrics_port_answers_while_a_worker_is_replaced(
        with_port: tuple[KassaProcess, int]) -> None:
    """The master serves it: a worker killed is no gap, its per-worker series leave the page
    (gunicorn's child_exit marks it dead) and its replacement's join."""
    kassa, port = with_port
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    victim, survivor = kassa.worker_pids()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        page = httpx.get(metrics_url, headers=bearer(TOKEN))
        assert page.status_code == 200  # every scrape, also while the worker is gone
        pids = pids_of(page.text, "kassa_executor_writers_busy_ratio")
        workers = set(kassa.worker_pids())
        if len(workers) == 2 and pids == {str(p) for p in workers}:
            break
        assert time.monotonic() < deadline, (pids, workers)
        time.sleep(0.1)
    assert str(victim) not in pids and str(survivor) in pids
