"""The real server process on a loopback port, serving the committed ConvLSTM: answers
checked against onnxruntime, metrics, the process surviving bad input. Route and error
details are checked in process, in test_routes.py."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, REPO, RunningServer, run_server
from tests.service.test_routes import BAD_JSON_BODIES

FRAMES = moving_square_frames()


def decode_png(text: str) -> np.ndarray:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


def sequence() -> np.ndarray:
    return np.stack([decode_png(f) for f in FRAMES]).astype(np.float32) / 255.0


def onnx_next_frame(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(COMMITTED_MODEL), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"frames": x[None]})[0][0]
    return out


def test_predict_png_returns_the_models_next_frame(client: httpx.Client) -> None:
    r = client.post("/predict", json={"frames": FRAMES, "return_tensor": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["horizon"], body["frame_shape"]) == ("convlstm", 1, [40, 40, 3])
    assert body["provider"] == client.get("/readyz").json()["provider"]
    assert body["inference_ms"] > 0
    (png,) = body["frames"]
    frame = decode_png(png)
    assert frame.shape == (40, 40, 3)
    expected = onnx_next_frame(sequence())
    tensor = body["tensor"]
    assert (tensor["dtype"], tensor["shape"]) == ("float32", [1, 40, 40, 3])
    raw = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(1, 40, 40, 3)
    np.testing.assert_allclose(raw[0], expected, atol=1e-5)
    assert np.abs(frame.astype(int) - np.rint(expected * 255)).max() <= 1


def test_predict_tensor_uint8_equals_png(client: httpx.Client) -> None:
    pixels = np.rint(sequence() * 255).astype(np.uint8)
    tensor = {"data": base64.b64encode(pixels.tobytes()).decode(), "dtype": "uint8"}
    r = client.post("/predict", json={"tensor": {**tensor, "shape": [15, 40, 40, 3]}})
    png = client.post("/predict", json={"frames": FRAMES})
    assert r.status_code == 200 and png.status_code == 200
    assert r.json()["frames"] == png.json()["frames"]


def test_horizon_three_slides_the_window(client: httpx.Client) -> None:
    x = sequence()
    data = base64.b64encode(x.astype("<f4").tobytes()).decode()
    body = {"tensor": {"data": data, "dtype": "float32", "shape": [15, 40, 40, 3]}}
    r = client.post("/predict", json={**body, "horizon": 3, "return_tensor": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["horizon"] == 3 and len(out["frames"]) == 3
    assert all(decode_png(f).shape == (40, 40, 3) for f in out["frames"])
    got = np.frombuffer(base64.b64decode(out["tensor"]["data"]), "<f4").reshape(3, 40, 40, 3)
    window = x
    for step in range(3):
        expected = onnx_next_frame(window)
        np.testing.assert_allclose(got[step], expected, atol=1e-5)
        window = np.concatenate([window[1:], expected[None]])


def test_service_still_answers_after_every_bad_input(
    client: httpx.Client, server: RunningServer
) -> None:
    for body, _, _ in BAD_JSON_BODIES.values():
        client.post("/predict", json=body)
    assert server.process.poll() is None
    r = client.post("/predict", json={"frames": FRAMES})
    assert r.status_code == 200 and len(r.json()["frames"]) == 1


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def test_metrics_count_requests_and_inference(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    client.post("/predict", json={"frames": FRAMES, "horizon": 2})
    client.post("/predict", json={"frames": FRAMES[:2]})
    after = client.get("/metrics").text
    provider = client.get("/readyz").json()["provider"]

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    ok = {"route": "/predict", "method": "POST", "status": "200"}
    assert delta("convlstm_http_requests_total", **ok) == 1
    assert delta("convlstm_http_requests_total", **{**ok, "status": "422"}) == 1
    assert (
        delta("convlstm_http_request_duration_seconds_count", route="/predict", method="POST") == 2
    )
    model = {"model": "convlstm", "provider": provider}
    assert delta("convlstm_inference_duration_seconds_count", **model) == 1
    assert delta("convlstm_inference_batch_size_count", model="convlstm") == 2
    assert delta("convlstm_predicted_frames_total", model="convlstm") == 2
    info = {
        dict(k[1])["model"]: dict(k[1]) for k in samples(after) if k[0] == "convlstm_model_info"
    }
    assert set(info) == {"convlstm", "cnn_lstm"}
    assert info["convlstm"]["provider"] == provider
    assert value(after, "convlstm_http_requests_in_flight") == 0
    assert value(after, "convlstm_ready") == 1
    assert '"/healthz"' not in after and '"/metrics"' not in after


def test_openapi_example_is_a_working_request(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    examples = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    for example in examples.values():
        r = client.post("/predict", json=example["value"])
        assert r.status_code == 200, r.text
        assert len(r.json()["frames"]) == example["value"]["horizon"]
    assert client.get("/docs").status_code == 200


def test_service_imports_no_tensorflow() -> None:
    code = (
        "import sys, service.app, service.__main__; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_example_request(client: httpx.Client) -> None:
    body = json.loads((REPO / "examples" / "request.json").read_text())
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert len(frames) == body["horizon"] == 3
    assert all(decode_png(f).shape == (40, 40, 3) for f in frames)


def test_request_names_the_model(client: httpx.Client) -> None:
    r = client.post("/predict", json={"frames": FRAMES, "model": "cnn_lstm"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "cnn_lstm"
    assert client.post("/predict", json={"frames": FRAMES}).json()["model"] == "convlstm"
    text = client.get("/metrics").text
    assert (value(text, "convlstm_predicted_frames_total", model="cnn_lstm") or 0) >= 1


def test_int8_variant_is_served_only_when_named_and_predicts_close_to_float32(
    client: httpx.Client,
) -> None:
    assert "convlstm_int8" not in [m["name"] for m in client.get("/v1/models").json()["models"]]
    x = sequence()
    body = {
        "tensor": {
            "data": base64.b64encode(x.astype("<f4").tobytes()).decode(),
            "dtype": "float32",
            "shape": list(x.shape),
        },
        "return_tensor": True,
    }
    with run_server(REPO / "models" / "int8" / "convlstm_int8.onnx") as int8:
        with httpx.Client(base_url=int8.url, timeout=30) as c:
            assert c.get("/v1/models").json()["default"] == "convlstm_int8"
            r = c.post("/predict", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "convlstm_int8"
            card = c.get("/v1/models/convlstm_int8").json()
    t = r.json()["tensor"]
    got = np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])[0]
    diff = np.abs(got - onnx_next_frame(x))
    # Quantized, so not the float32 answer, but near it.
    assert 0 < diff.mean() <= 0.01
    assert card["graph"]["kind"] == "int8"
    assert card["graph"]["source"]["sha256"] == client.get("/v1/models/convlstm").json()["sha256"]
