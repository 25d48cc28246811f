"""A minimal OTLP/HTTP trace receiver on loopback, for the tracing tests and the tracing
bench: it accepts ``POST /v1/traces`` (protobuf, plain or gzip), decodes each
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` (the OTLP messages as the
OpenTelemetry project ships them) and keeps the spans, or only counts them.

Not a collector: no retries asked for, no partial success, every export answered 200.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from bench.loopback import loopback_server


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    """(trace id, span id) of each link, hex."""
    start_ns: int
    end_ns: int
    service_name: str


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


@dataclass
class OtlpReceiver:
    keep: bool = True
    """False: count the spans and keep none (the bench's long runs)."""
    spans: list[ReceivedSpan] = field(default_factory=list)
    count: int = 0
    exports: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=[
                                (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ],
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            service_name=service,
                        )
                    )
        with self.lock:
            self.exports += 1
            self.count += len(received)
            if self.keep:
                self.spans.extend(received)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans received once ``predicate(spans)`` holds; ``TimeoutError`` if it
        does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(spans)} spans received; the condition never held")
            time.sleep(0.02)


@contextmanager
def otlp_receiver(keep: bool = True) -> Iterator[OtlpReceiver]:
    """A receiver on a free loopback port (``receiver.url`` is the OTLP endpoint to
    give ``OTEL_EXPORTER_OTLP_ENDPOINT``), stopped on exit."""
    receiver = OtlpReceiver(keep=keep)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            receiver.receive(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    with loopback_server(Handler) as server:
        receiver.url = f"http://127.0.0.1:{server.server_port}"
        yield receiver
