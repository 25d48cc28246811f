"""``/v1/streams``: a ConvLSTM's state kept on the server between requests.

``POST /v1/streams`` opens a stream of a model; ``POST /v1/streams/{id}`` feeds it one or
more frames in ``/predict``'s forms and answers as ``/predict`` does, with the frame(s)
that follow everything the stream has seen; ``GET`` describes it; ``DELETE`` closes it.
HTTP only: ``service.streams.StreamService`` does the work.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.deps import require_api_key, require_json
from service.api.frames import frame_source, next_frame_response
from service.api.lifecycle import until_client_leaves
from service.api.schemas import ErrorResponse, NextFrameResponse, TensorData
from service.streams.service import StreamService
from service.streams.table import Stream

router = APIRouter(prefix="/v1/streams", tags=["streams"])


def get_streams(request: Request) -> StreamService:
    streams: StreamService = request.app.state.streams
    return streams


StreamsDep = Annotated[StreamService, Depends(get_streams)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "an API key is configured and the request did not carry it",
        404: "no such model, or no such stream (never opened, closed, expired, or opened "
        "before a restart without a stream store): the message says which",
        409: "the stream is being stepped by another request or replica (stream_busy), "
        "its lease ran out before its state was kept (stream_lease_lost: send the frames "
        "again), or its stored state is corrupt or of another model (corrupt_stream_state: "
        "the stream is closed)",
        410: "the stream's model version is no longer served, or it reached "
        "CONVLSTM_MAX_STREAM_DURATION_S: open a new one",
        415: "the body is not application/json",
        422: "the content is not usable (the model serves no streams, frames of the wrong "
        "size, a horizon out of range); the message says where",
        503: "every stream slot is taken, the step queue is full, the stream store does "
        "not answer, or the service is not ready or shutting down; Retry-After says when "
        "to try again",
        504: "the request was not answered within the configured deadline",
    }.items()
}


class OpenStreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    model: str | None = Field(
        default=None, max_length=128, description="the model; the default model when left out"
    )


class StreamStepRequest(BaseModel):
    """Exactly one of ``frames`` and ``tensor``, of any number k >= 1 of frames."""

    model_config = ConfigDict(extra="forbid", strict=True)

    frames: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="the stream's next frames, oldest first, as /predict takes them (base64 "
        "PNG or JPEG of the model's size); one or more",
    )
    tensor: TensorData | None = Field(
        default=None, description="the next frames as one raw array, shape [k, H, W, C]"
    )
    horizon: int = Field(
        default=1, description="frames to predict after the given ones, each fed back in"
    )
    return_tensor: bool = Field(default=False, description="also return the float32 frames")

    @model_validator(mode="after")
    def _one_input(self) -> StreamStepRequest:
        if (self.frames is None) == (self.tensor is None):
            raise ValueError("give exactly one of 'frames' and 'tensor'")
        return self


class StreamAccuracy(BaseModel):
    scored: int = Field(description="predictions scored so far")
    mse: float | None = Field(description="their mean squared error; null before the first")
    copy_last_mse: float | None = Field(
        description="the same frames' mean squared error had the stream copied its last frame"
    )
    ratio: float | None = Field(
        description="mse / copy_last_mse: under 1 while the model beats copying the last frame"
    )


class StreamInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    stream_id: str
    model: str
    model_version: str
    frames_seen: int = Field(description="frames fed to the stream so far")
    steps: int = Field(description="step-graph steps taken for it (frames and predictions)")
    created: datetime
    last_used: datetime
    idle_timeout_s: float = Field(description="the stream is dropped after this long unused")
    expires_in_s: float = Field(description="seconds left before it expires if left unused")
    state_bytes: int = Field(description="bytes of ConvLSTM state the server holds for it")
    frame_shape: list[int] = Field(description="[height, width, channels] of each frame")
    accuracy: StreamAccuracy = Field(
        description="live accuracy: each request's first frame scores the next frame the "
        "stream predicted the request before"
    )


def describe(streams: StreamService, stream: Stream) -> StreamInfo:
    model = streams.model_of(stream)
    idle = time.monotonic() - stream.last_used
    acc = stream.accuracy
    return StreamInfo(
        stream_id=stream.id,
        model=stream.model,
        model_version=stream.model_version or model.version,
        frames_seen=stream.frames_seen,
        steps=stream.steps,
        created=datetime.fromtimestamp(stream.created, UTC),
        last_used=datetime.fromtimestamp(stream.last_used_wall, UTC),
        idle_timeout_s=streams.table.idle_s,
        expires_in_s=round(max(0.0, streams.table.idle_s - idle), 3),
        state_bytes=stream.state_bytes,
        frame_shape=list(model.task.spec.shape[1:]),
        accuracy=StreamAccuracy(
            scored=acc.scored,
            mse=acc.mse_sum / acc.scored if acc.scored else None,
            copy_last_mse=acc.copy_last_mse_sum / acc.scored if acc.scored else None,
            ratio=acc.ratio,
        ),
    )


@router.post(
    "",
    status_code=201,
    summary="Open a stream: the model's state, kept on the server",
    response_model=StreamInfo,
    responses={k: v for k, v in _ERRORS.items() if k not in (409, 410, 504)},
    dependencies=[Depends(require_api_key)],
)
async def open_stream(
    streams: StreamsDep, request: Annotated[OpenStreamRequest | None, Body()] = None
) -> StreamInfo:
    stream = await streams.open(request.model if request is not None else None)
    return describe(streams, stream)


@router.post(
    "/{stream_id}",
    summary="Feed a stream its next frame(s); the frame(s) that follow, as /predict answers",
    response_model=NextFrameResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_api_key), Depends(require_json)],
)
async def step_stream(
    stream_id: str, request: StreamStepRequest, streams: StreamsDep, http: Request
) -> NextFrameResponse:
    source = frame_source(request.frames, request.tensor)
    stream, result = await until_client_leaves(
        http,
        streams.step(
            stream_id, source, horizon=request.horizon, return_tensor=request.return_tensor
        ),
    )
    served = streams.registry.lookup(stream.model).info
    return next_frame_response(served, request.horizon, result)


@router.get(
    "/{stream_id}",
    summary="A stream: its model, frames seen, last use",
    response_model=StreamInfo,
    responses={k: _ERRORS[k] for k in (401, 404, 409, 410, 503)},
    dependencies=[Depends(require_api_key)],
)
async def get_stream(stream_id: str, streams: StreamsDep) -> StreamInfo:
    return describe(streams, await streams.get(stream_id, fresh=True))


@router.delete(
    "/{stream_id}",
    status_code=204,
    summary="Close a stream and free its state",
    response_class=Response,
    responses={k: _ERRORS[k] for k in (401, 404, 409, 410, 503)},
    dependencies=[Depends(require_api_key)],
)
async def close_stream(stream_id: str, streams: StreamsDep) -> Response:
    await streams.close_stream(stream_id)
    return Response(status_code=204)
