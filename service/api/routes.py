"""The HTTP routes. Each hands over to the inference engine and shapes its answer."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import EngineDep, StateDep, require_api_key, require_json
from service.api.examples import predict_examples
from service.api.schemas import (
    ErrorResponse,
    NextFrameRequest,
    NextFrameResponse,
    PredictedTensor,
    ReadyResponse,
)
from service.errors import ClientGone
from service.inference.engine import FramesInput, TensorInput
from service.inference.session import GPU_PROVIDERS

router = APIRouter()
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "the body is not valid JSON",
        401: "an API key is configured and the request did not carry it",
        404: "no served model has that name",
        413: "the body is larger than the configured limit",
        415: "the body is not application/json",
        422: "the JSON is valid but its content is not usable; the message says where",
        503: "the queue is full, the model is not loaded yet, or the service is shutting "
        "down; Retry-After says when to try again",
        504: "the request was not answered within the configured deadline",
    }.items()
}


@router.get("/healthz", tags=["health"], summary="Liveness: 200 while the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: 200 once the model is loaded and warmed up",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorResponse, "description": "not ready"}},
)
async def readyz(state: StateDep) -> Any:
    engine = state.engine
    if not state.ready or engine is None:
        return JSONResponse(
            status_code=503,
            content={"error": {"type": "not_ready", "message": state.not_ready_reason}},
        )
    info = engine.info
    return ReadyResponse(
        model=info.name,
        model_version=info.version,
        sha256=info.sha256,
        provider=info.provider,
        requested_provider=engine.session.requested[0],
        fallback=engine.session.requested[0] in GPU_PROVIDERS
        and info.provider != engine.session.requested[0],
        input_name=info.input_name,
        input_shape=info.input_shape,
        models=list(state.engines),
    )


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    tags=["model"],
    summary="The model card: layers, parameter counts, input and output, metrics",
    responses={401: _ERRORS[401], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def model_card(engine: EngineDep) -> dict[str, Any]:
    return {**engine.info.card, "provider": engine.info.provider}


@router.get(
    "/v1/models",
    tags=["model"],
    summary="The served models: name, version, provider, input shape; the default first",
    responses={401: _ERRORS[401], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def models(state: StateDep) -> dict[str, Any]:
    state.lookup(None)  # 503 before the models are loaded
    return {
        "default": state.default_model,
        "models": [
            {
                "name": e.info.name,
                "version": e.info.version,
                "sha256": e.info.sha256,
                "provider": e.info.provider,
                "input_shape": e.info.input_shape,
            }
            for e in state.engines.values()
        ],
    }


@router.get(
    "/v1/models/{name}",
    tags=["model"],
    summary="One served model's card",
    responses={401: _ERRORS[401], 404: _ERRORS[404], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def named_model_card(name: str, state: StateDep) -> dict[str, Any]:
    engine = state.lookup(name)
    return {**engine.info.card, "provider": engine.info.provider}


@router.post(
    "/predict",
    tags=["model"],
    summary="Predict the next frame(s) of a sequence",
    response_model=NextFrameResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_api_key), Depends(require_json)],
)
async def predict(
    request: Annotated[NextFrameRequest, Body(openapi_examples=predict_examples())],
    state: StateDep,
    http: Request,
) -> NextFrameResponse:
    engine = state.lookup(request.model)
    source: FramesInput | TensorInput
    if request.frames is not None:
        source = FramesInput(request.frames)
    else:
        assert request.tensor is not None  # the schema allows exactly one
        t = request.tensor
        source = TensorInput(t.data, t.dtype, t.shape)
    result = await _unless_client_leaves(
        http, engine.predict(source, horizon=request.horizon, return_tensor=request.return_tensor)
    )
    info = engine.info
    return NextFrameResponse(
        model=info.name,
        model_version=info.version,
        provider=info.provider,
        horizon=request.horizon,
        frames=result.png_frames,
        frame_shape=result.shape[1:],
        inference_ms=round(result.inference_seconds * 1000.0, 3),
        tensor=PredictedTensor(data=result.tensor, shape=result.shape)
        if result.tensor is not None
        else None,
    )


async def _unless_client_leaves(http: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first, so that a request
    nobody waits for any more leaves the queue before it reaches the model."""
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await http.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            results.append(await work)
        except Exception as err:  # raised below, outside the group, so not wrapped in one
            errors.append(err)
        group.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:
        raise ClientGone("the client disconnected before the answer was ready")
    return results[0]
