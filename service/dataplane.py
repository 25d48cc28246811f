"""The Open Inference Protocol's data plane, shared by its transports (REST in
``service.api.oip``, gRPC in ``service.grpc``): the request as plain types, its input
checked and converted for the model's runner, the model's metadata, and the inference
itself. Nothing here knows HTTP or protobuf; each transport converts its wire types to
``InferRequest`` (with the binary tensor bytes beside it) and back."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import __version__, tracing
from service.errors import InvalidInput
from service.inference.codec import array_from_bytes
from service.model_repository import version_order
from service.registry import ModelRegistry, ServedModel
from service.streams.sequence import check_sequence_shape, sequence_id, sequence_stream
from service.streams.service import StreamService

SERVER_NAME = "convlstm-serve"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]
"""The protocol extensions every server serves; ``sequence`` is added where a served
model serves streams (``extensions``)."""
# Datatypes a client may send: FP32 values in [0, 1], or UINT8 pixels scaled by 1/255.
INPUT_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}

Wait = Callable[[Awaitable[Any]], Awaitable[Any]]
"""How a transport awaits model work: REST cancels it when the client disconnects."""


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


def invalid_request(err: ValidationError) -> InvalidInput:
    """A request that does not fit ``InferRequest``, as the message every transport sends:
    where the first problem is, and what it is."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInput(f"{where}: {first['msg']}", location=where)


def extensions(streams: StreamService) -> list[str]:
    """The extensions this server serves now: ``sequence`` (``sequence_id``,
    ``sequence_start``, ``sequence_end`` on infer) only while a model serves streams."""
    return [*EXTENSIONS, *(["sequence"] if streams.models else [])]


def server_metadata(streams: StreamService) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": extensions(streams)}


def metadata(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    """The protocol's model metadata of ``name`` (404 if unknown)."""
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
        "inputs": [{"name": info.input_name, "datatype": "FP32", "shape": dims(info.input_shape)}],
        "outputs": [
            {"name": info.output_name, "datatype": "FP32", "shape": dims(info.output_shape)}
        ],
        # What the card says the model does; OIP clients ignore keys they do not know.
        "parameters": {"task": info.card.task, "output_kind": info.card.output_kind},
    }


