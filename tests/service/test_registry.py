"""Loading, looking up and draining models without HTTP: the card checked against the
file, the task adapter the card picks, the runner's batched roll-out."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import anyio
import numpy as np
import pytest

from convlstm_card import ModelCard
from service.config import Settings
from service.errors import InvalidInput, ModelLoadError, NotReady, UnknownModel
from service.inference.card import served_card
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel, load_model
from service.tasks import NextFrameTask, TensorTask, adapter_for
from service.tasks.next_frame import TensorInput, frame_spec
from tests.service.conftest import COMMITTED_MODEL

GRAPH_IN = {"name": "frames", "shape": ["N", 15, 40, 40, 3]}
GRAPH_OUT = {"name": "next_frame", "shape": ["N", 40, 40, 3]}


@pytest.fixture(scope="module")
def served() -> ServedModel:
    settings = Settings(model_path=COMMITTED_MODEL, max_horizon=4)
    return load_model(settings, Metrics(), COMMITTED_MODEL)


def test_info_comes_from_the_card(served: ServedModel) -> None:
    assert (served.info.name, served.info.version) == ("convlstm", "1.0.0")
    assert isinstance(served.task, NextFrameTask)
    assert served.task.spec.shape == (15, 40, 40, 3)
    card = served.info.card
    assert card.parameters is not None and card.parameters.body == 745_680


def test_batched_rollout_equals_one_by_one(served: ServedModel) -> None:
    """Two requests with horizons 2 and 1 in one batch, against plain session runs."""
    rng = np.random.default_rng(3)
    a, b = (rng.random((15, 40, 40, 3), dtype=np.float32) for _ in range(2))
    runner = served.runner

    async def both() -> list[tuple[np.ndarray, float]]:
        await runner.start()
        try:
            jobs = [runner.scheduler.submit(a, 2, 30), runner.scheduler.submit(b, 1, 30)]
            return list(await asyncio.gather(*jobs))
        finally:
            await runner.stop()

    (got_a, _), (got_b, _) = anyio.run(both)
    first = runner.session.run(a[None])[0]
    second = runner.session.run(np.concatenate([a[1:], first[None]])[None])[0]
    np.testing.assert_allclose(got_a[0], first, atol=1e-5)
    np.testing.assert_allclose(got_a[1], second, atol=1e-5)
    np.testing.assert_allclose(got_b[0], runner.session.run(b[None])[0], atol=1e-5)


def test_predict_checks_horizon_against_the_setting(served: ServedModel) -> None:
    assert isinstance(served.task, NextFrameTask)
    task = served.task
    source = TensorInput(data="", dtype="uint8", shape=[15, 40, 40, 3])
    with pytest.raises(InvalidInput, match="horizon: must be between 1 and 4, got 5"):
        anyio.run(lambda: task.predict(served.runner, source, horizon=5))


def card(
    inputs: list[int | str],
    outputs: list[int | str],
    value_range: list[float] | None = None,
    **fields: object,
) -> ModelCard:
    return ModelCard.model_validate(
        {
            "name": "m",
            "inputs": [{"name": "x", "shape": inputs, "range": value_range}],
            "outputs": [{"name": "y", "shape": outputs}],
            **fields,
        }
    )


def test_frame_spec_serves_channels_no_image_holds_as_tensors() -> None:
    spec, output = frame_spec(card(["N", 15, 40, 40, 2], ["N", 40, 40, 2], task="next_frame"))
    assert (spec.channels, output.channels) == (2, 2)
    described = NextFrameTask(spec, output, max_horizon=4).describe()
    assert (described["input_mode"], described["output_mode"]) == (None, None)


@pytest.mark.parametrize(
    ("inputs", "outputs", "words"),
    [
        (["N", "T", 40, 40, 3], ["N", 40, 40, 3], "fixed T, H, W, C"),
        (["N", 40, 40, 3], ["N", 40, 40, 3], "not (N, T, H, W, C)"),
        # Its card infers output kind tensor: adapter_for serves it as plain tensors.
        (["N", 15, 40, 40, 3], ["N", 20, 20, 3], "not a frame of output kind tensor"),
    ],
)
def test_frame_spec_refuses_models_it_cannot_serve(
    inputs: list[int | str], outputs: list[int | str], words: str
) -> None:
    with pytest.raises(ModelLoadError, match=words.replace("(", r"\(").replace(")", r"\)")):
        frame_spec(card(inputs, outputs, task="next_frame"))


def test_frame_spec_reads_every_size_from_the_card() -> None:
    spec, out = frame_spec(card(["N", 10, 64, 32, 1], ["N", 64, 32, 1]))
    assert spec.shape == (10, 64, 32, 1) and spec.value_range == (0.0, 1.0)
    assert (out.kind, out.frame) == ("next_frame", (64, 32, 1))
    _, per_step = frame_spec(card(["N", 4, 8, 8, 3], ["N", 4, 8, 8, 3]))
    assert (per_step.kind, per_step.frame) == ("frame_per_step", (8, 8, 3))
    smaller = card(["N", 4, 8, 8, 3], ["N", 4, 4, 1], output_kind="next_frame")
    assert frame_spec(smaller)[1].frame == (4, 4, 1)
    five = card(["N", 4, 8, 8, 3], ["N", 8, 8, 5], output_kind="next_frame")
    assert frame_spec(five)[1].frame == (8, 8, 5)  # served as tensors: no image holds 5
    with pytest.raises(ModelLoadError, match=r"states input range \[-1.0, 1.0\]"):
        frame_spec(card(["N", 4, 8, 8, 3], ["N", 8, 8, 3], value_range=[-1.0, 1.0]))


def test_the_cards_task_picks_the_adapter() -> None:
    settings = Settings()
    assert isinstance(
        adapter_for(card(["N", 15, 40, 40, 3], ["N", 40, 40, 3]), settings), NextFrameTask
    )
    # A sequence in, no frame out: plain tensors (the Open Inference Protocol only).
    scores = adapter_for(card(["N", 15, 40, 40, 3], ["N", 10]), settings)
    assert isinstance(scores, TensorTask) and scores.item_shape == (15, 40, 40, 3)
    tensor = adapter_for(card(["N", 8], ["N", 2]), settings)
    assert isinstance(tensor, TensorTask) and tensor.item_shape == (8,)
    with pytest.raises(ModelLoadError, match="every size after N fixed"):
        adapter_for(card(["N", "K"], ["N", 2]), settings)


def test_a_model_without_a_card_takes_its_shapes_from_the_graph(tmp_path: Path) -> None:
    model = tmp_path / "bare.onnx"
    model.write_bytes(b"not read here")
    got = served_card(model, "ab" * 32, GRAPH_IN, GRAPH_OUT)
    assert (got.name, got.version, got.sha256) == ("bare", "unknown", "ab" * 32)
    assert got.input.shape == GRAPH_IN["shape"] and got.task == "next_frame"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"outputs": [{"name": "next_frame", "shape": ["N", 20, 20, 3]}]}, "states output shape"),
        ({"task": "audio"}, "is not a model card: task"),
        ({"sha256": "0" * 64}, "is for sha256 0000"),
    ],
)
def test_a_card_that_does_not_fit_its_file_is_refused(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    model = tmp_path / "convlstm.onnx"
    model.write_bytes(b"not read here")
    written = json.loads(COMMITTED_MODEL.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**written, **change}))
    with pytest.raises(ModelLoadError, match=words):
        served_card(model, str(written["sha256"]), GRAPH_IN, GRAPH_OUT)


def test_registry_lookup_before_and_after_loading(tmp_path: Path) -> None:
    shutil.copy(COMMITTED_MODEL, tmp_path / "convlstm.onnx")
    shutil.copy(COMMITTED_MODEL.with_suffix(".json"), tmp_path / "convlstm.json")
    registry = ModelRegistry(
        Settings(model_path=tmp_path / "convlstm.onnx", warmup_runs=0), Metrics()
    )
    with pytest.raises(NotReady, match="the model is loading"):
        registry.lookup(None)

    async def loaded() -> None:
        await registry.load()
        try:
            assert registry.ready and registry.lookup(None) is registry.models["convlstm"]
            with pytest.raises(UnknownModel, match="no model named 'unet'; served: convlstm"):
                registry.lookup("unet")
            registry.begin_drain("going away")
            assert (registry.ready, registry.draining) == (False, True)
            # Work accepted before the drain is still served: lookups keep answering.
            assert registry.lookup("convlstm").info.name == "convlstm"
        finally:
            await registry.close()

    anyio.run(loaded)
