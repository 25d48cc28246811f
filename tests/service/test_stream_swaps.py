"""Streams across model swaps, in process with real onnxruntime sessions: a stream stays
on the version it opened with while new streams go to the new one; the replaced
version's step graph is released with its last stream; past
``stream_retained_versions`` the oldest kept version is released and its streams answer
410; an unload ends a model's streams. Versions are copies of the committed ConvLSTM
(window and step graph), later ones with a bias shifted in both graphs alike, so that
each version predicts differently and its stream must equal its own window."""

from __future__ import annotations

import asyncio
import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convlstm_card import card_path, sha256_of
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL
from tests.service.test_repository import CNN, FLAT, index, serving
from tests.service.test_streams import FRAMES, feed, open_stream, tensor_of

pytestmark = pytest.mark.anyio
NAME = "conv"
STEP = COMMITTED_MODEL.with_name("convlstm.step.onnx")
# The biases shifted in later versions: the first layer's gates (so the state differs)
# and the output convolution's, by their names in the window and the step graph.
SHIFTED = ("convlstm_1_1/Reshape:0", "next_frame_1/Reshape:0")


def shifted_copy(source: Path, target: Path, shift: float) -> None:
    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.name.endswith(SHIFTED):
            value = numpy_helper.to_array(tensor) + np.float32(shift)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))
    onnx.save(model, target)


def add_stream_version(root: Path, version: int) -> None:
    """``root/conv/VERSION/``: the committed ConvLSTM, its step graph and its card, with
    the biases shifted by 0.05 per version after the first."""
    directory = root / NAME / str(version)
    directory.mkdir(parents=True)
    graph, step = directory / "model.onnx", directory / STEP.name
    shift = 0.05 * (version - 1)
    shifted_copy(COMMITTED_MODEL, graph, shift)
    shifted_copy(STEP, step, shift)
    card = json.loads(card_path(COMMITTED_MODEL).read_text())
    card["sha256"] = sha256_of(graph)
    card["stream"]["step_graph"]["sha256"] = sha256_of(step)
    card_path(graph).write_text(json.dumps(card))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copy(CNN, tmp_path / f"{FLAT}.onnx")
    shutil.copy(card_path(CNN), tmp_path / f"{FLAT}.json")
    add_stream_version(tmp_path, 1)
    return tmp_path


def settings(repo: Path, **fields: Any) -> Settings:
    return Settings(
        model_path=repo / f"{FLAT}.onnx", warmup_runs=0, model_control="explicit", **fields
    )


async def load(client: httpx.AsyncClient, version: int, repo: Path) -> None:
    add_stream_version(repo, version)
    r = await client.post(f"/v2/repository/models/{NAME}/load", json={})
    assert r.status_code == 200, r.text


async def window(client: httpx.AsyncClient) -> tuple[str, np.ndarray]:
    """The served version's windowed prediction after the 15 frames."""
    r = await client.post("/predict", json={"frames": FRAMES, "model": NAME, "return_tensor": True})
    assert r.status_code == 200, r.text
    return r.json()["model_version"], tensor_of(r.json())


async def step(client: httpx.AsyncClient, stream_id: str, frames: list[str]) -> np.ndarray:
    r = await feed(client, stream_id, frames)
    assert r.status_code == 200, r.text
    return tensor_of(r.json())


