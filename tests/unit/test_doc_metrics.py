"""Every metric name in README.md and docs/*.md is one Kassa exports, spelled as /metrics
spells it: a PromQL query copied from the docs must match something.

The names Kassa can export come from its own metric objects (every module under server/
that constructs a prometheus_client Counter, Gauge or Histogram is imported and its
metrics read), turned into the sample names the exposition format uses: a counter `x`
is `x_total` (prometheus_client appends it), a histogram `x` is `x_bucket`, `x_sum` and
`x_count`, a gauge is its name.

What counts as a metric name in the docs: an identifier in a code span or a fenced block
that starts with `kassa_`, or that is one of the names above or their family name with
a suffix removed, with an underscore (`transactions_total`, `receipt_batch_latency`...; the
bare word `transactions` is a route, not the family of `transactions_total`). In a span that
reads as a PromQL expression (a function call, a range `[5m]` or a label matcher
`{name="x"}`) it must be an exact sample name; elsewhere (`kassa_execute_batch_size` or
`kassa_accept_latency_seconds{kind}` in a table, labels listed in braces) a histogram may
also be named by its family.
A counter named without `_total` is always wrong: that query matches nothing.

The names CHANGELOG.md lists as replaced are no metric of Kassa any more, and no document
names them (an old name would pass the check above: it no longer looks like a metric)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = ROOT / "CHANGELOG.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONSTRUCTORS = {"Counter", "Gauge", "Histogram", "Summary"}
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")

FENCE = re.compile(r"^ *```[^\n]*\n(.*?)^ *```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
IDENTIFIER = re.compile(r"(?<![\w:.$/-])[A-Za-z_][A-Za-z0-9_:]*")


def metric_modules() -> list[str]:
    """Modules under server/ that construct a prometheus_client metric."""
    found = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        if "gen" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CONSTRUCTORS):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
                break
    return found


def defined_metrics() -> dict[str, str]:
    """Family name → type of every metric object those modules hold."""
    families: dict[str, str] = {}
    for name in metric_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                families[value._name] = value._type
    return families


def sample_names(families: dict[str, str]) -> dict[str, str]:
    """Exported sample name → its family's type."""
    samples = {}
    for family, kind in families.items():
        if kind == "counter":
            samples[f"{family}_total"] = kind
        elif kind == "histogram":
            samples |= {f"{family}{suffix}": kind for suffix in ("_bucket", "_sum", "_count")}
        else:
            samples[family] = kind
    return samples


def code_spans(text: str) -> list[str]:
    """Fenced blocks (line by line) and inline code spans outside them."""
    spans: list[str] = []
    for block in FENCE.findall(text):
        spans += block.splitlines()
    spans += INLINE.findall(FENCE.sub("", text))
    return spans


PROMQL = re.compile(r"[(\[]|\{[^}]*=")
SECRETS = re.compile(r"\bsecrets\b")


def is_metric_like(name: str, families: dict[str, str]) -> bool:
    base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
    return (name.startswith("kassa_") or name in sample_names(families)
            or ("_" in name and base in families))


def doc_metric_names(families: dict[str, str]) -> list[tuple[str, str, bool]]:
    """(document, name, in a PromQL-looking span) of every metric-like identifier."""
    found = []
    for doc in DOCS:
        for span in code_spans(doc.read_text()):
            if SECRETS.search(span):
                continue  # Docker's and Kubernetes' secret names (`kassa_api_keys`)
            promql = PROMQL.search(span) is not None
            found += [(doc.name, m.group(0), promql) for m in IDENTIFIER.finditer(span)
                      if is_metric_like(m.group(0), families)]
    return found


def problem(name: str, promql: bool, families: dict[str, str]) -> str | None:
    samples = sample_names(families)
    if name in samples:
        return None
    if name in families:
        kind = families[name]
        if kind == "counter":
            return f"a counter: write {name}_total"
        if kind == "histogram" and not promql:
            return None  # a histogram named by its family in prose or a table
        return f"a {kind}: in PromQL write {name}_bucket, _sum or _count"
    return "no metric of Kassa has this name"


def test_the_metrics_are_found() -> None:
    families = defined_metrics()
    assert families["kassa_receipt_blocks_reserved"] == "counter"  # defined without _total
    assert families["kassa_http_requests"] == "counter"  # defined with it: same family
    assert families["kassa_accept_latency_seconds"] == "histogram"
    assert families["kassa_backlog_size"] == "gauge"
    assert len(families) >= 30


