"""deploy/grafana/kassa.json: a well-formed dashboard whose every query names metrics that a
running `kassa serve` exports on /metrics (so a renamed metric breaks this test, not the
operator's graphs), and whose every panel shows data on a server that has served nothing
yet: each query, evaluated by a real Prometheus scraping such a server, returns at least
one series (Grafana's "No data" otherwise)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.fixtures.kassa_server import KassaProcess, serve_new_database
from tests.fixtures.prometheus_server import JOB, SCRAPE_INTERVAL_S, Prometheus, prometheus
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.load import open_accounts

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "kassa.json"

# PromQL words that are neither metrics nor functions called with "(".
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "atan2", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"(?P<number>(?<![\w:])\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)"
                    r"|(?P<other>\S)")


def metric_names(expr: str) -> list[tuple[str, bool]]:
    """The metric names a PromQL expression selects, in order, each with whether a label
    selector `{...}` follows it. Skips strings (label values, Grafana variables in them),
    label matchers, ranges `[...]`, grouping label lists, functions and aggregations (a name
    followed by "("), keywords and numbers."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries: durations, $__rate_interval
    text = _GROUPING.sub(" ", text)
    found: list[tuple[str, bool]] = []
    tokens = list(_TOKEN.finditer(text))
    depth = 0  # inside a label selector: label names, not metrics
    for i, token in enumerate(tokens):
        other = token.group("other")
        if other == "{":
            depth += 1
        elif other == "}":
            depth -= 1
        name = token.group("name")
        if name is None or depth or name.lower() in KEYWORDS:
            continue
        following = tokens[i + 1].group(0) if i + 1 < len(tokens) else ""
        if following == "(":
            continue  # sum, rate, histogram_quantile, clamp_min...
        found.append((name, following == "{"))
    return found


def base_name(metric: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def graph_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in doc["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return flat


def queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the panels."""
    return [t["expr"] for p in graph_panels(doc) if p["type"] != "row" for t in p["targets"]]


def variable_metrics(doc: dict[str, Any]) -> set[str]:
    """Metrics named by the template variables' `label_values(metric{...}, label)`."""
    names = set()
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert match, f"variable {var['name']}: not label_values(metric, label): {query}"
        names |= {name for name, _ in metric_names(match.group(1))}
    return names


def named_metrics(doc: dict[str, Any]) -> set[str]:
    return {name for expr in queries(doc) for name, _ in metric_names(expr)} | variable_metrics(doc)


def test_the_extractor_finds_metrics_and_only_metrics() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(kassa_accept_latency_seconds_bucket'
            '{job=~"$job", instance="a:1", status!~"5xx|4xx"}[$__rate_interval])))'
            ' / on (instance) group_left (pod) clamp_min(sum without (pid) (up offset 5m), 1e3)'
            ' > bool 0.5 and max(foo:bar_total[5m:1m]) unless count(kassa_transactions_total)')
    assert metric_names(expr) == [("kassa_accept_latency_seconds_bucket", True), ("up", False),
                                  ("foo:bar_total", False), ("kassa_transactions_total", False)]
    assert base_name("kassa_accept_latency_seconds_bucket") == "kassa_accept_latency_seconds"
    assert base_name("kassa_transactions_total") == "kassa_transactions_total"


def test_the_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert 36 <= doc["schemaVersion"] <= 41 and doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    panels = graph_panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["x"] + grid["w"] <= 24
        cells = {(grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])}
        assert not cells & occupied, f"{panel['title']}: overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']}: no unit"
        targets = panel["targets"]
        assert targets, f"{panel['title']}: no targets"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} names no metric"
            # Every selector is scoped to the chosen job and instances.
            for name, selected in names:
                assert selected, f"{panel['title']}: {name} without a label selector"
            selectors = re.findall(r"\{[^}]*\}", _STRING.sub(lambda m: m.group(0).replace(
                "{", "(").replace("}", ")"), target["expr"]))
            for selector in selectors:
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, \
                    f"{panel['title']}: {selector}"
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("accepted vs completed", "accept latency", "accept-to-final", "backlog",
                  "oldest unexecuted", "outbox lag", "circuit breakers", "refusals",
                  "http requests by route", "http latency p99"):
        assert topic in titles, topic


# What Grafana puts in a query, as the dashboard's defaults ("All") give it: `$__rate_interval`
# is at least four scrape intervals.
GRAFANA_VALUES = {"$__rate_interval": f"{4 * SCRAPE_INTERVAL_S + 1}s", "$job": JOB,
                  "$instance": ".*", "$route": ".*"}


def as_grafana_sends(expr: str) -> str:
    for variable, value in GRAFANA_VALUES.items():
        expr = expr.replace(variable, value)
    return expr


def variable_queries(doc: dict[str, Any]) -> dict[str, str]:
    """Each query variable's `label_values(selector, label)` as the PromQL that lists those
    values: `group by (label) (selector)`."""
    found = {}
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, query
            found[var["name"]] = f"group by ({match.group(2)}) ({match.group(1)})"
    return found


