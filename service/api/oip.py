"""The Open Inference Protocol (KServe V2) over REST, as Triton and KServe speak it:
server and model metadata, health, and ``infer`` with JSON tensors or the binary tensor
data extension, for a model of any task: the model's task adapter checks the tensor and
shapes the answer. Errors here are ``{"error": "..."}``, as the protocol says
(``service.api.error_responses`` renders them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import __version__
from service.api.body_limit import declared_length
from service.api.deps import RegistryDep, require_api_key
from service.api.error_responses import OIP_PREFIX
from service.api.lifecycle import until_client_leaves
from service.api.oip_sequence import check_sequence_shape, sequence_id, sequence_stream
from service.errors import InvalidInput
from service.inference.codec import array_from_bytes
from service.logs import request_id
from service.model_repository import version_order
from service.registry import ModelRegistry, ServedModel
from service.streams.service import StreamService

router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol"])
HEADER_LENGTH = "inference-header-content-length"
SERVER_NAME = "convlstm-serve"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
# Datatypes a client may send: FP32 values in [0, 1], or UINT8 pixels scaled by 1/255.
INPUT_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


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
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


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
    return _metadata(registry, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata of one version",
    dependencies=[Depends(require_api_key)],
    responses=_errors(400, 401, 404, 503),
)
async def version_metadata(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return _metadata(registry, name, version)


def _metadata(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    info = registry.lookup(name, version).info
    served = registry.versions.get(info.name, {})
    return {
        "name": info.name,
        # Every version served, the one a request naming none gets first.
        "versions": [
            info.version,
            *sorted((v for v in served if v != info.version), key=version_order),
        ],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": info.input_name, "datatype": "FP32", "shape": _dims(info.input_shape)}],
        "outputs": [
            {"name": info.output_name, "datatype": "FP32", "shape": _dims(info.output_shape)}
        ],
        # What the card says the model does; OIP clients ignore keys they do not know.
        "parameters": {"task": info.card.task, "output_kind": info.card.output_kind},
    }


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(400, 404),
    503: {"description": "not ready", "content": {"application/json": {}}},
}


@router.get("/models/{name}/ready", summary="Model readiness", responses=_READY_RESPONSES)
async def model_ready(name: str, registry: RegistryDep) -> Response:
    if name in registry.failed:
        return JSONResponse(status_code=503, content={"name": name, "ready": False})
    if name not in registry.models:
        raise registry.unknown(name)
    if not registry.ready:
        return JSONResponse(status_code=503, content={"name": name, "ready": False})
    return JSONResponse({"name": name, "ready": True})


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Readiness of one version",
    responses=_READY_RESPONSES,
)
async def version_ready(name: str, version: str, registry: RegistryDep) -> Response:
    state = registry.version_state(name, version)
    if state is None:
        if name not in registry.models and name not in registry.failed:
            raise registry.unknown(name)
        registry.lookup(name, version)  # 404 naming the versions served
    ready = state == "READY" and registry.ready
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
    horizon = req.parameters.get("horizon", 1)
    if not isinstance(horizon, int) or isinstance(horizon, bool):
        raise InvalidInput(f"parameters.horizon: must be an integer, got {horizon!r}")
    seq = sequence_id(req.parameters)
    if seq is not None:
        return await _sequence_infer(req, binary, model, seq, horizon, request)
    batch = _input_batch(req, binary, model)
    steps = model.task.steps(horizon)
    predicted, _ = await until_client_leaves(request, model.runner.run(batch, steps))
    return _response(req, model, model.task.batch_output(predicted, steps))


async def _sequence_infer(
    req: InferRequest,
    binary: bytes,
    model: ServedModel,
    seq: int | str,
    horizon: int,
    request: Request,
) -> Response:
    streams: StreamService = request.app.state.streams
    stream_model = streams.model(model.info.name)
    stream_model.task.steps(horizon)
    frame = stream_model.task.spec.shape[1:]
    frames = _input_batch(
        req, binary, model, check=lambda shape, where: check_sequence_shape(shape, frame)
    )[0]
    stream, end = sequence_stream(streams, model.info.name, seq, req.parameters)
    predicted, _ = await until_client_leaves(request, streams.step_arrays(stream, frames, horizon))
    if end and streams.table.streams.get(stream.id) is stream:
        streams.close_stream(stream.id)
    return _response(req, model, predicted[None, 0] if horizon == 1 else predicted[None])


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
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}", location=where) from None


def _dims(shape: list[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    n = declared_length(header_length)
    if n is None or n > len(raw):
        raise InvalidInput(
            f"{HEADER_LENGTH}: {header_length[:40]!r} is not a length within the {len(raw)}-byte body"
        )
    return raw[:n], raw[n:]


def _input_batch(
    req: InferRequest,
    binary: bytes,
    model: ServedModel,
    check: Callable[[list[int], str], None] | None = None,
) -> NDArray[np.float32]:
    info = model.info
    if len(req.inputs) != 1 or req.inputs[0].name != info.input_name:
        got = [i.name for i in req.inputs]
        raise InvalidInput(
            f"inputs: the model takes one input named {info.input_name!r}, got {got}"
        )
    tensor = req.inputs[0]
    dtype = INPUT_DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"inputs[0].datatype: {tensor.datatype!r} is not one of {sorted(INPUT_DATATYPES)}"
        )
    (check or model.task.check_batch_shape)(tensor.shape, "inputs[0].shape")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        where = "inputs[0].parameters.binary_data_size"
        if size != len(binary):
            raise InvalidInput(f"{where}: {size} bytes declared, {len(binary)} sent")
        array = array_from_bytes(binary, dtype, tensor.shape, where, tensor.datatype)
    elif tensor.data is not None:
        count = int(np.prod(tensor.shape))
        try:
            array = np.asarray(tensor.data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as err:
            raise InvalidInput(f"inputs[0].data: not {tensor.datatype} numbers ({err})") from None
        if array.size != count:
            raise InvalidInput(
                f"inputs[0].data: {array.size} values, shape {tensor.shape} needs {count}"
            )
        array = array.reshape(tensor.shape)
    else:
        raise InvalidInput("inputs[0]: neither data nor parameters.binary_data_size")
    return model.task.model_input(array, "inputs[0].data")


def _response(req: InferRequest, model: ServedModel, out: NDArray[np.float32]) -> Response:
    info = model.info
    wanted = req.outputs or [RequestedOutput(name=info.output_name)]
    unknown = [o.name for o in wanted if o.name != info.output_name]
    if unknown:
        raise InvalidInput(
            f"outputs: the model has one output, {info.output_name!r}; asked {unknown}"
        )
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
