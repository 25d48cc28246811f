"""Routes and errors, in process: ``create_app(Settings(...))`` with its lifespan, over
httpx's ASGI transport, serving the committed models. No port, no process: what a route
answers and how every error is rendered in each protocol's shape."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from PIL import Image

from service.api.examples import moving_square_frames
from service.config import Settings
from service.registry import ModelRegistry
from tests.service.conftest import COMMITTED_MODEL, REPO, asgi_client, running_app

pytestmark = pytest.mark.anyio
FRAMES = moving_square_frames()
# 8 sequences of 15x40x40x3 values, 32 bytes each, and 64 kB: the derived body limit.
DERIVED_LIMIT = 8 * 15 * 40 * 40 * 3 * 32 + 64 * 1024


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in response.text
    detail: dict[str, str] = body["error"]
    return detail


async def test_healthz(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive"}


async def test_readyz_names_model_sha_provider_and_shape(app_client: httpx.AsyncClient) -> None:
    body = (await app_client.get("/readyz")).json()
    card = json.loads((REPO / "models" / "convlstm.json").read_text())
    assert body["status"] == "ready"
    assert (body["model"], body["model_version"]) == ("convlstm", card["version"])
    assert body["sha256"] == card["sha256"]
    assert body["provider"] in ort.get_available_providers()
    assert body["input_shape"] == ["N", 15, 40, 40, 3]


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
async def test_bad_input_gets_422_naming_where(app_client: httpx.AsyncClient, case: str) -> None:
    body, location, words = BAD_JSON_BODIES[case]
    error = error_of(await app_client.post("/predict", json=body), 422)
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
async def test_malformed_json_gets_400(
    app_client: httpx.AsyncClient, content: bytes, words: str
) -> None:
    r = await app_client.post(
        "/predict", content=content, headers={"content-type": "application/json"}
    )
    error = error_of(r, 400)
    assert words in error["message"], error


async def test_empty_body_is_named(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post("/predict", content=b"", headers={"content-type": "application/json"})
    assert "body is empty" in error_of(r, 422)["message"]


async def test_wrong_content_type_gets_415(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post(
        "/predict", content=json.dumps({"frames": FRAMES}), headers={"content-type": "text/plain"}
    )
    error = error_of(r, 415)
    assert "expected application/json, got text/plain" in error["message"]


async def test_oversized_body_gets_413_by_declared_length(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post(
        "/predict", content=b"x" * (DERIVED_LIMIT + 1), headers={"content-type": "application/json"}
    )
    assert error_of(r, 413)["message"] == (
        f"request body is larger than the limit of {DERIVED_LIMIT} bytes "
        "(derived from the served models; set CONVLSTM_MAX_BODY_BYTES)"
    )


async def test_oversized_streamed_body_gets_413_without_length(
    app_client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(DERIVED_LIMIT // 65536 + 1):
            yield b"x" * 65536

    r = await app_client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert error_of(r, 413)["type"] == "payload_too_large"


async def test_unknown_route_and_method(app_client: httpx.AsyncClient) -> None:
    assert error_of(await app_client.get("/nowhere"), 404)["type"] == "not_found"
    assert error_of(await app_client.get("/predict"), 405)["type"] == "method_not_allowed"


async def test_model_card(app_client: httpx.AsyncClient) -> None:
    card = (await app_client.get("/v1/model")).json()
    params = {layer["name"]: layer["params"] for layer in card["layers"]}
    assert [params[f"convlstm_{i}"] for i in range(1, 5)] == [35_760, 144_200, 237_840, 327_880]
    assert card["parameters"]["body"] == 745_680
    assert card["inputs"][0]["shape"] == ["N", 15, 40, 40, 3]
    # Stated by the contract even where the file predates the fields.
    assert (card["task"], card["output_kind"]) == ("next_frame", "next_frame")
    assert "copy_last_frame" in card["evaluation"]["metrics"]
    assert card["provider"] == (await app_client.get("/readyz")).json()["provider"]


async def test_every_model_with_a_card_is_served(app_client: httpx.AsyncClient) -> None:
    listing = (await app_client.get("/v1/models")).json()
    assert listing["default"] == "convlstm"
    names = [m["name"] for m in listing["models"]]
    assert names[0] == "convlstm" and "cnn_lstm" in names
    assert not any(".plain" in n for n in names)  # a graph without a card of its own
    assert (await app_client.get("/readyz")).json()["models"] == names
    card = (await app_client.get("/v1/models/cnn_lstm")).json()
    assert card["name"] == "cnn_lstm" and card["parameters"]["total"] == 1_504_896


async def test_unknown_model_is_404_naming_the_served_ones(app_client: httpx.AsyncClient) -> None:
    error = error_of(
        await app_client.post("/predict", json={"frames": FRAMES, "model": "unet"}), 404
    )
    assert error["type"] == "unknown_model" and error["location"] == "model"
    assert "no model named 'unet'; served: convlstm, cnn_lstm" in error["message"]
    assert error_of(await app_client.get("/v1/models/unet"), 404)["type"] == "unknown_model"


# -- one renderer, two shapes ----------------------------------------------------------------


def oip_error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"])


OIP_TENSOR = {"name": "frames", "shape": [1, 15, 40, 40, 3], "datatype": "FP32"}
INFER = "/v2/models/convlstm/infer"


async def test_oip_errors_are_the_protocols_shape(app_client: httpx.AsyncClient) -> None:
    tensor = OIP_TENSOR
    assert "no model named 'unet'" in oip_error_of(
        await app_client.post("/v2/models/unet/infer", json={"inputs": [tensor]}), 404
    )
    assert "shape: expected [N, 15, 40, 40, 3]" in oip_error_of(
        await app_client.post(
            INFER, json={"inputs": [{**tensor, "shape": [15, 40, 40, 3], "data": [0]}]}
        ),
        422,
    )
    assert "'INT64' is not one of" in oip_error_of(
        await app_client.post(
            INFER, json={"inputs": [{**tensor, "datatype": "INT64", "data": [0]}]}
        ),
        422,
    )
    assert "1 values, shape" in oip_error_of(
        await app_client.post(INFER, json={"inputs": [{**tensor, "data": [0.5]}]}), 422
    )
    assert "inputs" in oip_error_of(await app_client.post(INFER, content=b"{}"), 422)
    assert "Invalid JSON" in oip_error_of(await app_client.post(INFER, content=b"{nope"), 422)
    headers = {"Inference-Header-Content-Length": "999999"}
    assert "not a length within" in oip_error_of(
        await app_client.post(INFER, content=b"{}", headers=headers), 422
    )
    assert "between 1 and 8, got 9" in oip_error_of(
        await app_client.post(
            INFER,
            json={
                "inputs": [{**tensor, "data": [0.0] * (15 * 40 * 40 * 3)}],
                "parameters": {"horizon": 9},
            },
        ),
        422,
    )
    assert "no model named 'unet'" in oip_error_of(
        await app_client.get("/v2/models/unet/ready"), 404
    )
    assert (await app_client.get("/v2/health/ready")).json() == {"ready": True}


async def test_errors_before_any_route_take_the_protocols_shape(
    app_client: httpx.AsyncClient,
) -> None:
    """The middleware and the router answer these, not a route; the shape still follows
    the path."""
    big = b"x" * (DERIVED_LIMIT + 1)
    json_type = {"content-type": "application/json"}
    native = error_of(await app_client.post("/predict", content=big, headers=json_type), 413)
    oip = oip_error_of(await app_client.post(INFER, content=big, headers=json_type), 413)
    assert native["type"] == "payload_too_large" and native["message"] == oip
    assert "larger than the limit" in oip

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(DERIVED_LIMIT // 65536 + 1):
            yield b"x" * 65536

    assert "larger than the limit" in oip_error_of(
        await app_client.post(INFER, content=chunks(), headers=json_type), 413
    )
    assert oip_error_of(await app_client.get("/v2/nowhere"), 404) == "Not Found"
    assert error_of(await app_client.get("/nowhere"), 404) == {
        "type": "not_found",
        "message": "Not Found",
    }


async def test_unexpected_errors_are_500_without_a_trace(
    app: FastAPI, app_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(name: str | None) -> Any:
        raise RuntimeError("a bug, with a secret in its message")

    monkeypatch.setattr(app.state.registry, "lookup", broken)
    native = error_of(await app_client.get("/v1/models/convlstm"), 500)
    assert native == {"type": "internal_error", "message": "internal error; see the server log"}
    oip = oip_error_of(await app_client.get("/v2/models/convlstm"), 500)
    assert oip == "internal error; see the server log"


async def test_a_draining_service_refuses_new_work_in_each_protocols_shape() -> None:
    settings = Settings(model_path=COMMITTED_MODEL, serve_model_dir=False, warmup_runs=0)
    async with running_app(settings) as app, asgi_client(app) as client:
        registry: ModelRegistry = app.state.registry
        registry.begin_drain("the service is shutting down")
        r = await client.post("/predict", json={"frames": FRAMES})
        assert error_of(r, 503)["type"] == "shutting_down" and r.headers["retry-after"] == "1"
        r = await client.post(INFER, json={"inputs": [OIP_TENSOR]})
        assert "shutting down" in oip_error_of(r, 503) and r.headers["retry-after"] == "1"
        ready = error_of(await client.get("/readyz"), 503)
        assert ready == {"type": "not_ready", "message": "the service is shutting down"}
        # The protocol's health routes keep answering while draining, as /healthz and
        # /readyz do: live stays true (a draining pod must not be restarted), ready says no.
        r = await client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = await client.get("/v2/health/live")
        assert r.status_code == 200 and r.json() == {"live": True}
        assert (await client.get("/healthz")).status_code == 200
