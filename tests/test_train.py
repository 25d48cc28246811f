"""Training smoke runs: a few real steps of each variant, saved and reloaded."""

import json
from pathlib import Path

import keras
import pytest

from model_export.train import TrainConfig, checkpoint_path, train

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
    )
    record = train(cfg)
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
