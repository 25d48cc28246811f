"""A directory of tiny real models of every kind, served by their own cards: a greyscale
non-square next-frame model (the default), a frame-per-step RGB one, a tensor-output one,
and a broken file beside them (issue 13, "serve whatever comes").

Answers are compared with Keras' own ``predict`` on the same inputs: PNGs within 8-bit
rounding, the Open Inference Protocol's float32 within 1e-4."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from service.config import Settings
from tests.service.conftest import asgi_client, run_server, running_app
from tests.service.test_routes import error_of

pytest.importorskip("tf2onnx", reason="tf2onnx is installed with the `train` extra")
from tests.service.any_models import BuiltModel, build_all  # noqa: E402

pytestmark = pytest.mark.anyio
PNG_TOLERANCE = 1 / 255 + 1e-3
rng = np.random.default_rng(13)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, BuiltModel]]:
    directory = tmp_path_factory.mktemp("any_models")
    return directory, build_all(directory)


@pytest.fixture(scope="module")
def built(model_dir: tuple[Path, dict[str, BuiltModel]]) -> dict[str, BuiltModel]:
    return model_dir[1]


@pytest.fixture(scope="module")
async def client(
    model_dir: tuple[Path, dict[str, BuiltModel]],
) -> AsyncIterator[httpx.AsyncClient]:
    directory, built = model_dir
    settings = Settings(model_path=built["grey"].path, warmup_runs=1)
    async with running_app(settings) as app:
        async with asgi_client(app) as c:
            yield c


def png(pixels: NDArray[np.uint8]) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unpng(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(shape: tuple[int, ...]) -> NDArray[np.uint8]:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def as_model_input(frames: NDArray[np.uint8]) -> NDArray[np.float32]:
    return (frames.astype(np.float32) / 255.0)[None]


async def test_greyscale_pngs_in_greyscale_pngs_out(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    frames = pixels((8, 24, 48, 1))
    r = await client.post("/predict", json={"frames": [png(f) for f in frames]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "grey" and body["frame_shape"] == [24, 48, 1]
    (out,) = body["frames"]
    img = unpng(out)
    assert img.mode == "L" and img.size == (48, 24)
    expected = built["grey"].predict(as_model_input(frames))[0, ..., 0]
    got = np.asarray(img, dtype=np.float32) / 255.0
    np.testing.assert_allclose(got, expected, atol=PNG_TOLERANCE)


async def test_horizon_feeds_greyscale_predictions_back(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    frames = pixels((8, 24, 48, 1))
    r = await client.post(
        "/predict",
        json={"frames": [png(f) for f in frames], "horizon": 2, "return_tensor": True},
    )
    assert r.status_code == 200, r.text
    tensor = r.json()["tensor"]
    assert tensor["shape"] == [2, 24, 48, 1]
    got = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(2, 24, 48, 1)
    window = as_model_input(frames)
    first = built["grey"].predict(window)
    second = built["grey"].predict(np.concatenate([window[:, 1:], first[:, None]], axis=1))
    np.testing.assert_allclose(got, np.concatenate([first, second]), atol=1e-4)


async def test_rgb_pngs_to_a_greyscale_model_are_converted_by_luminance(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    rgb = pixels((8, 24, 48, 3))
    r = await client.post("/predict", json={"frames": [png(f) for f in rgb], "return_tensor": True})
    assert r.status_code == 200, r.text
    grey = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in rgb])[..., None]
    expected = built["grey"].predict(as_model_input(grey))
    tensor = r.json()["tensor"]
    got = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(tensor["shape"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


async def test_wrong_size_and_count_are_422s_that_say_what_the_model_needs(
    client: httpx.AsyncClient,
) -> None:
    frames = [png(f) for f in pixels((8, 24, 48, 1))]
    frames[3] = png(pixels((48, 24, 1)))  # transposed: 24 wide, 48 high
    error = error_of(await client.post("/predict", json={"frames": frames}), 422)
    assert error["location"] == "frames[3]"
    assert "24x48" in error["message"] and "needs 48x24" in error["message"]
    assert "L, 1 channel" in error["message"]
    error = error_of(await client.post("/predict", json={"frames": frames[:5]}), 422)
    assert error["location"] == "frames"
    assert "expected 8 frames, got 5" in error["message"]
    assert "takes 8 frames of 48x24" in error["message"]


async def test_oip_on_the_greyscale_model_equals_keras(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    x = rng.random((2, 8, 24, 48, 1), dtype=np.float32)
    r = await client.post("/v2/models/grey/infer", json=infer_body(x))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["shape"] == [2, 24, 48, 1]
    np.testing.assert_allclose(
        np.reshape(out["data"], out["shape"]), built["grey"].predict(x), atol=1e-4
    )


def infer_body(x: NDArray[np.float32], **parameters: object) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "frames",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
        "parameters": parameters,
    }


async def test_frame_per_step_predicts_its_last_step(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    frames = pixels((4, 8, 12, 3))
    r = await client.post(
        "/predict", json={"model": "steps", "frames": [png(f) for f in frames], "horizon": 3}
    )
    assert r.status_code == 200, r.text
    predicted = [np.asarray(unpng(f), dtype=np.float32) / 255.0 for f in r.json()["frames"]]
    assert [unpng(f).mode for f in r.json()["frames"]] == ["RGB"] * 3
    window = as_model_input(frames)
    for got in predicted:
        last = built["steps"].predict(window)[:, -1]
        np.testing.assert_allclose(got, last[0], atol=PNG_TOLERANCE)
        # Fed back from the rounded-free prediction, as the service does.
        window = np.concatenate([window[:, 1:], last[:, None]], axis=1)


async def test_greyscale_pngs_to_an_rgb_model_are_repeated(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    grey = pixels((4, 8, 12, 1))
    r = await client.post(
        "/predict",
        json={"model": "steps", "frames": [png(f) for f in grey], "return_tensor": True},
    )
    assert r.status_code == 200, r.text
    expected = built["steps"].predict(as_model_input(np.repeat(grey, 3, axis=-1)))[:, -1]
    tensor = r.json()["tensor"]
    got = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(tensor["shape"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


async def test_oip_on_frame_per_step_answers_the_graphs_output(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    x = rng.random((3, 4, 8, 12, 3), dtype=np.float32)
    r = await client.post("/v2/models/steps/infer", json=infer_body(x))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["shape"] == [3, 4, 8, 12, 3]
    np.testing.assert_allclose(
        np.reshape(out["data"], out["shape"]), built["steps"].predict(x), atol=1e-4
    )
    meta = (await client.get("/v2/models/steps")).json()
    assert meta["parameters"] == {"task": "next_frame", "output_kind": "frame_per_step"}


async def test_tensor_output_model_serves_over_oip_only(
    client: httpx.AsyncClient, built: dict[str, BuiltModel]
) -> None:
    x = rng.random((2, 4, 8, 8, 1), dtype=np.float32)
    r = await client.post("/v2/models/scores/infer", json=infer_body(x))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["shape"] == [2, 3]
    np.testing.assert_allclose(
        np.reshape(out["data"], out["shape"]), built["scores"].predict(x), atol=1e-4
    )
    frames = [png(f) for f in pixels((4, 8, 8, 1))]
    error = error_of(await client.post("/predict", json={"model": "scores", "frames": frames}), 422)
    assert error["location"] == "model"
    assert "/v2/models/scores/infer" in error["message"]
    assert "output kind tensor" in error["message"]
    r = await client.post("/v2/models/scores/infer", json=infer_body(x, horizon=2))
    assert r.status_code == 422 and "one step" in r.json()["error"]


async def test_broken_model_is_reported_and_the_others_serve(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["models"] == ["grey", "scores", "steps"]
    (failed,) = body["failed"]
    assert failed["name"] == "broken" and failed["file"].endswith("broken.onnx")
    assert "cannot be loaded" in failed["reason"]
    served = {m["name"]: m for m in body["served"]}
    assert (served["steps"]["task"], served["steps"]["output_kind"]) == (
        "next_frame",
        "frame_per_step",
    )
    assert served["steps"]["predict"]["max_horizon"] == 8
    assert served["scores"]["predict"] is None and served["scores"]["output_shape"][1:] == [3]
    assert served["grey"]["predict"]["input_mode"] == "L"
    models = (await client.get("/v1/models")).json()
    assert [f["name"] for f in models["failed"]] == ["broken"]
    error = error_of(await client.post("/predict", json={"model": "broken", "frames": []}), 404)
    assert "failed to load" in error["message"]
    metrics = (await client.get("/metrics")).text
    assert 'convlstm_model_load_failures_total{model="broken"} 1.0' in metrics
    index = (await client.post("/v2/repository/index", json={})).json()
    (row,) = [r for r in index if r["name"] == "broken"]
    assert row["state"] == "UNAVAILABLE" and "cannot be loaded" in row["reason"]
    card = (await client.get("/v1/models/grey")).json()
    assert card["served"]["predict"]["frame_shape"] == [24, 48, 1]


async def test_strict_readiness_and_exit_on_model_error(
    model_dir: tuple[Path, dict[str, BuiltModel]], caplog: pytest.LogCaptureFixture
) -> None:
    _, built = model_dir
    strict = Settings(model_path=built["grey"].path, warmup_runs=0, strict_readiness=True)
    with caplog.at_level(logging.ERROR, logger="service.registry"):
        async with running_app(strict) as app:
            async with asgi_client(app) as c:
                error = error_of(await c.get("/readyz"), 503)
                assert "broken" in error["message"]
                assert (await c.get("/v2/health/ready")).status_code == 503
                # Not ready for a balancer, yet every loaded model still answers.
                x = rng.random((1, 8, 24, 48, 1), dtype=np.float32)
                r = await c.post("/v2/models/grey/infer", json=infer_body(x))
                assert r.status_code == 200, r.text
    lines = [r.getMessage() for r in caplog.records if "broken.onnx" in r.getMessage()]
    assert len(lines) == 1 and "not served" in lines[0]
    exiting = Settings(model_path=built["grey"].path, warmup_runs=0, exit_on_model_error=True)
    with pytest.raises(Exception, match=r"broken\.onnx"):
        async with running_app(exiting):
            pass


def test_horizon_on_a_model_whose_frame_differs_is_refused() -> None:
    from convlstm_card import ModelCard, TensorSpec
    from service.errors import InvalidInput
    from service.tasks import NextFrameTask

    card = ModelCard(
        name="half",
        task="next_frame",
        output_kind="frame_per_step",
        inputs=[TensorSpec(name="frames", shape=["N", 4, 8, 8, 3])],
        outputs=[TensorSpec(name="out", shape=["N", 4, 4, 4, 1])],
    )
    task = NextFrameTask.from_card(card, max_horizon=8)
    assert task.steps(1) == 1 and task.describe()["max_horizon"] == 1
    with pytest.raises(InvalidInput, match="cannot be fed back in"):
        task.steps(2)


def test_real_server_starts_beside_a_broken_model(
    model_dir: tuple[Path, dict[str, BuiltModel]],
) -> None:
    _, built = model_dir
    with run_server(built["grey"].path, env={"CONVLSTM_WARMUP_RUNS": "0"}) as server:
        with server.client() as c:
            ready = c.get("/readyz").json()
            assert ready["models"] == ["grey", "scores", "steps"]
            assert [f["name"] for f in ready["failed"]] == ["broken"]
            frames = [png(f) for f in pixels((4, 8, 12, 3))]
            r = c.post("/predict", json={"model": "steps", "frames": frames})
            assert r.status_code == 200, r.text
        lines = [line for line in server.output().splitlines() if "broken.onnx" in line]
        assert len(lines) == 1, lines


async def test_openapi_examples_follow_the_default_model(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["examples"]
    assert set(examples) == {"frames", "horizon"}
    for example in examples.values():
        frames = example["value"]["frames"]
        assert len(frames) == 8
        assert {(unpng(f).mode, unpng(f).size) for f in frames} == {("L", (48, 24))}
        r = await client.post("/predict", json=example["value"])
        assert r.status_code == 200, r.text


def _bad_bodies() -> list[dict[str, object]]:
    cmyk = io.BytesIO()
    Image.new("CMYK", (48, 24)).save(cmyk, "JPEG")
    deep = io.BytesIO()
    Image.new("I;16", (48, 24)).save(deep, "PNG")
    odd = [base64.b64encode(b.getvalue()).decode() for b in (cmyk, deep)]
    grey = [png(f) for f in pixels((8, 24, 48, 1))]
    return [
        {"frames": []},
        {"frames": grey[:1]},
        {"frames": grey, "horizon": 0},
        {"frames": grey, "horizon": 99},
        {"frames": grey, "horizon": 2},
        {"frames": [odd[0]] * 8},
        {"frames": [odd[1]] * 8},
        {"frames": ["AAAA"] * 8},
        {"frames": [png(pixels((8, 12, 3)))] * 4, "horizon": 3},
        {"tensor": {"data": "AAAA", "dtype": "uint8", "shape": [8, 24, 48, 1]}},
        {"tensor": {"data": "", "dtype": "float32", "shape": [4, 8, 12, 3]}},
    ]


@pytest.mark.parametrize("name", ["grey", "steps", "scores", "broken", "nope", None])
async def test_no_input_is_answered_with_a_500(client: httpx.AsyncClient, name: str | None) -> None:
    for body in _bad_bodies():
        r = await client.post("/predict", json={**body, "model": name})
        assert 400 <= r.status_code < 500 or r.status_code == 200, (body, r.text)
    if name is None:
        return
    for shape in ([1, 8, 24, 48, 1], [1, 4, 8, 12, 3], [1, 4, 8, 8, 1], [0, 4], [2]):
        for horizon in (1, 2):
            x = np.zeros(shape, dtype=np.float32)
            r = await client.post(f"/v2/models/{name}/infer", json=infer_body(x, horizon=horizon))
            assert 400 <= r.status_code < 500 or r.status_code == 200, (shape, r.text)
    for path in (f"/v1/models/{name}", f"/v2/models/{name}", f"/v2/models/{name}/ready"):
        assert (await client.get(path)).status_code in (200, 404, 503), path
