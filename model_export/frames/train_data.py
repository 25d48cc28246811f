"""Training the ConvLSTM stack on the user's own sequences (``train --data PATH``).

The model is the seed ConvLSTM recipe (``model.build_convlstm``) adapted to the
data: input (T-1, H, W, C), a head of C channels. Each window of T frames gives
T-1 inputs and, at every step, the frame that follows (every-step supervision,
as for the digits). With ``--feedback-steps K`` the windows drawn hold T + K - 1
frames and the model also runs K - 1 more times on its own predictions, as serving
feeds them back (``feedback.py``). The inference model, T-1 frames -> the next frame, is saved
as ``OUT/NAME.keras``, which ``python -m model_export export --keras`` takes; the
training record beside it (``OUT/NAME.training.json``) carries the data's
provenance, its normalisation and the held-out scores into the exported card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from convlstm_card import sha256_of
from model_export.frames import data
from model_export.frames.evaluate import BASELINE, mse, psnr
from model_export.frames.feedback import single_pass
from model_export.frames.model import CONVLSTM_FILTERS, build_convlstm
from model_export.frames.precision import resolve_precision
from model_export.frames.train import Loss, fit_with_checkpoints, objective
from model_export.frames.user_data import DataError, Dataset
from model_export.host import describe_machine

# SSIM's 7x7 window needs frames at least this large on each side.
SSIM_MIN_SIDE = 7


@dataclass(frozen=True)
class DataTrainConfig:
    name: str = "own"
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 0
    precision: str = "auto"
    patience: int = 4
    max_minutes: float | None = None
    out_dir: Path = Path("models")
    filters: tuple[int, ...] = CONVLSTM_FILTERS
    resume: Path | None = None
    # Passes on the model's own predictions (train --feedback-steps; 1: the next frame
    # only), the fed-back frames' weight and loss (None: binary cross-entropy, as the rest).
    feedback_steps: int = 1
    feedback_weight: float = 1.0
    feedback_loss: Loss | None = None


def model_window(
    cfg: DataTrainConfig, drawn: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """The model's window (its T-1 inputs and the next frame) within windows of
    ``drawn`` frames: K - 1 frames shorter, those being the fed-back targets."""
    t, h, w, c = drawn
    model_t = t - (cfg.feedback_steps - 1)
    if model_t < 2:
        raise DataError(
            f"windows of {t} frames leave {model_t} for the model with --feedback-steps "
            f"{cfg.feedback_steps}: a window needs at least 2 (inputs and the next)"
        )
    return model_t, h, w, c


def fit_objective(
    cfg: DataTrainConfig, step_model: keras.Model
) -> tuple[keras.Model, Loss | keras.losses.Loss]:
    """The model and loss to fit (the K-pass graph with K > 1), as for the digits."""
    return objective(
        step_model,
        loss="bce",
        feedback_steps=cfg.feedback_steps,
        teacher_frames=int(step_model.input.shape[1]),
        weight=cfg.feedback_weight,
        feedback_loss=cfg.feedback_loss,
    )


def checkpoint_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.keras"


def record_path(checkpoint: Path) -> Path:
    """The training record beside a checkpoint: ``NAME.keras`` -> ``NAME.training.json``."""
    return checkpoint.with_suffix(".training.json")


def _starting_model(cfg: DataTrainConfig, window: tuple[int, int, int, int]) -> keras.Model:
    t, h, w, c = window
    model = build_convlstm(
        every_step=True, frames=t - 1, filters=cfg.filters, frame_shape=(h, w, c)
    )
    if cfg.resume is None:
        return model
    try:
        # A fed-back run's checkpoint holds the every-step model inside it.
        saved = single_pass(keras.models.load_model(cfg.resume, compile=False))
    except Exception as err:  # Keras raises many kinds for a file it cannot read
        raise DataError(f"--resume {cfg.resume}: Keras could not load it ({err})") from err
    want = (t - 1, h, w, c)
    got = tuple(saved.input.shape[1:])
    if got != want:
        raise DataError(f"--resume {cfg.resume}: takes {got}, the data gives windows {want}")
    # Inference and training models share every weight, in the same order.
    try:
        model.set_weights(saved.get_weights())
    except ValueError as err:
        raise DataError(
            f"--resume {cfg.resume}: its weights do not fit filters {cfg.filters} ({err})"
        ) from err
    return model


def train_on_data(cfg: DataTrainConfig, dataset: Dataset) -> dict[str, Any]:
    """Train on ``dataset``, save ``OUT/NAME.keras`` and its record, return the record."""
    try:
        return _train(cfg, dataset)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(cfg: DataTrainConfig, dataset: Dataset) -> dict[str, Any]:
    cfg = replace(cfg, precision=resolve_precision(cfg.precision))
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)
    window = model_window(cfg, dataset.window_shape)
    model, loss = fit_objective(cfg, _starting_model(cfg, window))
    k = cfg.feedback_steps
    x_train, y_train = data.inputs_and_targets(
        dataset.splits["train"], every_step=True, feedback_steps=k
    )
    x_val, y_val = data.inputs_and_targets(
        dataset.splits["validation"], every_step=True, feedback_steps=k
    )

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    work = cfg.out_dir / "training"
    work.mkdir(exist_ok=True)
    model, history, clock, seconds = fit_with_checkpoints(
        model,
        (x_train, y_train),
        (x_val, y_val),
        work=work,
        name=cfg.name,
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        patience=cfg.patience,
        max_minutes=cfg.max_minutes,
        verbose=1,  # Keras's progress bar
        loss=loss,
    )

    inference, checkpoint = save_inference(single_pass(model), cfg, window)
    record: dict[str, Any] = {
        **record_head(cfg, checkpoint, window),
        "data": dataset.record,
        "epochs_run": len(history.history["loss"]),
        "stopped_by_budget": clock.stopped_early,
        "wall_seconds": round(seconds, 1),
        "batches_run": clock.batches,
        "best_val_loss": float(np.min(history.history["val_loss"])),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "evaluation": evaluate_split(inference, dataset.splits["test"][:, : window[0]]),
        "machine": describe_machine(),
        "backend": keras.backend.backend(),
    }
    text = json.dumps(record, indent=2) + "\n"
    record_path(checkpoint).write_text(text)
    (work / f"{cfg.name}.json").write_text(text)
    return record


def save_inference(
    model: keras.Model, cfg: DataTrainConfig, window: tuple[int, int, int, int]
) -> tuple[keras.Model, Path]:
    """The trained stack as the inference checkpoint: rebuilt in float32 for a window of
    ``window`` frames (input all but the last), given the trained weights, and saved."""
    keras.mixed_precision.set_global_policy("float32")
    t, h, w, c = window
    inference = build_convlstm(frames=t - 1, filters=cfg.filters, frame_shape=(h, w, c))
    inference.set_weights([v.astype("float32") for v in model.get_weights()])
    checkpoint = checkpoint_path(cfg.out_dir, cfg.name)
    inference.save(checkpoint)
    return inference, checkpoint


def record_head(
    cfg: DataTrainConfig, checkpoint: Path, window: tuple[int, int, int, int]
) -> dict[str, Any]:
    """The first fields of a training record: the config, the model and its checkpoint."""
    t, h, w, c = window
    return {
        "config": {
            k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in asdict(cfg).items()
        },
        "model": (
            f"ConvLSTM2D stack {list(cfg.filters)} (3x3, same) and a Conv2D head of {c} "
            f"channel(s); input ({t - 1}, {h}, {w}, {c}) -> the next frame ({h}, {w}, {c})"
        ),
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_of(checkpoint)},
    }


def evaluate_split(model: keras.Model, windows: NDArray[np.float32]) -> dict[str, Any]:
    """MSE, PSNR and SSIM of ``model`` and of copy-last-frame on held-out windows."""
    x, truth = data.inputs_and_targets(windows, every_step=False)
    pred = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    results = {BASELINE: _scores(x[:, -1], truth), "model": _scores(pred, truth)}
    base = results[BASELINE]["mse"]
    results["model"]["mse_vs_copy_last"] = results["model"]["mse"] / base if base else None
    t = windows.shape[1]
    return {
        "split": "test",
        "windows": len(windows),
        "target": f"frame {t} given frames 1-{t - 1}",
        "runtime": "Keras (the checkpoint, before export)",
        "metrics": results,
    }


def _scores(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> dict[str, Any]:
    per_seq = mse(pred, truth)
    out: dict[str, Any] = {"mse": float(per_seq.mean()), "psnr_db": float(psnr(per_seq).mean())}
    if min(truth.shape[1:3]) >= SSIM_MIN_SIDE:
        from model_export.frames.evaluate import ssim

        out["ssim"] = float(ssim(pred, truth).mean())
    else:
        out["ssim"] = None  # frames smaller than SSIM's window
    return out
