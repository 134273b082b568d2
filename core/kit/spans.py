"""Spans of the pipeline's own steps, through a port: core names the step and the items
it serves (by their opaque W3C traceparent strings), the shell makes OpenTelemetry spans of
them (server/tracing/spans.py). `NO_SPANS`, while tracing is off, builds nothing: one
shared null context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Protocol


class Spans(Protocol):
    def step(self, name: str) -> contextlib.AbstractContextManager[object]:
        """A span under the current one (admission)."""
        ...

    def batch(self, name: str, traceparents: Iterable[str | None]
              ) -> contextlib.AbstractContextManager[object]:
        """One span for work done for many items (an executor batch), linked to them."""
        ...


_NULL = contextlib.nullcontext()


class NoSpans:
    def step(self, name: str) -> contextlib.AbstractContextManager[object]:
        return _NULL

    def batch(self, name: str, traceparents: Iterable[str | None]
              ) -> contextlib.AbstractContextManager[object]:
        return _NULL


NO_SPANS = NoSpans()
