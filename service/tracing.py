"""OpenTelemetry tracing: the process's tracer provider, set up from the standard ``OTEL_*``
variables, and the spans the service makes itself.

Off unless ``CONVLSTM_TRACING`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_``
form) says so. Off, nothing here is installed: no middleware, no interceptor, and the
module-level tracer hands out non-recording spans, which the hot paths do not even ask
for (``request_span_context`` is invalid outside a traced request, and the scheduler then
makes no span). On, the SDK reads everything else itself: the exporter's endpoint,
headers, timeout and compression (``OTEL_EXPORTER_OTLP_*``), the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the batch processor's queue
(``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and
the propagators (``OTEL_PROPAGATORS``, W3C trace context and baggage by default).

The provider is the process's global one (``trace.set_tracer_provider``), as the OTel API
expects of an application: the ASGI and gRPC instrumentations and this module's tracer
all find it there. It can be set once per process; a second app in the same process
(tests) shares it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    Status,
    StatusCode,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("service.tracing")

SERVICE_NAME = "convlstm-serve"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
EXPORTERS = ("otlp", "console", "none")
# Polled by monitoring; a span each would drown the traces (the request metrics leave
# them out for the same reason). Regular expressions, as the ASGI instrumentation takes.
EXCLUDED_URLS = r"/healthz$,/readyz$,/metrics$,/v2/health/live$,/v2/health/ready$,/web/"

tracer = trace.get_tracer("service")
"""The service's own spans (decode, queue wait, model run, encode, stream state)."""

_provider: TracerProvider | None = None


def wanted(explicit: bool | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on: ``CONVLSTM_TRACING`` when set, else whether an OTLP
    endpoint is; never when ``OTEL_SDK_DISABLED`` is true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if explicit is not None:
        return explicit
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """``ValueError`` naming the variable when the exporter asked for is not one this
    service ships (OTLP over HTTP with protobuf, the console, or none)."""
    for name in PROTOCOL_VARIABLES:
        value = environ.get(name, "").strip()
        if value and value != "http/protobuf":
            raise ValueError(
                f"{name}={value!r}: this service exports traces over OTLP/HTTP with "
                "protobuf only; set it to 'http/protobuf' or leave it unset"
            )
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() or "otlp"
    if exporter not in EXPORTERS:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={exporter!r}: one of {', '.join(EXPORTERS)} is supported"
        )


def configure() -> TracerProvider:
    """The process's tracer provider, made and registered on the first call."""
    global _provider
    if _provider is not None:
        return _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from service import __version__

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # No sampler passed: the provider reads OTEL_TRACES_SAMPLER and its argument.
    provider = TracerProvider(resource=resource)
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() or "otlp"
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The batch processor's bounded queue (OTEL_BSP_MAX_QUEUE_SIZE) is what keeps an
        # unreachable collector off the request path: spans past it are dropped.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info(
        "tracing on: exporter %s, sampler %s",
        exporter,
        provider.sampler.get_description(),
    )
    return provider


def flush(timeout_s: float = 5.0) -> None:
    """Export what is queued (at shutdown), waiting at most ``timeout_s``."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def request_span_context() -> SpanContext:
    """The span context of the request being handled; invalid outside a traced one."""
    return trace.get_current_span().get_span_context()


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current one, for a step of a request (``decode``,
    ``encode``, ``stream.state.load``...); nothing is recorded outside a traced request."""
    if _provider is None:  # tracing off: not even a non-recording span
        yield INVALID_SPAN
        return
    with tracer.start_as_current_span(name, attributes=attributes or None) as current:
        yield current


def _under(parent: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(parent))


class BatchTrace:
    """The spans of one batch the scheduler runs: per traced request a ``queue wait``
    span (from its submission to the batch's start) and an ``inference`` span (the run it
    was part of), both its children; and one ``model run`` span for the batch, linked to
    every traced request in it, which links back to it from its ``inference`` span.

    The run span belongs to the trace of the batch's first sampled request, so that it is
    recorded whenever any request it served is; a batch of unsampled requests gives it a
    root of its own, sampled by the sampler's own rule."""

    def __init__(
        self, requests: list[SpanContext], waits_s: list[float], attributes: dict[str, Any]
    ) -> None:
        now = time.time_ns()
        traced = [(c, w) for c, w in zip(requests, waits_s, strict=True) if c.is_valid]
        for request, wait in traced:
            tracer.start_span(
                "queue wait",
                _under(request),
                attributes=attributes,
                start_time=now - int(wait * 1e9),
            ).end(end_time=now)
        first = next((c for c, _ in traced if c.trace_flags.sampled), None)
        self.run = tracer.start_span(
            "model run",
            _under(first) if first is not None else Context(),
            attributes={**attributes, "convlstm.batch_size": len(requests)},
            links=[Link(c) for c, _ in traced],
            start_time=now,
        )
        run_link = [Link(self.run.get_span_context())]
        self.inferences = [
            tracer.start_span(
                "inference",
                _under(request),
                attributes={**attributes, "convlstm.batch_size": len(requests)},
                links=run_link,
                start_time=now,
            )
            for request, _ in traced
        ]

    def end(self, error: BaseException | None = None) -> None:
        for one in (self.run, *self.inferences):
            if error is not None:
                one.record_exception(error)
                one.set_status(Status(StatusCode.ERROR, type(error).__name__))
            one.end()


def trace_batch(
    requests: list[SpanContext], waits_s: list[float], attributes: dict[str, Any]
) -> BatchTrace | None:
    """The spans of a batch (``BatchTrace``), or None when no request in it is traced."""
    if _provider is None or not any(c.is_valid for c in requests):
        return None
    return BatchTrace(requests, waits_s, attributes)
