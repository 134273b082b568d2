"""HTTP request metrics on the real app: route templates, status classes, no ids in labels."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.test_http_api import make_accounts

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client) -> tuple[str, Series]:  # type: ignore[no-untyped-def]
    r = await client.get("/metrics")
    assert r.status_code == 200
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(r.text)
             if family.name.startswith("kassa_http_request")
             for s in family.samples}
    return r.text, found


def count(series: Series, route: str, method: str, status: str) -> float:
    return series.get(("kassa_http_requests_total",
                       (("method", method), ("route", route), ("status", status))), 0.0)


async def test_requests_are_counted_by_route_template_and_status_class(app_client) -> None:  # type: ignore[no-untyped-def]
    _, before = await scrape(app_client)
    await make_accounts(app_client, ("hm-alice", 100, 0), ("hm-bob", 0, 0))
    posted = await app_client.post("/v1/transactions", json={
        "type": "transfer", "currency": "USD", "source": "hm-alice", "destination": "hm-bob",
        "amount": 10})
    assert posted.status_code == 202, posted.text
    receipt = posted.json()["receipt_code"]
    assert (await app_client.get(f"/v1/transactions/{receipt}")).status_code in (200, 404)
    assert (await app_client.get(f"/v1/transactions/{receipt}/status")).status_code == 200
    assert (await app_client.get("/v1/transactions/RCP-00000000-0000000000000000")).status_code == 404
    assert (await app_client.get("/v1/accounts/hm-alice")).status_code == 200
    assert (await app_client.get("/no/such/path/hm-alice")).status_code == 404
    assert (await app_client.delete("/v1/transactions")).status_code == 405
    assert (await app_client.get("/healthz")).status_code == 200

    text, after = await scrape(app_client)

    def delta(route: str, method: str, status: str) -> float:
        return count(after, route, method, status) - count(before, route, method, status)

    assert delta("/v1/accounts", "POST", "2xx") == 2
    assert delta("/v1/transactions", "POST", "2xx") == 2  # the deposit (wait=true) and the transfer
    assert delta("/v1/transactions/{receipt_code}", "GET", "2xx") \
        + delta("/v1/transactions/{receipt_code}", "GET", "4xx") == 2
    assert delta("/v1/transactions/{receipt_code}", "GET", "4xx") >= 1
    assert delta("/v1/transactions/{receipt_code}/status", "GET", "2xx") == 1
    assert delta("/v1/accounts/{account_id}", "GET", "2xx") == 1
    assert delta("unmatched", "GET", "4xx") == 1
    assert delta("/v1/transactions", "DELETE", "4xx") == 1
    assert delta("/healthz", "GET", "2xx") == 1
    assert delta("/metrics", "GET", "2xx") == 1  # the first scrape, recorded after it rendered
    histogram = ("kassa_http_request_duration_seconds_count",
                 (("method", "GET"), ("route", "/v1/accounts/{account_id}"), ("status", "2xx")))
    assert after[histogram] - before.get(histogram, 0.0) == 1
    inf_bucket = ("kassa_http_request_duration_seconds_bucket",
                  (("le", "+Inf"), ("method", "GET"), ("route", "/healthz"), ("status", "2xx")))
    assert after[inf_bucket] - before.get(inf_bucket, 0.0) == 1

    routes = {dict(labels)["route"] for _, labels in after}
    assert all(route == "unmatched" or route.startswith("/") for route in routes), routes
    assert not any(re.search(r"RCP-|hm-|/no/such", route) for route in routes), routes
    assert receipt not in text and "hm-alice" not in text
    statuses = {dict(labels)["status"] for _, labels in after}
    assert statuses <= {"1xx", "2xx", "3xx", "4xx", "5xx"}, statuses


def samples(text: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) if f.name == family
            for s in f.samples if s.name.endswith("_total")}


async def test_known_series_are_exported_at_zero_and_build_info_at_one(app_client) -> None:  # type: ignore[no-untyped-def]
    text = (await app_client.get("/metrics")).text
    transactions = samples(text, "kassa_transactions")
    statuses = {dict(labels)["status"] for labels in transactions}
    types = {dict(labels)["type"] for labels in transactions}
    assert statuses == {"completed", "failed", "voided"}  # final statuses only: never held
    assert types == {"transfer", "deposit", "withdrawal", "capture", "void", "reversal"}
    refused = {dict(labels)["code"] for labels in samples(text, "kassa_requests_refused")}
    assert {"insufficient_funds", "account_not_found", "currency_mismatch"} <= refused
    assert 'kassa_accept_latency_seconds_count{kind="transaction"}' in text
    assert re.search(r'kassa_build_info\{python="3\.\d+\.\d+",version="[^"]+"\} 1\.0', text), text


async def test_a_hold_is_counted_when_its_capture_ends_it(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("hm-holder", 100, 0), ("hm-payee", 0, 0))
    before = samples((await app_client.get("/metrics")).text, "kassa_transactions")
    held = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "hm-holder", "destination": "hm-payee",
        "amount": 30, "hold": True})
    assert held.status_code == 201 and held.json()["status"] == "held", held.text
    code = held.json()["receipt_code"]
    captured = await app_client.post(f"/v1/transactions/{code}/capture?wait=true", json={})
    assert captured.status_code == 201 and captured.json()["status"] == "completed", captured.text
    key = (("status", "completed"), ("type", "capture"))
    for _ in range(200):  # the effects count it just after the answer
        after = samples((await app_client.get("/metrics")).text, "kassa_transactions")
        if after[key] > before[key]:
            break
    assert after[key] == before[key] + 1
    assert not any(dict(labels)["status"] == "held" for labels in after)