async def test_a_stream_stays_on_its_version_until_it_closes(repo: Path) -> None:
    async with serving(settings(repo)) as (app, client):
        v1, window_v1 = await window(client)
        old = await open_stream(client, model=NAME)
        await step(client, old, FRAMES[:10])
        held = app.state.streams.models[NAME].session.graph.onnx_sessions
        released = [weakref.ref(s) for s in held]
        del held

        await load(client, 2, repo)
        v2, window_v2 = await window(client)
        assert (v1, v2) == ("1", "2")
        assert np.abs(window_v1 - window_v2).max() > 1e-2  # the versions differ
        # The old stream carries on on version 1, exactly as version 1's window.
        np.testing.assert_allclose(await step(client, old, FRAMES[10:]), window_v1, atol=1e-5)
        assert (await client.get(f"/v1/streams/{old}")).json()["model_version"] == "1"
        # A new stream opens on version 2 and equals its window.
        new = await open_stream(client, model=NAME)
        assert (await client.get(f"/v1/streams/{new}")).json()["model_version"] == "2"
        np.testing.assert_allclose(await step(client, new, FRAMES), window_v2, atol=1e-5)

        # Shown as kept, on /readyz and in the repository index.
        ready = (await client.get("/readyz")).json()
        assert [
            (r["model"], r["model_version"], r["open_streams"]) for r in ready["streams_retained"]
        ] == [(NAME, "1", 1)]
        rows = [r for r in await index(client) if r["name"] == NAME]
        assert rows == [
            {"name": NAME, "version": "2", "state": "READY", "reason": ""},
            {
                "name": NAME,
                "version": "1",
                "state": "UNLOADING",
                "reason": "step graph kept for 1 open stream(s); new streams use version 2",
            },
        ]

        # Its last stream closed, version 1's step graph goes.
        assert (await client.delete(f"/v1/streams/{old}")).status_code == 204
        assert (await client.get("/readyz")).json()["streams_retained"] == []
        assert [r["version"] for r in await index(client) if r["name"] == NAME] == ["2"]
        async with asyncio.timeout(10):
            while any(r() is not None for r in released):
                await asyncio.sleep(0.02)
        # The old id now says it was closed; version 2's stream carries on.
        assert (await client.get(f"/v1/streams/{old}")).status_code == 404
        await step(client, new, FRAMES[:1])


async def test_past_the_bound_the_oldest_kept_version_answers_410(repo: Path) -> None:
    async with serving(settings(repo, stream_retained_versions=1)) as (_, client):
        on_v1 = await open_stream(client, model=NAME)
        await step(client, on_v1, FRAMES[:3])
        await load(client, 2, repo)
        on_v2 = await open_stream(client, model=NAME)
        await step(client, on_v2, FRAMES[:3])
        await load(client, 3, repo)  # keeps version 2, releases version 1

        gone = await feed(client, on_v1, FRAMES[3:4])
        assert gone.status_code == 410, gone.text
        error = gone.json()["error"]
        assert error["type"] == "stream_gone" and error["location"] == "stream_id"
        assert f"model '{NAME}' version 1, which was unloaded" in error["message"]
        assert "stream_retained_versions" in error["message"]
        assert (await client.get(f"/v1/streams/{on_v1}")).status_code == 410
        # Version 2's stream carries on; the index keeps version 2 only.
        await step(client, on_v2, FRAMES[3:4])
        rows = [(r["version"], r["state"]) for r in await index(client) if r["name"] == NAME]
        assert rows == [("3", "READY"), ("2", "UNLOADING")]


async def test_no_kept_versions_ends_a_replaced_versions_streams(repo: Path) -> None:
    async with serving(settings(repo, stream_retained_versions=0)) as (_, client):
        stream_id = await open_stream(client, model=NAME)
        await load(client, 2, repo)
        gone = await feed(client, stream_id, FRAMES[:1])
        assert gone.status_code == 410 and "version 1, which was unloaded" in gone.text


async def test_an_unload_ends_the_models_streams(repo: Path) -> None:
    async with serving(settings(repo)) as (_, client):
        stream_id = await open_stream(client, model=NAME)
        await step(client, stream_id, FRAMES[:2])
        r = await client.post(f"/v2/repository/models/{NAME}/unload", json={})
        assert r.status_code == 200, r.text
        gone = await feed(client, stream_id, FRAMES[2:3])
        assert gone.status_code == 410, gone.text
        assert f"its model '{NAME}' (version 1) was unloaded" in gone.json()["error"]["message"]
        assert (await client.post("/v1/streams", json={"model": NAME})).status_code == 404
        # Loaded again, new streams open on it.
        r = await client.post(f"/v2/repository/models/{NAME}/load", json={})
        assert r.status_code == 200, r.text
        await step(client, await open_stream(client, model=NAME), FRAMES[:1])
