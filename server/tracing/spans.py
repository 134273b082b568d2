"""The spans Kassa makes, and the flag every hook checks first.

`ENABLED` is False unless setup.configure() (or a test's `use`) installed a tracer
provider: every hook on the request path tests it before building anything, so with
tracing off a request costs one attribute read per hook and the journal's traceparent is
NULL.

A trace crosses batches by W3C traceparent strings (`00-<trace>-<span>-<flags>`): the
request's is set in TRACEPARENT (core/kit/request_context.py) for the pipeline to carry
opaquely, stored with the journal, and sent as a Kafka header. A span that serves many
items (a group commit, an executor batch, a relay publish, a receipt registration call)
is ONE span: the child of its first sampled item's context (or of the span it runs in),
with a link to every sampled item. A batch without a sampled item makes no span at all, so at 1 % sampling most
batches cost one string test per item.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.kit.request_context import TRACEPARENT
from core.kit.spans import NO_SPANS, Spans

ENABLED = False
_tracer: trace.Tracer = trace.NoOpTracer()
# A request's root sampling, decided before any span object is built (see use()): trace ids
# whose lower 64 bits are below this are sampled; None: the SDK's sampler decides.
_root_bound: int | None = None
_links_max = 128
_propagator = TraceContextTextMapPropagator()
_NULL = contextlib.nullcontext()
NAME = "kassa"

Attributes = Mapping[str, str | int | bool]
_ID64 = (1 << 64) - 1


def use(provider: trace.TracerProvider | None) -> None:
    """Trace through `provider` from now on (None: tracing off again, for tests)."""
    global ENABLED, _tracer, _root_bound, _links_max
    ENABLED = provider is not None
    _links_max = SpanLimits().max_links or _links_max
    _root_bound = _take_root_sampling(provider)
    _tracer = provider.get_tracer(NAME) if provider is not None else trace.NoOpTracer()


def _take_root_sampling(provider: trace.TracerProvider | None) -> int | None:
    """The bound of the requests' root sampling, taken over from a parent-based sampler
    whose root is a ratio (parentbased_traceidratio) or always on or off: then a request
    the ratio leaves out costs a random id and a string, not a span object (the SDK would
    build a non-recording span, its context and its child spans: about 20 µs). Its root
    becomes always-on, so that a request sampled here is recorded; the parent-based rules
    (a remote parent's flags decide) stay the SDK's. None for any other sampler."""
    sampler = provider.sampler if isinstance(provider, TracerProvider) else None
    if not isinstance(sampler, ParentBased):
        return None
    root = sampler._root  # noqa: SLF001 - the SDK keeps it private; read once
    if isinstance(root, TraceIdRatioBased):
        bound: int = root.bound
    elif root in (ALWAYS_ON, ALWAYS_OFF):
        bound = _ID64 + 1 if root is ALWAYS_ON else 0
    else:
        return None
    sampler._root = ALWAYS_ON  # noqa: SLF001
    return bound


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C traceparent of `span`, or None for an invalid one."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span()) if ENABLED else None


def is_sampled(traceparent: str | None) -> bool:
    """Whether a stored traceparent was sampled (its flags' lowest bit), without parsing it."""
    return traceparent is not None and len(traceparent) == 55 and traceparent[-1] in "13579bdf"


def span_context(traceparent: str) -> SpanContext | None:
    """The remote span context of a traceparent, or None if it is not a valid one."""
    tp = traceparent
    if len(tp) != 55 or tp[2] != "-" or tp[35] != "-" or tp[52] != "-":
        return None
    try:
        trace_id, span_id, flags = int(tp[3:35], 16), int(tp[36:52], 16), int(tp[53:], 16)
    except ValueError:
        return None
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return ctx if ctx.is_valid else None


def _parent(ctx: SpanContext) -> otel_context.Context:
    return trace.set_span_in_context(NonRecordingSpan(ctx))


@contextlib.contextmanager
def http_request(method: str, target: str, headers: Iterable[tuple[bytes, bytes]]
                 ) -> Iterator[trace.Span]:
    """The server span of one HTTP request (one `unsampled` did not leave out),
    continuing the client's traceparent; while it is current, TRACEPARENT names it (the
    journal stores that, the group commit links it)."""
    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
               if name in (b"traceparent", b"tracestate")}
    parent = _propagator.extract(carrier) if carrier else None
    with _tracer.start_as_current_span(f"{method} {target}" if target else method,
                                       context=parent,
                                       kind=SpanKind.SERVER,
                                       attributes={"http.request.method": method}) as span:
        token = TRACEPARENT.set(traceparent_of(span))
        try:
            yield span
        finally:
            TRACEPARENT.reset(token)


def unsampled(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The traceparent of an HTTP request the root sampling leaves out, or None when it
    is sampled (or the SDK's sampler decides): such a request gets no span object, but a
    traceparent all the same (flags 00, in the client's trace if it sent one), so what it
    leads to stays unsampled and a consumer can still join its logs. Checked before
    anything else is built: at 1 % sampling this is the cost of 99 requests in 100."""
    if _root_bound is None:
        return None
    incoming = None
    for name, value in headers:
        if name == b"traceparent":
            incoming = value.decode("latin-1")
            break
    remote = span_context(incoming) if incoming else None
    if remote is not None:
        if remote.trace_flags.sampled:
            return None
        trace_id = remote.trace_id
    else:
        trace_id = random.getrandbits(128) or 1
        if (trace_id & _ID64) < _root_bound:
            return None
    return f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-00"


def step(name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes | None = None
         ) -> contextlib.AbstractContextManager[trace.Span]:
    """A span under the current one (admission, a Redis call, a gRPC client call)."""
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def in_trace(system: str, operation: str, kind: SpanKind = SpanKind.CLIENT
             ) -> contextlib.AbstractContextManager[object]:
    """A span `<system> <operation>` under the current one if there is one (a Redis call of
    a request); nothing for a call outside any trace (background work), which would make a
    trace of its own. The name is built only when there is a span to give it."""
    if not ENABLED or not trace.get_current_span().is_recording():
        return _NULL
    return _tracer.start_as_current_span(f"{system} {operation}", kind=kind,
                                         attributes={"db.system.name": system})


@contextlib.contextmanager
def batch(name: str, traceparents: Iterable[str | None], kind: SpanKind = SpanKind.INTERNAL,
          attributes: Attributes | None = None) -> Iterator[trace.Span | None]:
    """ONE span for work done for many items, linked to every sampled item's context: the
    child of the current span if there is one (the executor batch inside its group
    commit), else of the first sampled item's context; nothing (None) when no item was
    sampled. Items of one request (a batch request's) make one link; at most the SDK's
    link limit (OTEL_SPAN_LINK_COUNT_LIMIT, 128) are parsed, the first ones: the SDK
    would drop the others after paying for them."""
    sampled = dict.fromkeys(tp for tp in traceparents if tp is not None and is_sampled(tp))
    contexts = [c for c in map(span_context, itertools.islice(sampled, _links_max))
                if c is not None]
    if not contexts:
        yield None
        return
    inside = trace.get_current_span().get_span_context().is_valid
    with _tracer.start_as_current_span(
            name, context=None if inside else _parent(contexts[0]), kind=kind,
            attributes=attributes,
            links=[Link(c) for c in contexts]) as span:
        yield span


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """The current span's traceparent (and tracestate) added to `carrier`."""
    _propagator.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    return _propagator.extract(carrier)


def server_span(name: str, carrier: Mapping[str, str], attributes: Attributes | None = None
                ) -> contextlib.AbstractContextManager[trace.Span]:
    """The server side of a call whose caller sent its context in `carrier`."""
    return _tracer.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER,
                                         attributes=attributes)


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span (or of the unsampled request's
    traceparent), for log lines; None outside both."""
    if not ENABLED:
        return None
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    tp = TRACEPARENT.get()
    return None if tp is None else (tp[3:35], tp[36:52])


def record_status(span: trace.Span | None, **attributes: Any) -> None:
    if span is not None and span.is_recording():
        span.set_attributes(attributes)


class PipelineSpans:
    """core.kit.spans.Spans as OpenTelemetry spans (the composition root's, tracing on):
    a step only inside a sampled request; a batch inside a recorded span (the executor
    batch in its group commit, which links the items already) is a plain child of it."""

    def step(self, name: str) -> contextlib.AbstractContextManager[object]:
        return step(name) if trace.get_current_span().is_recording() else _NULL

    def batch(self, name: str, traceparents: Iterable[str | None]
              ) -> contextlib.AbstractContextManager[object]:
        if trace.get_current_span().is_recording():
            return step(name)
        return batch(name, traceparents)


def pipeline_spans() -> Spans:
    return PipelineSpans() if ENABLED else NO_SPANS


class Traced(Protocol):
    @property
    def traceparent(self) -> str | None: ...


ItemT = TypeVar("ItemT", bound=Traced)
R = TypeVar("R")


def traced_sink(name: str, sink: Callable[[list[ItemT]], Awaitable[R]]
                ) -> Callable[[list[ItemT]], Awaitable[R]]:
    """A batcher's sink with ONE span per flush, linked to each item's request (the group
    commit); the sink itself while tracing is off."""
    if not ENABLED:
        return sink

    async def traced(items: list[ItemT]) -> R:
        with batch(name, (i.traceparent for i in items),
                   attributes={"kassa.batch.size": len(items)}):
            return await sink(items)

    return traced
