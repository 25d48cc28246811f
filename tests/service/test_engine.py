"""The inference engine without HTTP: loading checks, the horizon roll-out."""

from __future__ import annotations

import asyncio

import anyio
import numpy as np
import pytest

from service.config import Settings
from service.errors import InvalidInput, ModelLoadError
from service.inference.engine import InferenceEngine, TensorInput, frame_spec
from service.metrics import Metrics
from tests.service.conftest import COMMITTED_MODEL


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine.load(Settings(model_path=COMMITTED_MODEL, max_horizon=4), Metrics())


def test_info_comes_from_the_card(engine: InferenceEngine) -> None:
    assert (engine.info.name, engine.info.version) == ("convlstm", "1.0.0")
    assert engine.spec.shape == (15, 40, 40, 3)
    assert engine.info.card["parameters"]["body"] == 745_680


def test_batched_rollout_equals_one_by_one(engine: InferenceEngine) -> None:
    """Two requests with horizons 2 and 1 in one batch, against plain session runs."""
    rng = np.random.default_rng(3)
    a, b = (rng.random((15, 40, 40, 3), dtype=np.float32) for _ in range(2))

    async def both() -> list[tuple[np.ndarray, float]]:
        await engine.start()
        try:
            jobs = [engine.scheduler.submit(a, 2, 30), engine.scheduler.submit(b, 1, 30)]
            return list(await asyncio.gather(*jobs))
        finally:
            await engine.stop()

    (got_a, _), (got_b, _) = anyio.run(both)
    first = engine.session.run(a[None])[0]
    second = engine.session.run(np.concatenate([a[1:], first[None]])[None])[0]
    np.testing.assert_allclose(got_a[0], first, atol=1e-5)
    np.testing.assert_allclose(got_a[1], second, atol=1e-5)
    np.testing.assert_allclose(got_b[0], engine.session.run(b[None])[0], atol=1e-5)


def test_predict_checks_horizon_against_the_setting(engine: InferenceEngine) -> None:
    source = TensorInput(data="", dtype="uint8", shape=[15, 40, 40, 3])
    with pytest.raises(InvalidInput, match="horizon: must be between 1 and 4, got 5"):
        anyio.run(lambda: engine.predict(source, horizon=5))


@pytest.mark.parametrize(
    ("inputs", "outputs", "words"),
    [
        (["N", "T", 40, 40, 3], ["N", 40, 40, 3], "fixed T, H, W, C"),
        (["N", 40, 40, 3], ["N", 40, 40, 3], "not (N, T, H, W, C)"),
        (["N", 15, 40, 40, 3], ["N", 20, 20, 3], "cannot be fed back in"),
    ],
)
def test_frame_spec_refuses_models_it_cannot_serve(
    inputs: list[int | str], outputs: list[int | str], words: str
) -> None:
    with pytest.raises(ModelLoadError, match=words.replace("(", r"\(").replace(")", r"\)")):
        frame_spec(inputs, outputs)
