"""OpenTelemetry tracing, off unless the standard OTEL_* variables turn it on
(docs/operations.md, Tracing): setup.py reads them, spans.py holds the one flag every hook
checks and the span helpers, grpc_context.py carries a trace across the gRPC services."""
