"""A model whose card says ``task: tensor``, served in process: the plain-tensor adapter
behind the Open Inference Protocol, with the shape and value range its card states.

The model is a real ONNX graph (y = 2x on 4 values), built with onnx's own helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests.service.conftest import asgi_client, running_app
from tests.service.test_routes import error_of, oip_error_of

onnx = pytest.importorskip("onnx", reason="onnx is installed with the `train` extra")
pytestmark = pytest.mark.anyio
INFER = "/v2/models/double/infer"


def write_doubling_model(directory: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every onnxruntime of the last years reads
    path = directory / "double.onnx"
    onnx.save(model, str(path))
    card = {
        "name": "double",
        "version": "1.0.0",
        "task": "tensor",
        "inputs": [{"name": "x", "shape": ["N", 4], "dtype": "float32", "range": [-1.0, 1.0]}],
        "outputs": [{"name": "y", "shape": ["N", 4], "dtype": "float32"}],
    }
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    model = write_doubling_model(tmp_path_factory.mktemp("tensor"))
    async with running_app(Settings(model_path=model, warmup_runs=1)) as app:
        async with asgi_client(app) as c:
            yield c


def infer_body(values: list[list[float]], datatype: str = "FP32") -> dict[str, object]:
    rows = np.asarray(values)
    return {
        "inputs": [
            {
                "name": "x",
                "shape": list(rows.shape),
                "datatype": datatype,
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }


async def test_a_batch_runs_once_and_comes_back_whole(client: httpx.AsyncClient) -> None:
    x = [[0.5, -0.25, 1.0, 0.0], [-1.0, 0.125, 0.0, 0.75]]
    r = await client.post(INFER, json=infer_body(x))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["name"], out["shape"]) == ("y", [2, 4])
    np.testing.assert_allclose(np.reshape(out["data"], (2, 4)), 2 * np.asarray(x))
    meta = (await client.get("/v2/models/double")).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


async def test_the_cards_shape_and_range_are_checked(client: httpx.AsyncClient) -> None:
    assert "expected [N, 4] with N >= 1" in oip_error_of(
        await client.post(INFER, json=infer_body([[0.0, 0.0, 0.0]])), 422
    )
    assert "must be in [-1, 1]" in oip_error_of(
        await client.post(INFER, json=infer_body([[0.0, 1.5, 0.0, 0.0]])), 422
    )
    # UINT8 means pixels scaled to [0, 1]: not this model's range.
    assert "takes [-1, 1]; send float32" in oip_error_of(
        await client.post(INFER, json=infer_body([[0, 1, 2, 3]], "UINT8")), 422
    )
    body = {**infer_body([[0.0] * 4]), "parameters": {"horizon": 2}}
    assert "one step, got 2" in oip_error_of(await client.post(INFER, json=body), 422)


async def test_predict_points_a_tensor_model_to_the_protocol(client: httpx.AsyncClient) -> None:
    r = await client.post("/predict", json={"frames": ["AAAA"], "model": "double"})
    error = error_of(r, 422)
    assert error["location"] == "model"
    assert "is a tensor model" in error["message"] and INFER in error["message"]
    card = (await client.get("/v1/model")).json()
    assert (card["task"], card["output_kind"]) == ("tensor", "tensor")
