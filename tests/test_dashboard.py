"""deploy/grafana/kassa.json: a well-formed dashboard whose every query names metrics that a
running `kassa serve` exports on /metrics (so a renamed metric breaks this test, not the
operator's graphs)."""

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

from tests.conftest import ADMIN_KEY, new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.load import SERVE_ENV, open_accounts

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
            ' > bool 0.5 and max(foo:bar_total[5m:1m]) unless count(transactions_total)')
    assert metric_names(expr) == [("kassa_accept_latency_seconds_bucket", True), ("up", False),
                                  ("foo:bar_total", False), ("transactions_total", False)]
    assert base_name("kassa_accept_latency_seconds_bucket") == "kassa_accept_latency_seconds"
    assert base_name("transactions_total") == "transactions_total"


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


# The series that exist only once something happened, and the requests below that make them:
# transactions_total / kassa_accept_latency_seconds (a transfer), transactions_failed_total (a
# batch whose second item fails under lock), kassa_requests_refused_total (a transfer from
# a missing account), kassa_http_* (those routes, and a 404).
@pytest.fixture(scope="module")
def served(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn,
                         "KASSA_REDIS_URL": redis_server.url})
    yield kassa
    assert kassa.stop() == 0, kassa.log_tail()


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