def model_config(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    """The model's configuration in the shape of Triton's ``ModelConfig`` (its JSON form):
    the batch axis left out of ``dims``, as Triton writes it for a batching model."""
    model = registry.lookup(name, version)
    info = model.info

    def tensor(tensor_name: str, shape: list[int | str]) -> dict[str, Any]:
        return {"name": tensor_name, "data_type": "TYPE_FP32", "dims": dims(shape[1:])}

    return {
        "name": info.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": registry.settings.max_batch_size,
        "input": [tensor(info.input_name, info.input_shape)],
        "output": [tensor(info.output_name, info.output_shape)],
    }


def statistics(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    """Triton's statistics of every served version (``name`` empty), of every version of
    ``name``, or of one version; 404 for an unknown name or version."""
    if not name:
        if version:
            raise InvalidInput("version: a version needs a model name", location="version")
        chosen = [m for versions in registry.versions.values() for m in versions.values()]
    elif version:
        chosen = [registry.lookup(name, version)]
    else:
        if name not in registry.versions:
            raise registry.unknown(name)
        chosen = list(registry.versions[name].values())
    chosen.sort(key=lambda m: (m.info.name, version_order(m.info.version)))
    return {
        "model_stats": [
            m.runner.statistics.as_triton(m.info.name, str(m.info.version)) for m in chosen
        ]
    }


def check_load_parameters(parameters: dict[str, Any]) -> None:
    """A repository load's parameters: Triton's ``config`` and ``file:`` overrides (a
    model sent in the request) are refused; models come from the directory."""
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"parameters.{overrides[0]}: a model sent in the request is not supported; "
            "put it in the model directory and load it by name",
            location=f"parameters.{overrides[0]}",
        )


def raw_request(model: ServedModel, body: bytes) -> InferRequest:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the whole
    body is the model's one input as little-endian FP32, its batch size read from the
    byte count. Only for inputs whose other dimensions are fixed."""
    info = model.info
    item = info.input_shape[1:]
    fixed = [d for d in item if isinstance(d, int)]
    if len(fixed) != len(item):
        raise InvalidInput(
            f"body: a raw binary body needs an input with only the batch dimension "
            f"variable; {info.input_name!r} has shape {dims(info.input_shape)}; send a JSON "
            "header with the shape",
            location="body",
        )
    item_bytes = 4 * int(np.prod(fixed))
    if not body or len(body) % item_bytes:
        raise InvalidInput(
            f"body: {len(body)} bytes is not a whole number of {info.input_name!r} items of "
            f"shape {fixed} as FP32 ({item_bytes} bytes each)",
            location="body",
        )
    tensor = InferTensor(
        name=info.input_name,
        shape=[len(body) // item_bytes, *fixed],
        datatype="FP32",
        parameters={"binary_data_size": len(body)},
    )
    return InferRequest(inputs=[tensor])


def model_ready(registry: ModelRegistry, name: str, version: str | None) -> bool:
    """Whether ``name`` (in ``version``) answers now; 404 if no such model is known."""
    if not version:
        if name in registry.failed:
            return False
        if name not in registry.models:
            raise registry.unknown(name)
        return registry.ready
    state = registry.version_state(name, version)
    if state is None:
        if name not in registry.models and name not in registry.failed:
            raise registry.unknown(name)
        registry.lookup(name, version)  # 404 naming the versions served
    return state == "READY" and registry.ready


def dims(shape: list[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


async def infer(
    req: InferRequest,
    binary: bytes,
    model: ServedModel,
    streams: StreamService,
    wait: Wait,
) -> NDArray[np.float32]:
    """The model's answer to ``req`` (``binary``: the bytes of a tensor sent with
    ``parameters.binary_data_size``), through the model's queue, or through a stream when
    the request names a ``sequence_id``. The requested outputs are checked first."""
    output_names(req, model)
    horizon = req.parameters.get("horizon", 1)
    if not isinstance(horizon, int) or isinstance(horizon, bool):
        raise InvalidInput(f"parameters.horizon: must be an integer, got {horizon!r}")
    seq = sequence_id(req.parameters)
    if seq is not None:
        return await _sequence_infer(req, binary, model, streams, seq, horizon, wait)
    with tracing.span("decode"):
        batch = input_batch(req, binary, model)
    steps = model.task.steps(horizon)
    predicted, _ = await wait(model.runner.run(batch, steps))
    out: NDArray[np.float32] = model.task.batch_output(predicted, steps)
    return out


async def _sequence_infer(
    req: InferRequest,
    binary: bytes,
    model: ServedModel,
    streams: StreamService,
    seq: int | str,
    horizon: int,
    wait: Wait,
) -> NDArray[np.float32]:
    stream_model = streams.model(model.info.name)
    stream_model.task.steps(horizon)
    frame = stream_model.task.spec.shape[1:]
    with tracing.span("decode"):
        frames = input_batch(
            req, binary, model, check=lambda shape, where: check_sequence_shape(shape, frame)
        )[0]
    stream, end = await sequence_stream(streams, model.info.name, seq, req.parameters)
    start = time.perf_counter()
    try:
        predicted, _ = await wait(streams.step_arrays(stream, frames, horizon))
    except BaseException:
        model.runner.statistics.request(False, time.perf_counter() - start)
        raise
    model.runner.statistics.request(True, time.perf_counter() - start)
    if end and streams.table.streams.get(stream.id) is stream:
        await streams.close_stream(stream.id)
    out: NDArray[np.float32] = predicted[None, 0] if horizon == 1 else predicted[None]
    return out


def input_batch(
    req: InferRequest,
    binary: bytes,
    model: ServedModel,
    check: Callable[[list[int], str], None] | None = None,
) -> NDArray[np.float32]:
    """The request's one input, checked (name, datatype, shape, byte count or values)
    and converted to what the model's runner takes."""
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
    batch: NDArray[np.float32] = model.task.model_input(array, "inputs[0].data")
    return batch


def output_names(req: InferRequest, model: ServedModel) -> list[RequestedOutput]:
    """The outputs the request asks for (the model's one output when it names none)."""
    name = model.info.output_name
    wanted = req.outputs or [RequestedOutput(name=name)]
    unknown = [o.name for o in wanted if o.name != name]
    if unknown:
        raise InvalidInput(f"outputs: the model has one output, {name!r}; asked {unknown}")
    return wanted
