"""``/v1/streams/{id}/ws``: a stream over one WebSocket, for browsers, which can only
poll over plain HTTP. Each message in is one step of the stream, each message out its
answer, in order:

- in, a binary message: one frame, PNG or JPEG of the model's size (one step, horizon 1);
- in, a text message: JSON in ``POST /v1/streams/{id}``'s schema (``frames`` or
  ``tensor``, ``horizon``, ``return_tensor``);
- out, a text message: JSON in ``/predict``'s answer schema (PNG frames, the tensor when
  asked).

An error ends the connection: a last text message ``{"error": {...}}`` as the HTTP routes
write it, then a close whose code is 4000 + the HTTP status (4401, 4404, 4413, 4422, 4503,
4504...) with the message as its reason, cut to the protocol's 123 bytes. The stream
itself stays open (a step that fails leaves its state as it was), so a client may
reconnect. On SIGTERM a step under way is finished and answered, then the socket closes
with 1001 (going away) and the reason ``the service is shutting down``.

The API key comes as on every route (``Authorization: Bearer`` or ``X-API-Key``), or,
since a browser cannot set headers on a WebSocket, as the first message, ``{"api_key":
"..."}``. The work is ``StreamService``'s public operations, as for HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.admission import admit, check_api_key
from service.api.body_limit import body_limit
from service.api.frames import frame_source, next_frame_response
from service.api.schemas import NextFrameResponse
from service.api.streams import StreamStepRequest
from service.errors import InvalidInput, PayloadTooLarge, ServiceError, ShuttingDown
from service.registry import ModelRegistry
from service.streams.service import StreamService
from service.tasks.next_frame import FramesInput

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/streams")

ROUTE = "/v1/streams/{stream_id}/ws"
DRAIN_POLL_S = 0.05
"""How often an idle socket looks whether the service has begun to drain."""
AUTH_WAIT_S = 10.0
"""How long a socket that brought no key in its headers has to send it."""
CLOSE_REASON_BYTES = 123
"""The most a close frame's reason may hold (RFC 6455: 125 bytes, less the code)."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""uvicorn's WebSocket message limit (``python -m service``): past it the WebSocket library
closes with 1009 before the app sees the message; below it, the body limit in force
applies (``_check_size``)."""
GOING_AWAY = 1001
SHUTTING_DOWN = "the service is shutting down"


class OpenSockets:
    """The stream sockets open now; the drain (``python -m service``) waits for them to
    have closed themselves before the server stops."""

    def __init__(self) -> None:
        self.count = 0


def close_code(error: ServiceError) -> int:
    """A WebSocket close code for ``error``: 4000 + its HTTP status (the 4000-4999 range
    is the application's)."""
    return 4000 + error.status_code if 400 <= error.status_code < 1000 else 4500


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame holds, on a character boundary."""
    data = message.encode()
    if len(data) <= CLOSE_REASON_BYTES:
        return message
    return data[: CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def error_message(error: ServiceError) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": error.error_type, "message": error.message}
    if error.location is not None:
        detail["location"] = error.location
    return {"error": detail}


@router.websocket("/{stream_id}/ws")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    registry: ModelRegistry = websocket.app.state.registry
    streams: StreamService = websocket.app.state.streams
    sockets: OpenSockets = websocket.app.state.stream_sockets
    await websocket.accept()
    sockets.count += 1
    try:
        await _serve(websocket, stream_id, registry, streams)
    except ServiceError as err:
        await _fail(websocket, err)
    except WebSocketDisconnect:
        pass
    except Exception as err:
        # The trace goes to the log, never to the client.
        log.exception("unhandled error on %s", ROUTE)
        await _fail(websocket, ServiceError("internal error; see the server log"))
        del err
    finally:
        sockets.count -= 1


async def _serve(
    websocket: WebSocket, stream_id: str, registry: ModelRegistry, streams: StreamService
) -> None:
    if registry.draining:
        raise ShuttingDown(SHUTTING_DOWN)
    authorization, api_key = (websocket.headers.get(h, "") for h in ("authorization", "x-api-key"))
    if authorization or api_key:  # a wrong key in the handshake is refused at once
        check_api_key(registry, authorization, api_key)
    elif registry.settings.api_key is not None:
        await _key_from_first_message(websocket, registry)
    stream = await streams.get(stream_id)  # 404 now, not at the first frame
    served = registry.lookup(stream.model).info
    while True:
        message = await _next_message(websocket, registry)
        if message is None:  # draining, nothing under way: the final status
            await websocket.close(GOING_AWAY, SHUTTING_DOWN)
            return
        _check_size(message, registry)
        key = _api_key_of(message)
        if key is not None:  # a key sent although the handshake had one, or none is set
            check_api_key(registry, "", key)
            continue
        request = _step_request(message)
        admit(registry)  # as every request: refused past CONVLSTM_MAX_IN_FLIGHT
        token = registry.request_began()
        start = time.perf_counter()
        status = 500
        try:
            _, result = await streams.step(
                stream_id,
                frame_source(request.frames, request.tensor),
                horizon=request.horizon,
                return_tensor=request.return_tensor,
            )
            status = 200
        except ServiceError as err:
            status = err.status_code
            raise
        finally:
            registry.request_ended(token)
            _observe(registry, status, time.perf_counter() - start)
        answer: NextFrameResponse = next_frame_response(served, request.horizon, result)
        await websocket.send_text(answer.model_dump_json(exclude_none=True))


async def _key_from_first_message(websocket: WebSocket, registry: ModelRegistry) -> None:
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_WAIT_S)
    except TimeoutError:
        message = {}
    if message.get("type") == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    check_api_key(registry, "", _api_key_of(message) or "")


def _check_size(message: Mapping[str, Any], registry: ModelRegistry) -> None:
    """A message over the request body limit in force is refused as a body would be
    (4413, naming the limit and its setting)."""
    data = message.get("bytes")
    size = len(data) if data is not None else len((message.get("text") or "").encode())
    limit = body_limit(registry)
    if size > limit.bytes:
        raise PayloadTooLarge(limit.refusal(), location="message")


def _api_key_of(message: Mapping[str, Any]) -> str | None:
    """The key of a ``{"api_key": "..."}`` text message; None for any other message."""
    text = message.get("text")
    if not text or "api_key" not in text:
        return None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and set(body) == {"api_key"} and isinstance(body["api_key"], str):
        key: str = body["api_key"]
        return key
    return None


async def _next_message(websocket: WebSocket, registry: ModelRegistry) -> dict[str, Any] | None:
    """The client's next message, or None once the service drains (checked while no
    step is under way, so the step before is always answered)."""
    receive = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            done, _ = await asyncio.wait({receive}, timeout=DRAIN_POLL_S)
            if done:
                message: dict[str, Any] = dict(receive.result())
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                return message
            if registry.draining:
                return None
    finally:
        if not receive.done():
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receive


def _step_request(message: dict[str, Any]) -> StreamStepRequest:
    """A message as a step: a binary message is one image frame; a text message the
    JSON of ``POST /v1/streams/{id}``."""
    data = message.get("bytes")
    if data is not None:
        source = FramesInput([base64.b64encode(data).decode("ascii")])
        return StreamStepRequest(frames=source.frames)
    text = message.get("text") or ""
    try:
        return StreamStepRequest.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidInput(f"{where}: {first['msg']}", location=where) from None


def _observe(registry: ModelRegistry, status: int, seconds: float) -> None:
    metrics = registry.metrics
    metrics.requests.labels(ROUTE, "WS", str(status)).inc()
    metrics.request_seconds.labels(ROUTE, "WS").observe(seconds)


async def _fail(websocket: WebSocket, err: ServiceError) -> None:
    """The error as the last message and the close code, unless the client has gone."""
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_text(orjson.dumps(error_message(err)).decode())
        await websocket.close(close_code(err), close_reason(err.message))
