"""``python -m service [--host H] [--port P] [--model PATH] [--provider P]``.

Flags override ``CONVLSTM_*`` environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Literal

import grpc
import uvicorn
from pydantic import ValidationError

from service import logs
from service.api.stream_socket import MAX_MESSAGE_BYTES, OpenSockets
from service.app import create_app
from service.config import Settings
from service.connection_guard import ConnectionGuard, ConnectionLimits
from service.grpc.server import start_grpc
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.streams.service import StreamService

log = logging.getLogger("service")
GRPC_STOP_GRACE_S = 2.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--model", type=Path, dest="model_path", help="ONNX model file")
    p.add_argument("--provider", choices=["auto", "cuda", "tensorrt", "cpu"])
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--log-format", choices=["text", "json"])
    return p


class DrainingServer(uvicorn.Server):
    """uvicorn and, beside it, the gRPC server (``CONVLSTM_GRPC_PORT``), with a drain
    before they stop: on the first SIGTERM or SIGINT readiness turns 503 (and gRPC health
    NOT_SERVING), new predictions are refused on both, requests in flight get up to the
    grace period to finish, then the servers stop and the process exits 0."""

    def __init__(
        self,
        config: uvicorn.Config,
        registry: ModelRegistry,
        streams: StreamService,
        sockets: OpenSockets | None = None,
    ) -> None:
        super().__init__(config)
        self.registry = registry
        self.streams = streams
        self.sockets = sockets or OpenSockets()
        self.grpc: grpc.aio.Server | None = None
        self.grpc_failed = False
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rescans: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # SIGHUP rescans the model directory (model_control explicit or poll), as a
        # config reload does for most daemons; uvicorn leaves this signal alone.
        self._loop.add_signal_handler(signal.SIGHUP, self._rescan)
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # After uvicorn's start-up, which ran the lifespan: the models are loaded, so the
        # gRPC message limit can follow them.
        await super().startup(sockets)
        if self.should_exit:
            return
        try:
            self.grpc = await start_grpc(self.registry, self.streams)
        except RuntimeError as err:
            log.error("gRPC cannot listen on port %d: %s", self.registry.settings.grpc_port, err)
            self.grpc_failed = True
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # gRPC first, before the lifespan closes the models. After a drain its calls in
        # flight have ended (they count in registry.in_flight); what is left are open
        # streams and health watches waiting for a next message, which get a short grace
        # and then a final status, rather than holding the exit for the whole period.
        if self.grpc is not None:
            await self.grpc.stop(min(GRPC_STOP_GRACE_S, self.registry.settings.shutdown_grace_s))
        await super().shutdown(sockets)

    def _rescan(self) -> None:
        log.info("SIGHUP: rescanning the model directory")
        task = asyncio.ensure_future(self.registry.rescan())
        self._rescans.add(task)
        task.add_done_callback(self._rescans.discard)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._draining = True
        log.info("signal %d: draining %d request(s) in flight", sig, self.registry.in_flight)
        self.registry.begin_drain("the service is shutting down")
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.registry.settings.shutdown_grace_s
        # Stream sockets finish the step under way, then close themselves with a final
        # status (service.api.stream_socket); uvicorn's shutdown would cut them with 1012.
        while (self.registry.in_flight > 0 or self.sockets.count > 0) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        if self.registry.in_flight:
            log.warning("grace period over with %d request(s) unfinished", self.registry.in_flight)
        # Not super().handle_exit: uvicorn would re-raise the signal after stopping and
        # the process would die of it instead of exiting 0.
        self.should_exit = True


def loop_and_parser() -> tuple[str, Literal["h11", "httptools"]]:
    """uvloop and httptools when installed (the ``serve`` extra pins them), else
    asyncio and h11: the C event loop and HTTP parser cut the server's CPU per request."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: Literal["h11", "httptools"] = (
        "httptools" if importlib.util.find_spec("httptools") else "h11"
    )
    return loop, http


def connection_guard(settings: Settings, metrics: Metrics) -> ConnectionGuard:
    """The limits uvicorn does not enforce itself (``service.connection_guard`` says
    which), counted in the app's metrics."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_idle_timeout_s=settings.body_idle_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
    )
    guard = ConnectionGuard(
        limits, on_cut=lambda reason: metrics.connections_cut.labels(reason).inc()
    )
    metrics.open_connections.set_function(lambda: guard.open_connections)
    return guard


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "settings"
            print(f"invalid setting {where}: {e['msg']}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    registry: ModelRegistry = app.state.registry
    loop, http = loop_and_parser()
    guard = connection_guard(settings, registry.metrics)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop=loop,
        http=guard.protocol_class(http),
        # uvicorn types it as int; its timer takes any number of seconds.
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        # h11 has its own header limit (the guard's counts for httptools too).
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
        ws_max_size=MAX_MESSAGE_BYTES,
    )
    server = DrainingServer(config, registry, app.state.streams, app.state.stream_sockets)
    server.run()
    return 0 if server.started and not server.grpc_failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
