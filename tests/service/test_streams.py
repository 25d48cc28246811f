"""Streams in process: the state kept between requests, the contract of /v1/streams, its
errors, limits, expiry and metrics, on the committed models."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from service.api.examples import moving_square_frames
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL, TINY_FRAMES, asgi_client, running_app

pytestmark = pytest.mark.anyio

FRAMES = moving_square_frames()


def tensor_of(body: dict[str, object]) -> np.ndarray:
    t = body["tensor"]
    assert isinstance(t, dict)
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


async def open_stream(client: httpx.AsyncClient, **body: object) -> str:
    r = await client.post("/v1/streams", json=body or None)
    assert r.status_code == 201, r.text
    stream_id: str = r.json()["stream_id"]
    return stream_id


async def feed(
    client: httpx.AsyncClient, stream_id: str, frames: list[str], **more: object
) -> httpx.Response:
    return await client.post(
        f"/v1/streams/{stream_id}", json={"frames": frames, "return_tensor": True, **more}
    )


async def test_frames_one_at_a_time_give_predicts_answer_after_the_fifteenth(
    app_client: httpx.AsyncClient,
) -> None:
    stream_id = await open_stream(app_client)
    answers = []
    for frame in FRAMES:
        r = await feed(app_client, stream_id, [frame])
        assert r.status_code == 200, r.text
        answers.append(r.json())
    windowed = await app_client.post("/predict", json={"frames": FRAMES, "return_tensor": True})
    assert windowed.status_code == 200
    last = answers[-1]
    # The same response schema as /predict.
    assert set(last) == set(windowed.json())
    assert (last["model"], last["horizon"], last["frame_shape"]) == ("convlstm", 1, [40, 40, 3])
    np.testing.assert_allclose(tensor_of(last), tensor_of(windowed.json()), atol=1e-5)
    # Before the 15th frame the stream answers from fewer frames: another prediction.
    assert np.abs(tensor_of(answers[5]) - tensor_of(windowed.json())).max() > 1e-3
    info = (await app_client.get(f"/v1/streams/{stream_id}")).json()
    assert (info["model"], info["frames_seen"], info["steps"]) == ("convlstm", 15, 15)


async def test_several_frames_and_a_horizon_in_one_request(app_client: httpx.AsyncClient) -> None:
    whole, parts = await open_stream(app_client), await open_stream(app_client)
    r1 = await feed(app_client, whole, FRAMES, horizon=3)
    await feed(app_client, parts, FRAMES[:9])
    r2 = await feed(app_client, parts, FRAMES[9:], horizon=3)
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert r1.json()["frame_shape"] == [40, 40, 3] and len(r1.json()["frames"]) == 3
    np.testing.assert_allclose(tensor_of(r1.json()), tensor_of(r2.json()), atol=1e-5)
    # A horizon's fed-back predictions do not enter the stream: the next real frame
    # continues from the 15 frames seen, as a stream never asked for a horizon does.
    plain = await open_stream(app_client)
    await feed(app_client, plain, FRAMES)
    after_horizon = await feed(app_client, whole, FRAMES[:1])
    after_plain = await feed(app_client, plain, FRAMES[:1])
    np.testing.assert_allclose(
        tensor_of(after_horizon.json()), tensor_of(after_plain.json()), atol=1e-6
    )
    info = (await app_client.get(f"/v1/streams/{whole}")).json()
    assert (info["frames_seen"], info["steps"]) == (16, 18)


async def test_tensor_input_of_any_number_of_frames(app_client: httpx.AsyncClient) -> None:
    stream_id = await open_stream(app_client, model="convlstm")
    pixels = np.zeros((2, 40, 40, 3), np.uint8)
    body = {"data": base64.b64encode(pixels.tobytes()).decode(), "dtype": "uint8"}
    r = await app_client.post(
        f"/v1/streams/{stream_id}", json={"tensor": {**body, "shape": [2, 40, 40, 3]}}
    )
    assert r.status_code == 200, r.text
    assert (await app_client.get(f"/v1/streams/{stream_id}")).json()["frames_seen"] == 2


async def test_delete_then_the_id_says_it_was_closed(app_client: httpx.AsyncClient) -> None:
    stream_id = await open_stream(app_client)
    r = await app_client.delete(f"/v1/streams/{stream_id}")
    assert r.status_code == 204 and r.content == b""
    for method in ("GET", "DELETE"):
        gone = await app_client.request(method, f"/v1/streams/{stream_id}")
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "unknown_stream"
        assert "was closed" in gone.json()["error"]["message"]
    step = await feed(app_client, stream_id, FRAMES[:1])
    assert step.status_code == 404 and "was closed" in step.json()["error"]["message"]


async def test_unknown_id_is_404_saying_so(app_client: httpx.AsyncClient) -> None:
    r = await feed(app_client, "nope", FRAMES[:1])
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["location"] == "stream_id" and "no stream 'nope'" in error["message"]
    assert "not a stream id of this service" in error["message"]
    r = await feed(app_client, "0" * 32, FRAMES[:1])
    assert r.status_code == 404
    assert "never opened, closed, or expired" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("cnn_lstm", 422, "no ConvLSTM state"),
        ("missing", 404, "no model named"),
    ],
)
async def test_models_without_streams_are_refused(
    app_client: httpx.AsyncClient, model: str, status: int, words: str
) -> None:
    r = await app_client.post("/v1/streams", json={"model": model})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert r.json()["error"]["location"] == "model"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"frames": []}, "frames"),
        ({"frames": ["not base64!"]}, "frames[0]"),
        ({"frames": FRAMES[:1], "horizon": 0}, "horizon"),
        ({"frames": FRAMES[:1], "horizon": 9}, "horizon"),
        ({"tensor": {"data": "", "dtype": "uint8", "shape": [40, 40, 3]}}, "tensor.shape"),
        ({"tensor": {"data": "AAAA", "dtype": "uint8", "shape": [1, 40, 40, 3]}}, "tensor.data"),
        ({"frames": FRAMES[:1], "tensor": {"data": "", "dtype": "uint8", "shape": [1]}}, "body"),
    ],
)
async def test_bad_steps_are_422_and_leave_the_stream_as_it_was(
    app_client: httpx.AsyncClient, body: dict[str, object], where: str
) -> None:
    stream_id = await open_stream(app_client)
    await feed(app_client, stream_id, FRAMES[:2])
    r = await app_client.post(f"/v1/streams/{stream_id}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["location"] == where, r.json()
    assert (await app_client.get(f"/v1/streams/{stream_id}")).json()["frames_seen"] == 2


async def test_concurrent_requests_on_one_stream_run_one_at_a_time(
    app_client: httpx.AsyncClient,
) -> None:
    together, alone = await open_stream(app_client), await open_stream(app_client)
    # The same frame each time, so whatever order they run in, five steps of it must
    # give the state five sequential steps give: none lost, none run on a stale state.
    answers = await asyncio.gather(*(feed(app_client, together, FRAMES[:1]) for _ in range(5)))
    assert all(r.status_code == 200 for r in answers)
    for _ in range(5):
        await feed(app_client, alone, FRAMES[:1])
    a = await feed(app_client, together, FRAMES[1:2])
    b = await feed(app_client, alone, FRAMES[1:2])
    np.testing.assert_allclose(tensor_of(a.json()), tensor_of(b.json()), atol=1e-6)
    assert (await app_client.get(f"/v1/streams/{together}")).json()["frames_seen"] == 6


@pytest.fixture(scope="module")
async def small_table() -> AsyncIterator[FastAPI]:
    settings = Settings(
        model_path=COMMITTED_MODEL,
        warmup_runs=0,
        serve_model_dir=False,
        max_streams=2,
        stream_idle_s=0.4,
    )
    async with running_app(settings) as app:
        yield app


async def test_full_table_is_503_with_retry_after(small_table: FastAPI) -> None:
    async with asgi_client(small_table) as client:
        ids = [await open_stream(client), await open_stream(client)]
        r = await client.post("/v1/streams")
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "streams_full"
        assert int(r.headers["retry-after"]) >= 1
        for stream_id in ids:
            assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 204
        assert (await client.post("/v1/streams")).status_code == 201
        metrics = (await client.get("/metrics")).text
        assert "convlstm_streams_refused_total 1.0" in metrics


async def test_idle_streams_expire_and_say_so(small_table: FastAPI) -> None:
    async with asgi_client(small_table) as client:
        stream_id = await open_stream(client)
        info = (await client.get(f"/v1/streams/{stream_id}")).json()
        assert 0 < info["expires_in_s"] <= 0.4
        assert info["state_bytes"] == 40 * 40 * (30 + 50 + 60 + 70) * 2 * 4
        await asyncio.sleep(0.7)
        r = await client.get(f"/v1/streams/{stream_id}")
        assert r.status_code == 404 and "expired after 0.4 s" in r.json()["error"]["message"]
        metrics = (await client.get("/metrics")).text
        assert 'convlstm_streams_expired_total{model="convlstm"}' in metrics


async def test_metrics_count_streams_steps_and_state(app_client: httpx.AsyncClient) -> None:
    def value(text: str, line_start: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    before = (await app_client.get("/metrics")).text
    stream_id = await open_stream(app_client)
    await feed(app_client, stream_id, FRAMES[:3], horizon=2)
    after = (await app_client.get("/metrics")).text
    steps = 'convlstm_stream_steps_total{model="convlstm"}'
    assert value(after, steps) - (value(before, steps) if steps in before else 0) == 4
    opened = 'convlstm_streams_open{model="convlstm"}'
    assert value(after, opened) == value(before, opened) + 1
    state = "convlstm_stream_state_bytes"
    assert value(after, state) - value(before, state) == 2_688_000


async def test_predict_rolls_out_from_state_when_asked(app_client: httpx.AsyncClient) -> None:
    async def predict(**more: object) -> np.ndarray:
        r = await app_client.post(
            "/predict", json={"frames": FRAMES, "return_tensor": True, **more}
        )
        assert r.status_code == 200, r.text
        return tensor_of(r.json())

    state = await predict(horizon=3, rollout="state")
    window = await predict(horizon=3, rollout="window")
    assert state.shape == window.shape == (3, 40, 40, 3)
    # The first frame is the same computation; later ones differ: the window forgets the
    # oldest real frames, the state does not.
    np.testing.assert_allclose(state[0], window[0], atol=1e-5)
    assert np.abs(state[1:] - window[1:]).max() > 1e-4
    # A stream given the same frames and horizon rolls out the same way.
    stream_id = await open_stream(app_client)
    r = await feed(app_client, stream_id, FRAMES, horizon=3)
    np.testing.assert_allclose(tensor_of(r.json()), state, atol=1e-6)


async def test_state_rollout_of_a_model_without_streams_is_422(
    app_client: httpx.AsyncClient,
) -> None:
    r = await app_client.post(
        "/predict", json={"frames": FRAMES, "model": "cnn_lstm", "horizon": 2, "rollout": "state"}
    )
    assert r.status_code == 422 and r.json()["error"]["location"] == "model"
    r = await app_client.post("/predict", json={"frames": FRAMES, "rollout": "sideways"})
    assert r.status_code == 422 and r.json()["error"]["location"] == "rollout"


async def test_a_bad_step_graph_leaves_the_model_serving_without_streams(
    tiny_model: Path, tmp_path: Path
) -> None:
    for path in tiny_model.parent.iterdir():
        if path.is_file() and path.stem.startswith(tiny_model.stem):
            shutil.copy(path, tmp_path / path.name)
    step = tmp_path / f"{tiny_model.stem}.step.onnx"
    step.write_bytes(step.read_bytes()[:-10])  # cut short: no longer what the card says
    settings = Settings(model_path=tmp_path / tiny_model.name, warmup_runs=0)
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post("/v1/streams")
        assert r.status_code == 422
        assert "step graph cannot be used" in r.json()["error"]["message"]
        assert "sha256" in r.json()["error"]["message"]
        pixels = np.zeros((TINY_FRAMES, 40, 40, 3), np.uint8)
        body = {"data": base64.b64encode(pixels.tobytes()).decode(), "dtype": "uint8"}
        ok = await client.post("/predict", json={"tensor": {**body, "shape": list(pixels.shape)}})
        assert ok.status_code == 200, ok.text


async def test_a_tiny_exported_stack_streams_too(tiny_model: Path) -> None:
    settings = Settings(model_path=tiny_model, warmup_runs=0)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (TINY_FRAMES, 40, 40, 3), dtype=np.uint8)

    def body(frames: np.ndarray) -> dict[str, object]:
        data = base64.b64encode(frames.tobytes()).decode()
        tensor = {"data": data, "dtype": "uint8", "shape": list(frames.shape)}
        return {"tensor": tensor, "return_tensor": True}

    async with running_app(settings) as app, asgi_client(app) as client:
        stream_id = await open_stream(client)
        for t in range(TINY_FRAMES):
            last = await client.post(f"/v1/streams/{stream_id}", json=body(pixels[t : t + 1]))
        windowed = await client.post("/predict", json=body(pixels))
    np.testing.assert_allclose(tensor_of(last.json()), tensor_of(windowed.json()), atol=1e-5)


async def test_live_accuracy_scores_each_prediction_when_its_frame_arrives(
    app_client: httpx.AsyncClient,
) -> None:
    def value(text: str, line_start: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(line_start)), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    count = 'convlstm_stream_prediction_mse_count{model="convlstm",version="'
    copy_sum = 'convlstm_stream_copy_last_mse_sum{model="convlstm",version="'
    before = (await app_client.get("/metrics")).text
    stream_id = await open_stream(app_client)
    answers = []
    for i in range(4):  # one frame a request: each request's frame scores the last answer
        r = await feed(app_client, stream_id, FRAMES[i : i + 1])
        assert r.status_code == 200, r.text
        answers.append(tensor_of(r.json())[0])
    info = (await app_client.get(f"/v1/streams/{stream_id}")).json()["accuracy"]
    assert info["scored"] == 3  # the first request had nothing to score
    # The same MSEs, computed here from the answers and the frames that followed them.
    frames = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB"), np.float32) / 255
        for f in FRAMES[:4]
    ]
    mse = [float(np.mean((answers[i] - frames[i + 1]) ** 2)) for i in range(3)]
    copy = [float(np.mean((frames[i] - frames[i + 1]) ** 2)) for i in range(3)]
    assert info["mse"] == pytest.approx(np.mean(mse), rel=1e-4)
    assert info["copy_last_mse"] == pytest.approx(np.mean(copy), rel=1e-4)
    after = (await app_client.get("/metrics")).text
    assert value(after, count) - value(before, count) == 3
    assert value(after, copy_sum) > value(before, copy_sum)  # the square moves: copying errs
    assert info["mse"] > 0 and info["copy_last_mse"] > 0
    assert info["ratio"] == pytest.approx(info["mse"] / info["copy_last_mse"])
