"""Tracing on or off, from the standard OTEL_* variables, once per process.

Kassa traces only when asked to: OTEL_TRACES_EXPORTER names `otlp` (OTLP over HTTP with
protobuf, to OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, default
http://localhost:4318) and/or `console`; unset or `none`, or OTEL_SDK_DISABLED=true,
leaves it off. (The specification's default exporter is `otlp`; Kassa's is none, so that
an operator who set nothing pays nothing.) The SDK itself reads the rest:
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on), OTEL_BSP_* for the batch span
processor, OTEL_EXPORTER_OTLP_* for the exporter.

Each worker process calls `configure()` after the fork (the span processor's thread does
not survive one), and so do the gRPC services; the provider flushes its spans at exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from server.process.settings import ConfigError
from server.tracing import spans

log = logging.getLogger("kassa.tracing")

EXPORTERS = ("otlp", "console")
DEFAULT_SERVICE = "kassa"
_configured_pid: int | None = None


class TracingConfigError(ConfigError):
    """An OTEL_* value Kassa cannot honour: refused at start rather than ignored."""


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names; empty when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of "
                                 f"{', '.join(EXPORTERS)} or none")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                       env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    if "otlp" in names and protocol != "http/protobuf":
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Kassa exports "
                                 "OTLP over http/protobuf only")
    return names


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def configure(service_name: str = DEFAULT_SERVICE, env: Mapping[str, str] | None = None
              ) -> bool:
    """Install this process's tracer provider if OTEL_* asks for tracing; whether it is on.
    Once per process (a second call in the same process changes nothing)."""
    global _configured_pid
    if _configured_pid == os.getpid():
        return spans.ENABLED
    _configured_pid = os.getpid()
    env = os.environ if env is None else env
    names = exporter_names(env)
    if not names:  # off (a test may have installed a provider of its own: left alone)
        return spans.ENABLED
    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else
                               {"service.name": service_name})
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    spans.use(provider)
    log.info("tracing on: exporting spans to %s", ", ".join(names))
    return True


def shutdown() -> None:
    """Export what is buffered (on a clean stop; the provider also does it at exit)."""
    provider = trace.get_tracer_provider()
    if spans.ENABLED and isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=2000)
