"""Protobuf to the data plane's types and back: ``ModelInferRequest`` -> ``InferRequest``
and the raw tensor bytes; the model's answer -> ``ModelInferResponse``. Nothing is
checked here that the data plane checks for every transport (names, datatypes, shapes,
byte counts, values); only what is protobuf's own (contents in the wrong field, raw
tensors that do not match the inputs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from service.dataplane import InferRequest, invalid_request
from service.errors import InvalidInput
from service.registry import ServedModel

# Where typed values of each datatype travel in ``InferTensorContents``.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A map of ``InferParameter`` as plain values (the one set of its oneof)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def infer_request(message: Any) -> tuple[InferRequest, bytes]:
    """A ``ModelInferRequest`` as the data plane's request, and the bytes of its first
    raw input (sent as ``parameters.binary_data_size`` on REST)."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} tensors for {len(message.inputs)} inputs"
        )
    tensors: list[dict[str, Any]] = []
    values: dict[int, list[Any]] = {}
    for i, tensor in enumerate(message.inputs):
        given = [f.name for f, v in tensor.contents.ListFields() if len(v)]
        body: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
            "parameters": parameters(tensor.parameters),
        }
        if raw:
            if given:
                raise InvalidInput(
                    f"inputs[{i}]: both contents.{given[0]} and raw_input_contents[{i}]; send one"
                )
            body["parameters"]["binary_data_size"] = len(raw[i])
        else:
            field = CONTENTS.get(tensor.datatype)
            if field is not None and given and given != [field]:
                raise InvalidInput(
                    f"inputs[{i}].contents: {tensor.datatype} values go in {field}, "
                    f"got {', '.join(given)}"
                )
            if field is not None:
                values[i] = list(getattr(tensor.contents, field))
        tensors.append(body)
    request: dict[str, Any] = {
        "inputs": tensors,
        "parameters": parameters(message.parameters),
    }
    if message.id:
        request["id"] = message.id
    if message.outputs:
        request["outputs"] = [
            {"name": o.name, "parameters": parameters(o.parameters)} for o in message.outputs
        ]
    try:
        req = InferRequest.model_validate(request)
    except ValidationError as err:
        raise invalid_request(err) from None
    # Set after validation, as REST does: pydantic walking every value costs more than
    # the model; numpy reads and checks them in the data plane.
    for i, data in values.items():
        req.inputs[i].data = data
    return req, raw[0] if raw else b""


def infer_response(req: InferRequest, model: ServedModel, out: NDArray[np.float32]) -> Any:
    """The answer as Triton sends it: the output's metadata, its values in
    ``raw_output_contents`` (little-endian FP32)."""
    info = model.info
    response = pb.ModelInferResponse(
        model_name=info.name, model_version=str(info.version), id=req.id or ""
    )
    output = response.outputs.add()
    output.name = info.output_name
    output.datatype = "FP32"
    output.shape.extend(out.shape)
    response.raw_output_contents.append(np.ascontiguousarray(out, dtype="<f4").tobytes())
    return response


def model_metadata(meta: dict[str, Any]) -> Any:
    """The data plane's model metadata as a ``ModelMetadataResponse``."""
    response = pb.ModelMetadataResponse(
        name=meta["name"], versions=[str(v) for v in meta["versions"]], platform=meta["platform"]
    )
    for tensors, into in ((meta["inputs"], response.inputs), (meta["outputs"], response.outputs)):
        for tensor in tensors:
            into.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response
