"""The Open Inference Protocol (KServe V2) over REST, as Triton and KServe speak it:
server and model metadata, health, and ``infer`` with JSON tensors or the binary tensor
data extension, for a model of any task: the model's task adapter checks the tensor and
shapes the answer. Errors here are ``{"error": "..."}``, as the protocol says
(``service.api.error_responses`` renders them)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from service import dataplane, tracing
from service.api.body_limit import declared_length
from service.api.deps import RegistryDep, require_api_key
from service.api.error_responses import OIP_PREFIX
from service.api.lifecycle import until_client_leaves
from service.dataplane import InferRequest
from service.errors import InvalidInput
from service.logs import request_id
from service.registry import ServedModel
from service.streams.service import StreamService

__all__ = ["InferRequest", "parse_request", "router"]

router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol"])
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(BaseModel):
    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProtocolError, "description": _WHY[code]} for code in codes}


_WHY = {
    400: "the request could not be parsed",
    401: "an API key is configured and the request did not carry it",
    403: "model control is off (CONVLSTM_MODEL_CONTROL)",
    404: "no served model (or version) has that name",
    409: "the default model cannot be unloaded",
    413: "the body is larger than the configured limit",
    422: "the request is well-formed but its tensors do not fit the model",
    503: "the queue is full, or the server is loading or shutting down",
    504: "the request was not answered within the configured deadline",
}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return dataplane.server_metadata()


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Server readiness: every model loaded, not draining",
    responses={503: {"description": "not ready", "content": {"application/json": {}}}},
)
async def ready(registry: RegistryDep) -> Response:
    if not registry.fully_ready:
        return JSONResponse(status_code=503, content={"ready": False})
    return JSONResponse({"ready": True})


@router.get(
    "/models/{name}",
    summary="Model metadata",
    dependencies=[Depends(require_api_key)],
    responses=_errors(400, 401, 404, 503),
)
async def model_metadata(name: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.metadata(registry, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata of one version",
    dependencies=[Depends(require_api_key)],
    responses=_errors(400, 401, 404, 503),
)
async def version_metadata(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.metadata(registry, name, version)


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(400, 404),
    503: {"description": "not ready", "content": {"application/json": {}}},
}


@router.get("/models/{name}/ready", summary="Model readiness", responses=_READY_RESPONSES)
async def model_ready(name: str, registry: RegistryDep) -> Response:
    ready = dataplane.model_ready(registry, name, None)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Readiness of one version",
    responses=_READY_RESPONSES,
)
async def version_ready(name: str, version: str, registry: RegistryDep) -> Response:
    ready = dataplane.model_ready(registry, name, version)
    body = {"name": name, "version": version, "ready": ready}
    return JSONResponse(body, status_code=200 if ready else 503)


_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}},
    **_errors(400, 401, 404, 413, 422, 503, 504),
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/models/{name}/infer",
    summary="Inference: JSON tensors, or JSON header + binary tensors",
    dependencies=[Depends(require_api_key)],
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request, registry: RegistryDep) -> Response:
    return await _infer(registry.lookup(name), request)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference by one version: as /models/{name}/infer",
    dependencies=[Depends(require_api_key)],
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def version_infer(
    name: str, version: str, request: Request, registry: RegistryDep
) -> Response:
    return await _infer(registry.lookup(name, version), request)


async def _infer(model: ServedModel, request: Request) -> Response:
    raw = await request.body()
    header, binary = _split(raw, request.headers.get(HEADER_LENGTH))
    req = parse_request(header)
    streams: StreamService = request.app.state.streams

    def wait(work: Awaitable[Any]) -> Awaitable[Any]:
        return until_client_leaves(request, work)

    out = await dataplane.infer(req, binary, model, streams, wait)
    with tracing.span("encode"):
        return _response(req, model, out)


def parse_request(header: bytes) -> InferRequest:
    """The JSON header as an ``InferRequest``. orjson parses it and pydantic checks
    everything but the tensors' ``data`` lists, which only numpy reads: walking tens of
    thousands of numbers through pydantic cost more than the model. JSON orjson refuses
    (NaN, integers past 64 bits, bad UTF-8, syntax errors) goes to pydantic's own parser,
    so what is accepted and every error message stay as they were."""
    try:
        body = orjson.loads(header)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        data: dict[int, list[Any]] = {}
        for i, tensor in enumerate(body["inputs"]):
            if isinstance(tensor, dict) and isinstance(tensor.get("data"), list):
                data[i] = tensor.pop("data")
        try:
            req = InferRequest.model_validate(body)
        except ValidationError:
            pass  # refused below, in JSON mode, whose messages clients have seen
        else:
            for i, values in data.items():
                req.inputs[i].data = values
            return req
    try:
        return InferRequest.model_validate_json(header)
    except ValidationError as err:
        raise dataplane.invalid_request(err) from None


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    n = declared_length(header_length)
    if n is None or n > len(raw):
        raise InvalidInput(
            f"{HEADER_LENGTH}: {header_length[:40]!r} is not a length within the {len(raw)}-byte body"
        )
    return raw[:n], raw[n:]


def _response(req: InferRequest, model: ServedModel, out: NDArray[np.float32]) -> Response:
    info = model.info
    wanted = dataplane.output_names(req, model)
    binary = bool(req.parameters.get("binary_data_output")) or any(
        o.parameters.get("binary_data") for o in wanted
    )
    output: dict[str, Any] = {
        "name": info.output_name,
        "datatype": "FP32",
        "shape": list(out.shape),
    }
    payload = np.ascontiguousarray(out, dtype="<f4")
    if binary:
        output["parameters"] = {"binary_data_size": payload.nbytes}
    else:
        output["data"] = payload.reshape(-1).tolist()
    # The protocol's answer always has an id (KServe's InferenceResponse requires one): the
    # request's, or else the request id of the X-Request-ID header and the logs.
    body: dict[str, Any] = {
        "model_name": info.name,
        "model_version": info.version,
        "id": req.id if req.id is not None else request_id.get(),
        "outputs": [output],
    }
    # orjson writes the same bytes as json.dumps with these separators, 14x faster.
    header = orjson.dumps(body)
    if not binary:
        return Response(header, media_type="application/json")
    return Response(
        header + payload.tobytes(),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
