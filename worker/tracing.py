"""OpenTelemetry spans of a job's path, continuing the producer's trace.

A job's record may carry a W3C ``traceparent`` (and ``tracestate``) header; the
worker's spans for that job (``bw.job``, and inside it ``bw.decode``, ``bw.reserve``,
``bw.model_call``, ``bw.settle``, ``bw.publish``) are its children, and the result
event's record carries the context on, so a producer's trace continues through the
worker to whoever reads the event.

Off unless configured (``BW_TRACING_EXPORTER``: ``otlp`` or ``console``), and the
OpenTelemetry packages are an optional extra (``budget-worker[tracing]``). Off, every
span is a no-op and the trace headers of a job are passed on to its event unchanged.
Spans carry ids, the model, the outcome and money; never prompt or response text, and
no user id (one may be personal data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from worker.errors import ConfigError

Headers = list[tuple[str, bytes]]
TRACE_HEADERS = ("traceparent", "tracestate")

_tracer: Any = None  # an opentelemetry Tracer once configured
_provider: Any = None  # its TracerProvider, to flush at shutdown


def configure(exporter: str, service_name: str, worker_id: str) -> None:
    """Export spans with ``exporter`` (``none``, ``otlp``, ``console``). ``otlp`` reads
    its endpoint from the standard ``OTEL_EXPORTER_OTLP_*`` variables."""
    if exporter == "none":
        return
    try:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    except ImportError:
        raise ConfigError(
            f"BW_TRACING_EXPORTER={exporter} needs the tracing extra: "
            "pip install 'budget-worker[tracing]'"
        ) from None
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    use(span_exporter, service_name, worker_id)


def use(span_exporter: Any, service_name: str, worker_id: str) -> None:
    """Export spans to ``span_exporter`` (an OpenTelemetry SpanExporter), in batches."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name, "service.instance.id": worker_id})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    _provider, _tracer = provider, provider.get_tracer("budget_worker")


def shutdown() -> None:
    """Flush what is buffered and stop exporting."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child of the current span (a no-op while tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)):
        yield


@contextlib.contextmanager
def job_span(headers: Sequence[tuple[str, bytes]] | None, **attributes: Any) -> Iterator[None]:
    """The root span of one record's path, a child of the producer's span when the
    record's headers carry one."""
    if _tracer is None:
        yield
        return
    from opentelemetry import propagate

    carrier = {key: value.decode("latin-1") for key, value in headers or () if key in TRACE_HEADERS}
    parent = propagate.extract(carrier)
    with _tracer.start_as_current_span("bw.job", context=parent, attributes=_clean(attributes)):
        yield


def event_headers(job_headers: Sequence[tuple[str, bytes]] | None) -> Headers | None:
    """The trace headers the result event carries: the current span's context while
    tracing, else the job's own, passed on as they came."""
    if _tracer is None:
        passed = [(key, value) for key, value in job_headers or () if key in TRACE_HEADERS]
        return passed or None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(key, value.encode("latin-1")) for key, value in carrier.items()] or None


def annotate(**attributes: Any) -> None:
    """Add attributes to the current span (the job's outcome, its cost)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"bw.{key}": value for key, value in attributes.items() if value is not None}
