"""The HTTP routes. Each hands over to the inference engine and shapes its answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import EngineDep, StateDep, require_json
from service.api.examples import predict_examples
from service.api.schemas import (
    ErrorResponse,
    NextFrameRequest,
    NextFrameResponse,
    PredictedTensor,
    ReadyResponse,
)
from service.inference.engine import FramesInput, TensorInput

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "the body is not valid JSON",
        413: "the body is larger than the configured limit",
        415: "the body is not application/json",
        422: "the JSON is valid but its content is not usable; the message says where",
        503: "the model is not loaded yet, or the service is shutting down",
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
        input_name=info.input_name,
        input_shape=info.input_shape,
    )


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    tags=["model"],
    summary="The model card: layers, parameter counts, input and output, metrics",
    responses={503: _ERRORS[503]},
)
async def model_card(engine: EngineDep) -> dict[str, Any]:
    return {**engine.info.card, "provider": engine.info.provider}


@router.post(
    "/predict",
    tags=["model"],
    summary="Predict the next frame(s) of a sequence",
    response_model=NextFrameResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_json)],
)
async def predict(
    request: Annotated[NextFrameRequest, Body(openapi_examples=predict_examples())],
    engine: EngineDep,
) -> NextFrameResponse:
    source: FramesInput | TensorInput
    if request.frames is not None:
        source = FramesInput(request.frames)
    else:
        assert request.tensor is not None  # the schema allows exactly one
        t = request.tensor
        source = TensorInput(t.data, t.dtype, t.shape)
    result = await engine.predict(
        source, horizon=request.horizon, return_tensor=request.return_tensor
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
