"""The Open Inference Protocol, spoken to by a client written elsewhere: Triton's
``tritonclient[http]``, against the real server; results must equal ``/predict``'s."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.api.examples import moving_square_frames
from tests.service.conftest import RunningServer
from tests.service.test_server import decode_png

FRAMES = moving_square_frames()


@pytest.fixture(scope="module")
def sequence() -> np.ndarray:
    return np.stack([decode_png(f) for f in FRAMES])  # (15, 40, 40, 3) uint8


@pytest.fixture
def tc(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


def predict_tensor(client: httpx.Client, pixels: np.ndarray, model: str = "convlstm") -> np.ndarray:
    body = {
        "tensor": {
            "data": base64.b64encode(pixels.tobytes()).decode(),
            "dtype": "uint8",
            "shape": list(pixels.shape),
        },
        "return_tensor": True,
        "model": model,
    }
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    t = r.json()["tensor"]
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])[0]


def test_health_and_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("convlstm") and tc.is_model_ready("cnn_lstm")
    meta = tc.get_server_metadata()
    assert meta["name"] == "convlstm-serve" and "binary_tensor_data" in meta["extensions"]
    model = tc.get_model_metadata("convlstm")
    assert model["inputs"] == [{"name": "frames", "datatype": "FP32", "shape": [-1, 15, 40, 40, 3]}]
    assert model["outputs"] == [
        {"name": "next_frame", "datatype": "FP32", "shape": [-1, 40, 40, 3]}
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_infer_equals_predict(
    tc: triton.InferenceServerClient,
    client: httpx.Client,
    sequence: np.ndarray,
    binary: bool,
    datatype: str,
) -> None:
    x = sequence[None] if datatype == "UINT8" else (sequence[None].astype(np.float32) / 255.0)
    inp = triton.InferInput("frames", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("next_frame", binary_data=binary)
    result = tc.infer("convlstm", [inp], outputs=[out], request_id="r-1")
    got = result.as_numpy("next_frame")
    assert got.shape == (1, 40, 40, 3) and got.dtype == np.float32
    assert result.get_response()["model_name"] == "convlstm"
    np.testing.assert_allclose(got[0], predict_tensor(client, sequence), atol=1e-5)


def test_batch_of_sequences_and_another_model(
    tc: triton.InferenceServerClient, client: httpx.Client, sequence: np.ndarray
) -> None:
    x = np.stack([sequence, sequence[::-1]])
    inp = triton.InferInput("frames", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=True)
    got = tc.infer("cnn_lstm", [inp]).as_numpy("next_frame")
    assert got.shape == (2, 40, 40, 3)
    np.testing.assert_allclose(got[0], predict_tensor(client, sequence, "cnn_lstm"), atol=1e-5)
    np.testing.assert_allclose(
        got[1], predict_tensor(client, sequence[::-1].copy(), "cnn_lstm"), atol=1e-5
    )


def test_horizon_parameter(client: httpx.Client, sequence: np.ndarray) -> None:
    body = {
        "inputs": [
            {
                "name": "frames",
                "shape": [1, 15, 40, 40, 3],
                "datatype": "UINT8",
                "data": sequence.reshape(-1).tolist(),
            }
        ],
        "parameters": {"horizon": 2},
    }
    r = client.post("/v2/models/convlstm/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 2, 40, 40, 3] and len(out["data"]) == 2 * 40 * 40 * 3


def test_protocol_errors_reach_the_client_as_its_errors(tc: triton.InferenceServerClient) -> None:
    """The error shapes themselves are checked in process (test_routes.py); here, that
    Triton's own client reads them as the protocol's errors."""
    with pytest.raises(InferenceServerException, match="no model named"):
        tc.get_model_metadata("unet")
    with pytest.raises(InferenceServerException, match="shape: expected"):
        inp = triton.InferInput("frames", [15, 40, 40, 3], "FP32")
        inp.set_data_from_numpy(np.zeros((15, 40, 40, 3), np.float32))
        tc.infer("convlstm", [inp])
