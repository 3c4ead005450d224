"""OpenTelemetry wiring: configured from the standard ``OTEL_*`` variables, free when unused.

Trace context crosses the broker in NATS message headers (W3C ``traceparent``), so one order is
one trace from the api's request to the node's last step, also after a takeover (the redelivered
message carries the same headers).

Free when unused means no span objects at all: without a tracer provider ``span`` returns one
shared no-op context manager (the no-op tracer would still build a span and switch the context
in and out for every step). One exception keeps log lines joined to traces: a message that
arrived with a trace context (a traced api) still makes that context current, so the node's
lines name the trace even when the node itself does not export (ADR 0007).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context

_configured = False
_recording: bool | None = None  # found out on first use (a lookup in os.environ every time)
# What ``span`` gives when nothing records: reusable, its span ignores every call.
_NO_SPAN: Final = contextlib.nullcontext(trace.INVALID_SPAN)
TRACEPARENT: Final = "traceparent"  # the W3C header that carries a trace context


def configure_tracing(default_service: str) -> bool:
    """Install an OTLP exporter if the environment asks for one; return whether it did.

    With no ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` the global
    no-op tracer stays in place and spans cost next to nothing.
    """
    global _configured
    if _configured:
        return True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True
    _forget_recording()
    return True


def recording() -> bool:
    """Whether any real tracer provider is installed (ours, or an auto-instrumentation's, which
    installs it before the process runs): asked once, then remembered, since it is asked on
    every span and log line."""
    global _recording
    if _recording is None:
        _recording = not isinstance(
            trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        )
    return _recording


def _forget_recording() -> None:
    global _recording
    _recording = None


def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    parent_headers: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[trace.Span]:
    """A span current for the block (a child of the trace in ``parent_headers`` when given);
    without a tracer provider a shared no-op whose span ignores attributes and status: set
    attributes that cost something to build only ``if span.is_recording()``."""
    if recording():
        parent = extract_context(parent_headers) if parent_headers is not None else None
        return tracer.start_as_current_span(name, context=parent, kind=kind)
    if parent_headers and TRACEPARENT in parent_headers:  # a no-op span holding that context
        return tracer.start_as_current_span(name, context=extract_context(parent_headers))
    return _NO_SPAN


def publish_span(subject: str, message_id: str) -> contextlib.AbstractContextManager[object]:
    """The PRODUCER span around a publish; inject the headers inside it so the consumer's span
    becomes its child. Without a tracer provider it is skipped outright: the api's submit path
    is hot, and a no-op span still costs a context switch-in and -out."""
    if not recording():
        return contextlib.nullcontext()
    return tracer.start_as_current_span(
        f"{subject} publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "send",
            "messaging.message.id": message_id,
            "orderflow.order_id": message_id,
        },
    )


def shutdown_tracing() -> None:
    """Flush spans still buffered; called once on the way out of a process."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to outgoing NATS headers (when there is one)."""
    if recording() or trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


tracer = trace.get_tracer("orderflow")
