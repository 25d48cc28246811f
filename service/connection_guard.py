"""Timeouts and a connection cap in the HTTP server itself, for a server with no proxy in
front (``make run``, the container as documented).

What uvicorn 0.54 does and does not bound, with either parser (h11 or httptools):

- keep-alive idle: yes, ``timeout_keep_alive``, but only once a response has been sent;
  a connection that never completes a request has no timer at all;
- header read time, body read time (idle between chunks, total), writing to a client
  that stopped reading: no. A client that sends its headers and one byte of a large body
  holds its socket, its request task and its buffered body for ever;
- open connections: no. ``limit_concurrency`` answers 503 to *requests* once
  connections or tasks pass the limit, but keeps every connection open, so idle
  sockets still exhaust file descriptors;
- header size: h11 only (``h11_max_incomplete_event_size``, 16 kB); httptools (llhttp)
  takes headers of any length.

So the server's HTTP protocol is subclassed (``ConnectionGuard.protocol_class``): each
connection records when the current request began, when its headers completed and
when bytes last arrived; one sweep every fraction of the shortest timeout cuts the
connections past a limit, with 408 where no response has begun (431 for headers too
large, 503 for a connection over the cap), a log line and a count by reason. An ASGI
middleware could not do this: the app sees a request only once its headers are
complete, and never sees a connection that sends none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    # Both uvicorn protocols have the attributes the mixin reads (cycle, flow, transport,
    # connections, client, loop); type-check it against one of them. Imported only here:
    # httptools is optional, and its module imports it.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
else:
    _Protocol = object


@dataclass(frozen=True)
class ConnectionLimits:
    """Each a ``CONVLSTM_*`` setting (``service.config.Settings`` documents them)."""

    header_timeout_s: float
    body_idle_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int
    max_header_bytes: int

    @property
    def sweep_interval_s(self) -> float:
        """How often the connections are checked: a quarter of the shortest timeout, so a
        cut comes at most 25% late, within 50 ms and 1 s."""
        shortest = min(
            self.header_timeout_s,
            self.body_idle_timeout_s,
            self.body_timeout_s,
            self.send_timeout_s,
        )
        return min(1.0, max(0.05, shortest / 4))


_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


def _raw_response(status: int, message: str) -> bytes:
    # The native error shape; written to the socket directly, as no app answers here.
    body = json.dumps({"error": {"type": _TYPES[status], "message": message}}).encode()
    return b"".join(
        [
            _STATUS_LINES[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
            *([b"retry-after: 1\r\n"] if status == 503 else []),
            b"\r\n",
            body,
        ]
    )


_TYPES = {408: "request_timeout", 431: "headers_too_large", 503: "too_many_connections"}


class ConnectionGuard:
    """The limits, the guarded connections, and the sweep that cuts them."""

    def __init__(
        self, limits: ConnectionLimits, on_cut: Callable[[str], None] = lambda reason: None
    ) -> None:
        self.limits = limits
        self.on_cut = on_cut
        self.connections: set[_GuardedProtocol] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def protocol_class(self, http: Literal["h11", "httptools"]) -> type[asyncio.Protocol]:
        """uvicorn's HTTP/1.1 protocol on ``http``'s parser, with this guard's limits."""
        base: type[asyncio.Protocol]
        if http == "httptools":
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            base = HttpToolsProtocol
        else:
            from uvicorn.protocols.http.h11_impl import H11Protocol

            base = H11Protocol
        return type(f"Guarded{base.__name__}", (_GuardedProtocol, base), {"guard": self})

    def added(self, connection: _GuardedProtocol) -> None:
        self.connections.add(connection)
        if self._sweeping is None:
            self._schedule(connection.loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = loop.call_later(self.limits.sweep_interval_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            connection.check(now)
        if self.connections:
            self._schedule(loop)
        else:
            self._sweeping = None  # the next connection starts it again

    def cut(self, connection: _GuardedProtocol, reason: str, why: str) -> None:
        peer = connection.client
        client = f"{peer[0]}:{peer[1]}" if peer else "a client"
        log.info("cut the connection from %s: %s", client, why)
        self.on_cut(reason)


class _GuardedProtocol(_Protocol):
    """The per-connection bookkeeping and checks, mixed into either uvicorn protocol."""

    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        now = time.monotonic()
        # True from the connection's start and after each response until the next
        # request's headers are complete; the header timeout then runs from the first
        # byte (from the connection's start for its first request: a client that
        # connects and sends nothing is cut too; between requests, the keep-alive timeout
        # is uvicorn's own).
        self._awaiting_headers = True
        self._first_request = True
        self._request_began: float | None = now
        self._header_bytes = 0
        self._headers_done = now
        self._last_read = now
        self._write_paused_since: float | None = None
        self._cut = False
        limits = self.guard.limits
        if len(self.connections) > limits.max_connections:
            self._refuse(
                503,
                "too_many_connections",
                f"{limits.max_connections} connections open (CONVLSTM_MAX_CONNECTIONS)",
            )
            return
        self.guard.added(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._last_read = now
        if self._awaiting_headers and self._request_began is None:
            self._request_began = now
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:
            self._awaiting_headers = False
            self._first_request = False
            self._headers_done = now
            self._header_bytes = 0
        elif self._awaiting_headers and not self._cut:
            self._header_bytes += len(data)
            limit = self.guard.limits.max_header_bytes
            if self._header_bytes > limit:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"request headers over {limit} bytes (CONVLSTM_MAX_HEADER_BYTES)",
                )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request, parsed while the last one ran, starts now.
            self._headers_done = self._last_read = time.monotonic()
            return
        self._awaiting_headers = True
        self._request_began = None

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused_since = time.monotonic()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused_since = None

    def check(self, now: float) -> None:
        """Cut this connection if it is past a limit at ``now``."""
        if self._cut or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            # Upgraded (a WebSocket): the connection is another protocol's from now on.
            self.guard.connections.discard(self)
            return
        limits = self.guard.limits
        if self._awaiting_headers:
            began = self._request_began
            if began is not None and now - began > limits.header_timeout_s:
                self._refuse(
                    408,
                    "header_timeout",
                    f"headers not complete within {limits.header_timeout_s:g} s "
                    "(CONVLSTM_HEADER_TIMEOUT_S)",
                )
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            if self.flow.read_paused:
                # The server, not the client, holds the body back (its buffer is full
                # until the app reads): not the client's idle time.
                self._last_read = now
            if now - self._last_read > limits.body_idle_timeout_s:
                self._refuse(
                    408,
                    "body_idle_timeout",
                    f"no body bytes for {limits.body_idle_timeout_s:g} s "
                    "(CONVLSTM_BODY_IDLE_TIMEOUT_S)",
                )
            elif now - self._headers_done > limits.body_timeout_s:
                self._refuse(
                    408,
                    "body_timeout",
                    f"body not complete within {limits.body_timeout_s:g} s "
                    "(CONVLSTM_BODY_TIMEOUT_S)",
                )
            return
        paused = self._write_paused_since
        if paused is not None and now - paused > limits.send_timeout_s:
            self._refuse(
                None,
                "send_timeout",
                f"the client read nothing of the answer for {limits.send_timeout_s:g} s "
                "(CONVLSTM_SEND_TIMEOUT_S)",
            )

    def _refuse(self, status: int | None, reason: str, why: str) -> None:
        """Answer ``status`` if no response has begun on this connection, then close it.
        The request's task, if any, sees the client gone (``http.disconnect``)."""
        self._cut = True
        cycle = self.cycle
        if status is not None and (cycle is None or not cycle.response_started):
            if cycle is not None:
                # The app's own answer, if it ever comes, must not follow ours.
                cycle.response_started = True
            self.transport.write(_raw_response(status, why))
        self.transport.close()
        self.guard.cut(self, reason, why)
