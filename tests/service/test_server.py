"""The real server process on a loopback port, serving the committed ConvLSTM."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, REPO, RunningServer, run_server

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


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in response.text
    detail: dict[str, str] = body["error"]
    return detail


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive"}


def test_readyz_names_model_sha_provider_and_shape(client: httpx.Client) -> None:
    body = client.get("/readyz").json()
    card = json.loads((REPO / "models" / "convlstm.json").read_text())
    assert body["status"] == "ready"
    assert (body["model"], body["model_version"]) == ("convlstm", card["version"])
    assert body["sha256"] == card["sha256"]
    assert body["provider"] in ort.get_available_providers()
    assert body["input_shape"] == ["N", 15, 40, 40, 3]


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


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png(size: tuple[int, int] = (40, 40), mode: str = "RGB", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return b64(buffer.getvalue())


def float_tensor(array: np.ndarray) -> dict[str, object]:
    data = b64(array.astype("<f4").tobytes())
    return {"tensor": {"data": data, "dtype": "float32", "shape": list(array.shape)}}


def with_value(value: float) -> dict[str, object]:
    array = np.zeros((15, 40, 40, 3), np.float32)
    array[4, 5, 6, 2] = value
    return float_tensor(array)


# (request body, expected status, error location, words the message must contain)
BAD_JSON_BODIES = {
    "invalid base64": ({"frames": [*FRAMES[:3], "@@@", *FRAMES[4:]]}, "frames[3]", "base64"),
    "not an image": ({"frames": [b64(b"GIF89a....")] * 15}, "frames[0]", "not a PNG or JPEG"),
    "14 frames": ({"frames": FRAMES[:14]}, "frames", "expected 15 frames, got 14"),
    "16 frames": ({"frames": [*FRAMES, FRAMES[0]]}, "frames", "expected 15 frames, got 16"),
    "wrong size": ({"frames": [*FRAMES[:14], png((32, 40))]}, "frames[14]", "32x40"),
    "CMYK JPEG": ({"frames": [png(mode="CMYK", fmt="JPEG")] * 15}, "frames[0]", "mode CMYK"),
    "tensor bytes": (
        {"tensor": {"data": b64(b"\0" * 99), "dtype": "uint8", "shape": [15, 40, 40, 3]}},
        "tensor.data",
        "99 bytes, but shape [15, 40, 40, 3] of uint8 needs 72000",
    ),
    "tensor shape": (
        {"tensor": {"data": "", "dtype": "uint8", "shape": [15, 40, 40, 1]}},
        "tensor.shape",
        "expected [15, 40, 40, 3]",
    ),
    "tensor dtype": (
        {"tensor": {"data": "", "dtype": "int16", "shape": [15, 40, 40, 3]}},
        "tensor.dtype",
        "'uint8' or 'float32'",
    ),
    "NaN": (
        with_value(float("nan")),
        "tensor.data",
        "NaN or infinite, the first at index [4, 5, 6, 2]",
    ),
    "out of range": (with_value(1.5), "tensor.data", "must be in [0, 1]"),
    "horizon 0": ({"frames": FRAMES, "horizon": 0}, "horizon", "between 1 and 8, got 0"),
    "horizon 9": ({"frames": FRAMES, "horizon": 9}, "horizon", "between 1 and 8, got 9"),
    "horizon text": ({"frames": FRAMES, "horizon": "2"}, "horizon", "valid integer"),
    "unknown field": ({"frames": FRAMES, "horizn": 2}, "horizn", "unknown field"),
    "both inputs": (
        {"frames": FRAMES, "tensor": {"data": "", "dtype": "uint8", "shape": [1]}},
        "body",
        "exactly one of 'frames' and 'tensor'",
    ),
    "no input": ({"horizon": 1}, "body", "exactly one of 'frames' and 'tensor'"),
    "frames not a list": ({"frames": "abc"}, "frames", "valid list"),
    "frame not a string": ({"frames": [1] * 15}, "frames[0]", "valid string"),
    "body not an object": ([1, 2, 3], "body", "valid dictionary"),
}


@pytest.mark.parametrize("case", BAD_JSON_BODIES, ids=list(BAD_JSON_BODIES))
def test_bad_input_gets_422_naming_where(client: httpx.Client, case: str) -> None:
    body, location, words = BAD_JSON_BODIES[case]
    error = error_of(client.post("/predict", json=body), 422)
    assert error["type"] == "invalid_input"
    assert error.get("location") == location, error
    assert words in error["message"], error


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[" * 50_000, "could not be parsed as JSON"),
    ],
)
def test_malformed_json_gets_400(client: httpx.Client, content: bytes, words: str) -> None:
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    error = error_of(r, 400)
    assert words in error["message"], error


def test_empty_body_is_named(client: httpx.Client) -> None:
    r = client.post("/predict", content=b"", headers={"content-type": "application/json"})
    assert "body is empty" in error_of(r, 422)["message"]


def test_wrong_content_type_gets_415(client: httpx.Client) -> None:
    r = client.post(
        "/predict", content=json.dumps({"frames": FRAMES}), headers={"content-type": "text/plain"}
    )
    error = error_of(r, 415)
    assert "expected application/json, got text/plain" in error["message"]


def test_oversized_body_gets_413_by_declared_length(client: httpx.Client) -> None:
    r = client.post(
        "/predict", content=b"x" * (3 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert "larger than the limit of 2097152 bytes" in error_of(r, 413)["message"]


def test_oversized_streamed_body_gets_413_without_length(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert error_of(r, 413)["type"] == "payload_too_large"


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert error_of(client.get("/nowhere"), 404)["type"] == "not_found"
    assert error_of(client.get("/predict"), 405)["type"] == "method_not_allowed"


def test_service_still_answers_after_every_bad_input(
    client: httpx.Client, server: RunningServer
) -> None:
    for body, _, _ in BAD_JSON_BODIES.values():
        client.post("/predict", json=body)
    assert server.process.poll() is None
    r = client.post("/predict", json={"frames": FRAMES})
    assert r.status_code == 200 and len(r.json()["frames"]) == 1


def test_model_card(client: httpx.Client) -> None:
    card = client.get("/v1/model").json()
    params = {layer["name"]: layer["params"] for layer in card["layers"]}
    assert [params[f"convlstm_{i}"] for i in range(1, 5)] == [35_760, 144_200, 237_840, 327_880]
    assert card["parameters"]["body"] == 745_680
    assert card["inputs"][0]["shape"] == ["N", 15, 40, 40, 3]
    assert "copy_last_frame" in card["evaluation"]["metrics"]
    assert card["provider"] == client.get("/readyz").json()["provider"]


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


def test_every_model_with_a_card_is_served(client: httpx.Client) -> None:
    listing = client.get("/v1/models").json()
    assert listing["default"] == "convlstm"
    names = [m["name"] for m in listing["models"]]
    assert names[0] == "convlstm" and "cnn_lstm" in names
    assert not any(".plain" in n for n in names)  # a graph without a card of its own
    assert client.get("/readyz").json()["models"] == names
    card = client.get("/v1/models/cnn_lstm").json()
    assert card["name"] == "cnn_lstm" and card["parameters"]["total"] == 1_504_896


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


def test_unknown_model_is_404_naming_the_served_ones(client: httpx.Client) -> None:
    error = error_of(client.post("/predict", json={"frames": FRAMES, "model": "unet"}), 404)
    assert error["type"] == "unknown_model" and error["location"] == "model"
    assert "no model named 'unet'; served: convlstm, cnn_lstm" in error["message"]
    assert error_of(client.get("/v1/models/unet"), 404)["type"] == "unknown_model"