def panel_queries(doc: dict[str, Any]) -> dict[str, str]:
    """`panel title / refId` → its expression as Grafana sends it, and each variable's."""
    found = {f"{p['title']} / {t['refId']}": as_grafana_sends(t["expr"])
             for p in graph_panels(doc) if p["type"] != "row" for t in p["targets"]}
    return found | {f"variable {name}": as_grafana_sends(query)
                    for name, query in variable_queries(doc).items()}


def test_grafana_variables_are_replaced_and_variable_queries_rewritten() -> None:
    doc = dashboard()
    queries_ = panel_queries(doc)
    assert len(queries_) == len(queries(doc)) + 3
    assert not any("$" in expr for expr in queries_.values()), queries_
    assert variable_queries(doc)["instance"] == \
        'group by (instance) (kassa_backlog_size{job=~"$job"})'


@pytest.fixture
def fresh(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    """A server that has served nothing but /readyz (asked until it is ready)."""
    yield from serve_new_database(pg_server, redis_server)


def empty_queries(prom: Prometheus, wanted: dict[str, str]) -> dict[str, str]:
    return {name: expr for name, expr in wanted.items() if not prom.query(expr)}


@pytest.mark.slow
def test_every_panel_has_data_on_a_server_that_served_nothing(fresh: KassaProcess) -> None:
    wanted = panel_queries(dashboard())
    with prometheus(f"127.0.0.1:{fresh.port}") as prom:
        # rate() needs two scrapes in its window: a few scrapes, then no query may be empty.
        deadline = time.monotonic() + 30
        while (empty := empty_queries(prom, wanted)) and time.monotonic() < deadline:
            time.sleep(SCRAPE_INTERVAL_S)
        assert not empty, f"No data in: {empty}"
        # It did serve nothing: no transaction, no refusal, no request but these.
        assert prom.query("sum(kassa_transactions_total) + sum(kassa_requests_refused_total)"
                          " + sum(kassa_accept_latency_seconds_count) > 0") == []
        served = {s["metric"]["route"] for s in prom.query(
            "sum by (route) (kassa_http_requests_total) > 0")}
        assert served <= {"/readyz", "/metrics"}, served
        # Every known combination is there at 0 (a sample of them).
        assert len(prom.query('kassa_transactions_total{status="voided"}')) == 6
        assert prom.query('kassa_requests_refused_total{code="insufficient_funds"}')
        assert prom.query('kassa_build_info{version!="", python!=""} == 1')
        assert prom.query('kassa_child_restarts_total{child="receipt-service"} == 0')
        assert len(prom.query("kassa_webhook_deliveries_total == 0")) == 3
        assert len(prom.query('kassa_receipt_call_duration_seconds_count')) == 2  # reserve at start


# The series that exist only once something happened, and the requests below that make them:
# kassa_transactions_total / kassa_accept_latency_seconds (a transfer), kassa_transactions_failed_total (a
# batch whose second item fails under lock), kassa_requests_refused_total (a transfer from
# a missing account), kassa_http_* (those routes, and a 404).
@pytest.fixture(scope="module")
def served(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    yield from serve_new_database(pg_server, redis_server)


def exported(metrics_text: str) -> set[str]:
    """Sample names on a /metrics page (histograms as _bucket, _sum, _count)."""
    return {re.split(r"[{\s]", line, maxsplit=1)[0]
            for line in metrics_text.splitlines() if line and not line.startswith("#")}


@pytest.mark.slow
def test_every_metric_the_dashboard_names_is_on_metrics(served: KassaProcess) -> None:
    asyncio.run(open_accounts(served.url, ["dash_a"], 100))
    asyncio.run(open_accounts(served.url, ["dash_b"], 0))
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30) as http:
        transfer = {"type": "transfer", "currency": "USD", "source": "dash_a",
                    "destination": "dash_b", "amount": 10}
        assert http.post("/v1/transactions?wait=true", json=transfer).status_code == 201
        # One batch reads its accounts once: both pass pre-validation, the second fails
        # under lock (an execution-time failure).
        item = {**transfer, "amount": 80}
        r = http.post("/v1/transactions/batch?wait=true", json={"transactions": [item, item]})
        assert r.status_code == 201, r.text
        assert [x.get("status") for x in r.json()["results"]] == ["completed", None], r.text
        refused = http.post("/v1/transactions?wait=true", json={**transfer, "source": "missing"})
        assert refused.status_code in (404, 422), refused.text
        assert http.get("/v1/accounts/missing").status_code == 404
        assert http.get("/v1/accounts/dash_b").status_code == 200

        wanted = named_metrics(dashboard())
        deadline = time.monotonic() + 20  # the backlog gauges refresh every 5 s
        while True:
            page = http.get("/metrics")
            assert page.status_code == 200
            missing = wanted - exported(page.text)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert not missing, (f"the dashboard names metrics /metrics does not have: {sorted(missing)}"
                         f" (of {sorted({base_name(m) for m in wanted})})")