def test_the_extractor() -> None:
    families = {"kassa_x": "counter", "kassa_h": "histogram", "kassa_g": "gauge"}
    text = ("Look at `rate(kassa_x_total[5m])` and `kassa_h{kind}`, `kassa_g{pid=\"1\"}`;\n"
            "```\nhistogram_quantile(0.99, rate(kassa_h[5m]))\n```\n"
            "but not `kassa serve`, `.kassa/admin_api_key`, `KASSA_KAFKA_TOPIC` or\n"
            "`/v1/transactions`.\n")
    found = [(name, PROMQL.search(span) is not None) for span in code_spans(text)
             for name in (m.group(0) for m in IDENTIFIER.finditer(span))
             if is_metric_like(name, families)]
    assert sorted(found) == [("kassa_g", True), ("kassa_h", False), ("kassa_h", True),
                             ("kassa_x_total", True)]
    assert is_metric_like("transactions_total", {"transactions": "counter"})
    assert not is_metric_like("transactions", {"transactions": "counter"})
    assert problem("kassa_x", False, families) == "a counter: write kassa_x_total"
    assert problem("kassa_h", False, families) is None
    assert problem("kassa_h", True, families) is not None
    assert problem("kassa_h_bucket", True, families) is None
    assert problem("kassa_nope", False, families) is not None


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_every_metric_name_in_the_docs_is_exported(doc: str) -> None:
    families = defined_metrics()
    wrong = sorted({f"{name}: {why}" for where, name, promql in doc_metric_names(families)
                    if where == doc and (why := problem(name, promql, families))})
    assert wrong == [], f"{doc} names metrics /metrics does not have"


def test_the_docs_name_metrics_at_all() -> None:
    names = {name for _, name, _ in doc_metric_names(defined_metrics())}
    assert {"kassa_receipt_registrations_dropped_total", "kassa_http_requests_total",
            "kassa_transactions_total"} <= names


def test_counter_gauge_and_histogram_are_the_constructors_looked_for() -> None:
    assert {Counter.__name__, Gauge.__name__, Histogram.__name__} <= CONSTRUCTORS


# A row of CHANGELOG.md's table: | `old{labels}` | `new{labels}`... or | removed: `other`...
RENAME_ROW = re.compile(r"^\| `([a-z_]+)[^`]*` \| (removed: )?`([a-z_]+)", re.M)


def renamed() -> dict[str, tuple[str, bool]]:
    """Old name → (its replacement, whether the old one is simply removed)."""
    return {m.group(1): (m.group(3), bool(m.group(2)))
            for m in RENAME_ROW.finditer(CHANGELOG.read_text())}


def test_the_changelog_table_is_read() -> None:
    rows = renamed()
    assert rows["transactions_total"] == ("kassa_transactions_total", False)
    assert rows["kassa_account_cache_hit_rate"] == ("kassa_account_cache_requests_total", True)
    assert len(rows) >= 10


def test_renamed_metrics_are_gone_and_their_replacements_exported() -> None:
    families = defined_metrics()
    samples = sample_names(families)
    for old, (new, _) in renamed().items():
        assert old not in samples and old not in families, f"{old} is still defined"
        assert old.removesuffix("_total") not in families, f"{old} is still defined"
        assert new in samples or new in families, f"{new} (for {old}) is not a metric"


def family_of(sample: str) -> str:
    """A histogram's family from its sample name (`x_bucket` → `x`); others as they are."""
    return next((sample.removesuffix(s) for s in ("_bucket", "_sum", "_count")
                 if sample.endswith(s)), sample)


def test_no_document_names_a_renamed_metric() -> None:
    old_names = renamed().keys()
    found = sorted({(doc.name, m.group(0)) for doc in DOCS for span in code_spans(doc.read_text())
                    for m in IDENTIFIER.finditer(span) if family_of(m.group(0)) in old_names})
    assert found == [], "write the new names (CHANGELOG.md)"


def test_every_metric_follows_the_naming_conventions() -> None:
    """kassa_ first; a histogram's name ends in its unit (or _size: items per batch); no
    gauge or histogram ends in _total (a counter's suffix)."""
    for family, kind in defined_metrics().items():
        assert family.startswith("kassa_"), family
        if kind == "histogram":
            assert family.endswith(("_seconds", "_bytes", "_size")), family
        if kind != "counter":
            assert not family.endswith("_total"), family
