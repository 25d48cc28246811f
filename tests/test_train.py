"""Training smoke runs: a few real steps of each variant, saved and reloaded."""

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from model_export.frames.train import TrainConfig, checkpoint_path, train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["convlstm", "cnn_lstm"])
def test_train_saves_an_inference_checkpoint_and_a_record(variant: str, tmp_path: Path) -> None:
    cfg = TrainConfig(
        variant=variant,  # type: ignore[arg-type]
        train_samples=4,
        validation_samples=2,
        epochs=2,
        batch_size=2,
        out_dir=tmp_path,
        # bf16 is emulated on CPUs without AVX-512 BF16 (about 10x slower): the cheap
        # variant checks that a mixed-precision run still saves a float32 model.
        precision="mixed_bfloat16" if variant == "cnn_lstm" else "auto",
    )
    record = train(cfg)
    assert record["config"]["precision"] in ("mixed_bfloat16", "float32")  # type: ignore[index]
    assert record["epochs_run"] == 2
    assert record["batches_run"] == 4
    assert record["sequences_seen"] == 8
    assert len(record["history"]["val_loss"]) == 2  # type: ignore[index]
    model = keras.models.load_model(checkpoint_path(tmp_path, variant))
    assert tuple(model.output.shape) == (None, 40, 40, 3)
    assert model.dtype_policy.name == "float32"
    assert (tmp_path / "training" / f"{variant}.best.keras").exists()
    assert (tmp_path / "training" / f"{variant}.log.csv").read_text().count("\n") == 3
    saved = json.loads((tmp_path / "training" / f"{variant}.json").read_text())
    assert saved["config"]["variant"] == variant


def test_wall_clock_budget_stops_training(tmp_path: Path) -> None:
    cfg = TrainConfig(
        variant="cnn_lstm",
        train_samples=8,
        validation_samples=2,
        epochs=50,
        batch_size=2,
        max_minutes=0.0001,
        out_dir=tmp_path,
    )
    record = train(cfg)
    assert record["stopped_by_budget"] is True
    assert record["epochs_run"] == 1
    assert record["batches_run"] == 1  # stopped after the batch that crossed the deadline
    assert record["sequences_seen"] == 2


def test_last_step_supervision_trains_the_same_inference_model(tmp_path: Path) -> None:
    cfg = TrainConfig(
        variant="cnn_lstm",
        train_samples=4,
        validation_samples=2,
        epochs=1,
        batch_size=2,
        out_dir=tmp_path,
        every_step=False,
    )
    record = train(cfg)
    assert record["config"]["every_step"] is False  # type: ignore[index]
    model = keras.models.load_model(checkpoint_path(tmp_path, "cnn_lstm"))
    assert tuple(model.output.shape) == (None, 40, 40, 3)


def test_recipe_options_and_warm_start_from_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("model_export.frames.train.LAST_EVERY", 1)
    first = TrainConfig(train_samples=2, validation_samples=2, epochs=1, batch_size=2)
    train(replace(first, out_dir=tmp_path / "a"))
    start = keras.models.load_model(checkpoint_path(tmp_path / "a", "convlstm"))
    cfg = replace(
        first,
        out_dir=tmp_path / "b",
        head="blend",
        loss="l1",
        schedule="cosine",
        init_from=checkpoint_path(tmp_path / "a", "convlstm"),
        train_skip=2,
        learning_rate=1e-9,  # the copied weights stay as they were, to within rounding
    )
    record = train(cfg)
    assert record["warm_started_layers"] == [f"convlstm_{i}" for i in range(1, 5)] + ["next_frame"]
    assert record["config"]["head"] == "blend"  # type: ignore[index]
    model = keras.models.load_model(checkpoint_path(tmp_path / "b", "convlstm"))
    assert model.get_layer("next_frame_keep").count_params() == 1_893
    # the resumable checkpoint, written every LAST_EVERY batches
    last = keras.models.load_model(tmp_path / "b" / "training" / "convlstm.last.keras")
    assert last.count_params() == model.count_params()
    for name in ("convlstm_1", "next_frame"):
        for a, b in zip(
            start.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-3)
