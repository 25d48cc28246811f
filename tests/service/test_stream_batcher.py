"""Steps of many streams in one batched step-graph run: the committed model's real step
graph, requests of different lengths and horizons batched together and alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from fastapi import FastAPI

from convlstm_card import read_card
from service.api.examples import moving_square_frames
from service.config import Settings
from service.streams.batcher import StepWork, advance
from service.streams.session import StepSession
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app
from tests.service.test_streams import feed, open_stream, tensor_of


@pytest.fixture(scope="module")
def session() -> StepSession:
    spec = read_card(COMMITTED_MODEL.with_suffix(".json")).stream
    assert spec is not None
    return StepSession(COMMITTED_MODEL, spec, Settings(model_path=COMMITTED_MODEL))


def test_ragged_requests_batched_equal_each_run_alone(session: StepSession) -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((5, 40, 40, 3), dtype=np.float32)
    some_state = advance(session.run, [StepWork(frames[:2], 1, session.zero_state())])[0][0].state
    work = [
        StepWork(frames[:1], 1, session.zero_state()),
        StepWork(frames[:3], 2, some_state),
        StepWork(frames[1:3], 4, session.zero_state()),
    ]
    together, sizes = advance(session.run, work)
    # 1, 4 and 5 steps: three streams in the first run, two in the next three, one last.
    assert sizes == [3, 2, 2, 2, 1]
    for w, got in zip(work, together, strict=True):
        (alone,), _ = advance(session.run, [w])
        assert got.predicted.shape == (w.horizon, 40, 40, 3)
        np.testing.assert_allclose(got.predicted, alone.predicted, atol=1e-5)
        for name in alone.state:
            np.testing.assert_allclose(got.state[name], alone.state[name], atol=1e-5)
    # The state kept is the one after the last given frame, not after the fed-back ones.
    (after_three,), _ = advance(session.run, [StepWork(frames[1:3], 1, session.zero_state())])
    for name in after_three.state:
        np.testing.assert_allclose(together[2].state[name], after_three.state[name], atol=1e-6)


@pytest.fixture(scope="module")
async def batching_app() -> AsyncIterator[FastAPI]:
    settings = Settings(
        model_path=COMMITTED_MODEL, warmup_runs=0, serve_model_dir=False, max_batch_wait_ms=200
    )
    async with running_app(settings) as app:
        yield app


@pytest.mark.anyio
async def test_steps_of_several_streams_join_one_run(batching_app: FastAPI) -> None:
    frames = moving_square_frames()
    async with asgi_client(batching_app) as client:
        ids = [await open_stream(client) for _ in range(4)]
        answers = await asyncio.gather(
            *(feed(client, i, frames[n : n + 1]) for n, i in enumerate(ids))
        )
        metrics = (await client.get("/metrics")).text
        alone = await open_stream(client)
        check = await feed(client, alone, frames[2:3])
    assert all(r.status_code == 200 for r in answers)
    runs = [x for x in metrics.splitlines() if x.startswith("convlstm_stream_batch_size_count")]
    total = [x for x in metrics.splitlines() if x.startswith("convlstm_stream_batch_size_sum")]
    assert float(total[0].rsplit(" ", 1)[1]) == 4
    assert float(runs[0].rsplit(" ", 1)[1]) < 4  # fewer runs than streams: batched
    np.testing.assert_allclose(tensor_of(answers[2].json()), tensor_of(check.json()), atol=1e-5)
