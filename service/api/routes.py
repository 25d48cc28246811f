"""The native HTTP routes: health, metrics, model cards, and ``/predict``. Each finds
its model in the registry, hands over to the model's task adapter and runner, and shapes
the answer."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.body_limit import body_limit
from service.api.deps import DefaultModelDep, RegistryDep, require_api_key, require_json
from service.api.error_responses import error_response
from service.api.examples import predict_examples
from service.api.frames import frame_source, next_frame_response
from service.api.lifecycle import until_client_leaves
from service.api.schemas import (
    ErrorResponse,
    FailedModelSummary,
    ModelSummary,
    NextFrameRequest,
    NextFrameResponse,
    PredictSpec,
    ReadyResponse,
    RetainedStreamVersion,
)
from service.errors import InvalidInput
from service.registry import ModelRegistry, ServedModel
from service.streams.service import StreamService
from service.tasks import NextFrameTask

router = APIRouter()

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
async def readyz(registry: RegistryDep, http: Request) -> Any:
    model = registry.default
    if not registry.fully_ready or model is None:
        return error_response(http.url.path, 503, "not_ready", registry.readiness_problem)
    streams: StreamService = http.app.state.streams
    store_problem = await streams.keeper.readiness_problem()
    if store_problem is not None:
        return error_response(http.url.path, 503, "not_ready", store_problem)
    info, runner = model.info, model.runner
    limit = body_limit(registry)
    return ReadyResponse(
        model=info.name,
        model_version=info.version,
        sha256=info.sha256,
        provider=info.provider,
        requested_provider=runner.session.requested[0],
        fallback=runner.fallback,
        fallback_reason=runner.session.fallback_reason,
        input_name=info.input_name,
        input_shape=info.input_shape,
        models=list(registry.models),
        served=[model_summary(m) for m in registry.models.values()],
        failed=_failed(registry),
        max_body_bytes=limit.bytes,
        max_body_bytes_source=limit.source,
        stream_store=streams.keeper.kind,
        stream_durability=streams.keeper.durability,
        streams_retained=[
            RetainedStreamVersion(
                model=m.name,
                model_version=m.version,
                sha256=m.sha256,
                open_streams=len(streams.versions.streams_of(m.key)),
            )
            for m in streams.versions.retained.values()
        ],
    )


def model_summary(model: ServedModel) -> ModelSummary:
    """A served model's shapes, task and output kind, and what ``/predict`` does with it."""
    info, task = model.info, model.task
    return ModelSummary(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        provider=info.provider,
        task=info.card.task,
        output_kind=info.card.output_kind,
        input_name=info.input_name,
        input_shape=info.input_shape,
        output_name=info.output_name,
        output_shape=info.output_shape,
        batch_buckets=list(model.runner.session.buckets),
        predict=PredictSpec.model_validate(task.describe())
        if isinstance(task, NextFrameTask)
        else None,
    )


def _failed(registry: ModelRegistry) -> list[FailedModelSummary]:
    return [FailedModelSummary(**asdict(f)) for f in registry.failed.values()]


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(registry: RegistryDep) -> Response:
    return Response(generate_latest(registry.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    tags=["model"],
    summary="The model card: layers, parameter counts, input and output, metrics",
    responses={401: _ERRORS[401], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def model_card(model: DefaultModelDep) -> dict[str, Any]:
    return _card(model)


@router.get(
    "/v1/models",
    tags=["model"],
    summary="The served models (name, version, provider, shapes, task, output kind; the "
    "default first) and those that failed to load",
    responses={401: _ERRORS[401], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def models(registry: RegistryDep) -> dict[str, Any]:
    registry.lookup(None)  # 503 before the models are loaded
    return {
        "default": registry.default_name,
        "models": [model_summary(m).model_dump() for m in registry.models.values()],
        "failed": [f.model_dump() for f in _failed(registry)],
    }


@router.get(
    "/v1/models/{name}",
    tags=["model"],
    summary="One served model's card",
    responses={401: _ERRORS[401], 404: _ERRORS[404], 503: _ERRORS[503]},
    dependencies=[Depends(require_api_key)],
)
async def named_model_card(name: str, registry: RegistryDep) -> dict[str, Any]:
    return _card(registry.lookup(name))


def _card(model: ServedModel) -> dict[str, Any]:
    return {
        **model.info.card.to_json(),
        "provider": model.info.provider,
        "served": model_summary(model).model_dump(),
    }


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
    registry: RegistryDep,
    http: Request,
) -> NextFrameResponse:
    model = registry.lookup(request.model, request.model_version)
    task = model.task
    if not isinstance(task, NextFrameTask):
        card = model.info.card
        raise InvalidInput(
            f"model: {model.info.name!r} is a {task.task} model (task {card.task}, output "
            f"kind {card.output_kind}, output shape {model.info.output_shape}): its answer "
            f"is no frame, and /predict answers frames; use POST "
            f"/v2/models/{model.info.name}/infer",
            location="model",
        )
    source = frame_source(request.frames, request.tensor)
    streams: StreamService = http.app.state.streams
    if streams.rolls_out_from_state(model.info.name, request.horizon, request.rollout):
        work = streams.predict(
            model.info.name, source, horizon=request.horizon, return_tensor=request.return_tensor
        )
    else:
        work = task.predict(
            model.runner, source, horizon=request.horizon, return_tensor=request.return_tensor
        )
    result = await until_client_leaves(http, work)
    return next_frame_response(model.info, request.horizon, result)
