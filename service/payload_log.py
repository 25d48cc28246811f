"""Payload logging as KServe's logger does it: each inference request and its answer sent
to a sink (``CONVLSTM_PAYLOAD_LOG_URL``) as CloudEvents over HTTP in binary content mode.

The events are KServe's: type ``org.kubeflow.serving.inference.request`` or ``.response``,
``ce-id`` the request's id (the same for a request and its answer, and the
``X-Request-ID`` of the logs), the extension attributes ``inferenceservicename`` (the
model the path names, else the default model), ``component`` and ``endpoint``, the body
as the client sent it or as the service answered it, with its content type; and, beyond
KServe's, the standard ``subject``: the route's template (``/predict``...). As in KServe, only answers with status 200 are sent.
The ``metadata`` mode sends both events without their bodies.

Never on the request's path: the middleware hands the event to a bounded queue and
returns; one thread sends them. A full queue drops the event; a sink that fails or is
slow costs its own thread only. Both are counted (``convlstm_payload_log_events_total``
by type and outcome) and said in one warning per interval. Headers are never copied, so
API keys and bearer tokens never reach the sink, and the sink's URL is logged without
its user and password.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id

log = logging.getLogger("service.payload_log")

Mode = Literal["metadata", "request", "response", "all"]
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
COMPONENT = "predictor"
ENDPOINT = "default"
"""KServe's canary or default; this service has no canary split."""
WARN_EVERY_S = 60.0
# The routes that run a model; the others (health, metadata, repository, opening and
# closing streams) are not inference and are not logged.
INFERENCE_ROUTES = frozenset(
    {
        "/predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v1/streams/{stream_id}",
        "/v1/timeseries/forecast",
    }
)


def check_url(url: str) -> str:
    """``url`` when it is an absolute http or https URL with a host; else ``ValueError``
    saying what is wrong (the setting is refused at start-up)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError as err:
        raise ValueError(f"has an invalid port ({err})") from None
    return url.strip()


def redacted(url: str) -> str:
    """``url`` without its user and password, for the logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class Payload:
    """One event to send."""

    type: str
    id: str
    time: datetime
    model: str
    route: str
    content_type: str | None
    body: bytes | None


class PayloadLogger:
    """The queue, the sending thread and their counts."""

    def __init__(
        self,
        url: str,
        mode: Mode,
        *,
        max_queue: int,
        timeout_s: float,
        events: Counter,
        source: str | None = None,
    ) -> None:
        self.url = url
        self.mode = mode
        self.logs_requests = mode in ("request", "all", "metadata")
        self.logs_responses = mode in ("response", "all", "metadata")
        self.with_bodies = mode != "metadata"
        self.source = source or f"http://{socket.gethostname()}/"
        self.events = events
        self._queue: queue.Queue[Payload | None] = queue.Queue(maxsize=max_queue)
        self._timeout_s = timeout_s
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dropped = 0
        self._failed = 0
        self._last_error = ""
        self._last_warning = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._send_all, name="payload-log", daemon=True)
        self._thread.start()
        log.info(
            "payload log: mode %s to %s (queue of %d events)",
            self.mode,
            redacted(self.url),
            self._queue.maxsize,
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, waiting at most ``timeout_s``; the rest is dropped."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._thread = None
        self._warn(force=True)

    def offer(self, payload: Payload) -> None:
        """Queue ``payload``, or drop and count it when the queue is full: never waits."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.events.labels(payload.type, "dropped").inc()
            with self._lock:
                self._dropped += 1
            self._warn()

    def _send_all(self) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while (payload := self._queue.get()) is not None:
                try:
                    headers, body = self._message(payload)
                    answer = client.post(self.url, headers=headers, content=body)
                    answer.raise_for_status()
                except httpx.HTTPError as err:
                    self.events.labels(payload.type, "failed").inc()
                    with self._lock:
                        self._failed += 1
                        self._last_error = _describe(err)
                    self._warn()
                else:
                    self.events.labels(payload.type, "sent").inc()

    def _message(self, payload: Payload) -> tuple[dict[str, str], bytes]:
        """The event's headers and body in binary content mode."""
        attributes: dict[str, object] = {
            "type": payload.type,
            "source": self.source,
            "id": payload.id,
            "time": payload.time,
            "subject": payload.route,
            "inferenceservicename": payload.model,
            "component": COMPONENT,
            "endpoint": ENDPOINT,
        }
        if payload.body is not None and payload.content_type:
            attributes["datacontenttype"] = payload.content_type
        event = CloudEvent(attributes=attributes, data=payload.body)
        message = to_binary(event, JSONFormat())
        return message.headers, message.body

    def _warn(self, force: bool = False) -> None:
        """At most one warning per interval, with what was lost since the last one."""
        now = time.monotonic()
        with self._lock:
            if not (self._dropped or self._failed):
                return
            if not force and now - self._last_warning < WARN_EVERY_S:
                return
            dropped, failed, error = self._dropped, self._failed, self._last_error
            self._dropped = self._failed = 0
            self._last_warning = now
        log.warning(
            "payload log to %s: %d event(s) dropped (queue full), %d failed%s",
            redacted(self.url),
            dropped,
            failed,
            f" (last: {error})" if error else "",
        )


def _describe(err: httpx.HTTPError) -> str:
    if isinstance(err, httpx.HTTPStatusError):
        return f"the sink answered {err.response.status_code}"
    return f"{type(err).__name__}: {err}"[:200]


class PayloadCapture:
    """ASGI middleware, inside ``RequestObserver`` (whose request id it uses): keeps the
    body of a POST and of its answer where the mode asks for them, and once answered
    offers the events of an inference route to the logger."""

    def __init__(self, app: ASGIApp, logger: PayloadLogger, default_model: str) -> None:
        self.app = app
        self.logger = logger
        self.default_model = default_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        logger = self.logger
        arrived = datetime.now(UTC)
        request_body: list[bytes] = []
        answer_body: list[bytes] = []
        status = 0
        answer_type: str | None = None
        keep_request = logger.logs_requests and logger.with_bodies
        keep_answer = logger.logs_responses and logger.with_bodies

        async def kept_receive() -> Message:
            message = await receive()
            if keep_request and message["type"] == "http.request":
                request_body.append(message.get("body", b""))
            return message

        async def kept_send(message: Message) -> None:
            nonlocal status, answer_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        answer_type = value.decode("latin-1")
            elif keep_answer and message["type"] == "http.response.body":
                answer_body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, kept_receive, kept_send)
        route = str(getattr(scope.get("route"), "path", ""))
        if route not in INFERENCE_ROUTES:
            return
        rid = request_id.get()
        model = str(scope.get("path_params", {}).get("name") or self.default_model)
        headers = dict(scope["headers"])
        if logger.logs_requests:
            request_type = headers.get(b"content-type", b"").decode("latin-1") or None
            body = b"".join(request_body) if logger.with_bodies else None
            logger.offer(Payload(REQUEST_EVENT, rid, arrived, model, route, request_type, body))
        if logger.logs_responses and status == 200:
            body = b"".join(answer_body) if logger.with_bodies else None
            now = datetime.now(UTC)
            logger.offer(Payload(RESPONSE_EVENT, rid, now, model, route, answer_type, body))
