"""OpenTelemetry wiring: configured from the standard ``OTEL_*`` variables, free when unused.

Trace context crosses the broker in NATS message headers (W3C ``traceparent``), so one order is
one trace from the api's request to the node's last step, also after a takeover (the redelivered
message carries the same headers).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

_configured = False


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
    return True


def recording() -> bool:
    """Whether any real tracer provider is installed (ours or an auto-instrumentation's)."""
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


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
    """Add the current trace context to outgoing NATS headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


tracer = trace.get_tracer("orderflow")
