"""Pure ASGI middleware: request size limit and request metrics.

Written against ASGI directly rather than Starlette's ``BaseHTTPMiddleware``, which
would buffer the body and wrap every response in an extra task.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import admit
from service.api.body_limit import BodyLimit, body_limit, declared_length
from service.api.error_responses import send_error
from service.errors import ServiceError
from service.logs import request_id
from service.registry import ModelRegistry

access_log = logging.getLogger("service.access")
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

# Monitoring polls these; counting them would drown the request metrics. They also answer
# while draining: liveness stays true (a draining pod must not be restarted) and the
# readiness routes say "not ready" themselves.
UNOBSERVED_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
# The demo page's static files: a page load fetches dozens.
UNOBSERVED_PREFIX = "/web/"


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reader lets it through unchanged."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(413, limit.refusal())


class BodySizeLimit:
    """Refuse bodies over the limit in force (``body_limit``): at once when
    Content-Length says so, else as soon as the streamed body passes the limit, so a
    large body is never read whole."""

    def __init__(self, app: ASGIApp, registry: ModelRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read per request: a model loaded or unloaded while serving moves the limit.
        limit = body_limit(self.registry)
        declared = dict(scope["headers"]).get(b"content-length")
        length = None if declared is None else declared_length(declared)
        if declared is not None and (length is None or length > limit.bytes):
            await send_error(send, scope["path"], 413, "payload_too_large", limit.refusal())
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class RequestObserver:
    """Gives every request an id (the client's ``X-Request-ID`` when it is sane), sends
    it back, and for non-health routes counts, times and logs the request."""

    def __init__(self, app: ASGIApp, registry: ModelRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _name_server_span(scope)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        path = scope["path"]
        observed = path not in UNOBSERVED_PATHS and not path.startswith(UNOBSERVED_PREFIX)
        if observed:
            try:
                admit(self.registry)
            except ServiceError as refused:
                await send_error(
                    tagged_send,
                    path,
                    refused.status_code,
                    refused.error_type,
                    refused.message,
                    retry_after=True,
                )
                request_id.reset(token)
                return
        metrics = self.registry.metrics
        start = time.perf_counter()
        epoch = 0
        if observed:
            metrics.in_flight.inc()
            epoch = self.registry.request_began()
        try:
            await self.app(scope, receive, tagged_send)
        finally:
            if observed:
                elapsed = time.perf_counter() - start
                metrics.in_flight.dec()
                self.registry.request_ended(epoch)
                route, method = _route_template(scope), scope["method"]
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.request_seconds.labels(route, method).observe(elapsed)
                if self.registry.settings.access_log:
                    access_log.info(
                        "%s %s %d %.1f ms", method, scope["path"], status, elapsed * 1000.0
                    )
            request_id.reset(token)


def _name_server_span(scope: Scope) -> None:
    # The ASGI instrumentation names its span before routing, by the raw path, and ends
    # it with the response's last body message; so here, at the response's start, is
    # where the route's template (the name OTel asks for) is known and can still be set.
    span = trace.get_current_span()
    if span.is_recording():
        route = _route_template(scope)
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)


def _route_template(scope: Scope) -> str:
    # The router leaves the matched route in the scope; its template (not the raw
    # path) keeps label values few.
    return str(getattr(scope.get("route"), "path", "unmatched"))
