"""Training: every-step next-frame supervision, validation each epoch, early
stopping, best-checkpoint saving, and a wall-clock budget.

The training model predicts the frame after every input step (15 targets per
sequence instead of 1); with ``feedback_steps`` K > 1 it also runs K - 1 more times
on its own predictions, fed back as serving feeds them (``feedback.py``). Its weights
are then copied into the inference model, which returns only the frame after the
last step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from model_export.frames import data
from model_export.frames.feedback import (
    FedBackLoss,
    build_fed_back,
    check_feedback_steps,
    single_pass,
)
from model_export.frames.model import Head, Variant, build, copy_weights_by_name, to_inference
from model_export.frames.precision import resolve_precision
from model_export.frames.ssim_loss import PlusSsim, check_ssim_weight
from model_export.host import describe_machine

Loss = Literal["bce", "mse", "l1"]
LOSSES: tuple[Loss, ...] = ("bce", "mse", "l1")
Schedule = Literal["plateau", "cosine"]
SCHEDULES: tuple[Schedule, ...] = ("plateau", "cosine")
# Keras' names for the losses; binary cross-entropy on [0, 1] pixels is the original recipe.
_KERAS_LOSS = {
    "bce": "binary_crossentropy",
    "mse": "mean_squared_error",
    "l1": "mean_absolute_error",
}
# The cosine schedule ends at this fraction of the starting rate, not at zero: the last
# batches still move the weights.
COSINE_FLOOR = 0.05
# Batches between the resumable checkpoints (work/NAME.last.keras).
LAST_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    variant: Variant = "convlstm"
    train_samples: int = 2000
    validation_samples: int = 64
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 0
    # auto: bf16 where it is native (precision.resolve_precision), float32 elsewhere.
    precision: str = "auto"
    patience: int = 4
    max_minutes: float | None = None
    out_dir: Path = Path("models")
    every_step: bool = True
    head: Head = "sigmoid"
    loss: Loss = "bce"
    schedule: Schedule = "plateau"
    # Start from these weights (any .keras of the variant: the inference model, the
    # every-step checkpoint, with the other head); layers it lacks start fresh.
    init_from: Path | None = None
    # Train on the split's sequences after the first ``train_skip``: a run warm-started
    # from a checkpoint trained on the first N sees N..N+train_samples, all new to it.
    train_skip: int = 0
    # Share of the training and validation sequences drawn from the varied glyph family
    # (``scenes.TRAIN_VARIED``: fonts, 0-3 px/frame, 1-3 glyphs, backgrounds, occlusion).
    varied_share: float = 0.0
    # Flip, transpose and permute the colours of every training sequence.
    augment: bool = False
    # Passes of the model on a sliding window of its own predictions (1: the next frame
    # only), and the weight of the fed-back frames' mean loss against the every-step one.
    feedback_steps: int = 1
    feedback_weight: float = 1.0
    # The loss of the fed-back frames (None: ``loss``).
    feedback_loss: Loss | None = None
    # Weight of the SSIM term added to the loss, W * (1 - SSIM) (0: none; ssim_loss.py).
    ssim_weight: float = 0.0


class TrainingClock(keras.callbacks.Callback):  # type: ignore[misc]
    """Counts the batches really run and stops after the one that crosses a budget.

    Keras' own callbacks stop only on metrics; a CPU training run in a fixed
    slot needs a deadline. Stopping mid-epoch still ends with that epoch's
    validation, so the best checkpoint stays meaningful.
    """

    def __init__(self, minutes: float | None) -> None:
        super().__init__()
        self.deadline = None if minutes is None else time.monotonic() + minutes * 60
        self.batches = 0
        self.stopped_early = False

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.batches += 1
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stopped_early = True
            self.model.stop_training = True


def fit_with_checkpoints(
    model: keras.Model,
    train_xy: tuple[np.ndarray, np.ndarray] | keras.utils.PyDataset,
    validation_xy: tuple[np.ndarray, np.ndarray] | keras.utils.PyDataset,
    *,
    work: Path,
    name: str,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    max_minutes: float | None,
    verbose: int | str = "auto",
    loss: Loss | keras.losses.Loss = "bce",
    schedule: Schedule = "plateau",
    extra_callbacks: tuple[keras.callbacks.Callback, ...] = (),
    initial_epoch: int = 0,
) -> tuple[keras.Model, keras.callbacks.History, TrainingClock, float]:
    """The one training loop of every recipe: Adam on ``loss`` (binary cross-entropy
    unless told; or a Keras loss object), the best validation epoch saved as
    ``work/NAME.best.keras``, early stopping, the learning rate halved on plateaus or
    decayed along a cosine over the planned batches, a CSV log and the wall-clock budget. ``train_xy`` may be arrays or a
    Keras ``PyDataset`` that makes its own batches (streamed from disk). Returns the best model
    (reloaded from its checkpoint), the history, the clock and the seconds spent."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if schedule == "cosine":
        per_epoch = (
            len(train_xy)
            if isinstance(train_xy, keras.utils.PyDataset)
            else math.ceil(len(train_xy[0]) / batch_size)
        )
        steps = per_epoch * epochs
        rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(steps, 1), alpha=COSINE_FLOOR
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=rate),
        loss=_KERAS_LOSS[loss] if isinstance(loss, str) else loss,
        metrics=["mse"],
    )
    best = work / f"{name}.best.keras"
    clock = TrainingClock(max_minutes)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True),
        # Every LAST_EVERY batches, whatever the validation says: a run stopped from
        # outside (a closed session, a killed job) resumes from here with --resume.
        keras.callbacks.ModelCheckpoint(work / f"{name}.last.keras", save_freq=LAST_EVERY),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(work / f"{name}.log.csv", append=initial_epoch > 0),
        clock,
        *extra_callbacks,
    ]
    if schedule == "plateau":
        # A schedule owns the rate; the plateau rule may only set a plain one.
        callbacks.insert(
            3, keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
        )
    start = time.monotonic()
    if isinstance(train_xy, keras.utils.PyDataset):
        history = model.fit(
            train_xy,
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_data=validation_xy,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = model.fit(
            *train_xy,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=validation_xy,
            callbacks=callbacks,
            shuffle=True,
            verbose=verbose,
        )
    seconds = time.monotonic() - start
    if best.exists():
        # The checkpoint holds the best validation epoch; a budget stop
        # mid-epoch may leave the in-memory weights at a worse point.
        model = keras.models.load_model(best)
    return model, history, clock, seconds


def objective(
    step_model: keras.Model,
    *,
    loss: Loss,
    feedback_steps: int,
    teacher_frames: int,
    weight: float = 1.0,
    feedback_loss: Loss | None = None,
    ssim_weight: float = 0.0,
) -> tuple[keras.Model, Loss | keras.losses.Loss]:
    """The model and loss to fit: ``step_model`` and ``loss`` as they are for one step;
    for K > 1 the K-pass graph on its own predictions (``feedback.build_fed_back``) and
    the every-step loss over ``teacher_frames`` frames plus the weighted fed-back one.
    With ``ssim_weight`` W > 0, ``W * (1 - SSIM)`` over every target frame is added."""
    model: keras.Model = step_model
    chosen: Loss | keras.losses.Loss = loss
    if feedback_steps > 1:
        fed = _KERAS_LOSS[feedback_loss or loss]
        model = build_fed_back(step_model, feedback_steps)
        chosen = FedBackLoss(_KERAS_LOSS[loss], teacher_frames, weight, fed)
    if ssim_weight > 0:
        inner = _KERAS_LOSS[chosen] if isinstance(chosen, str) else chosen
        chosen = PlusSsim(inner, ssim_weight)
    return model, chosen


def check_varied_share(share: float) -> None:
    """Refuse a ``--varied-share`` that is no share (before any data is drawn)."""
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise ValueError(f"--varied-share {share}: give a share in [0, 1]")


def checkpoint_path(out_dir: Path, variant: str) -> Path:
    return out_dir / f"{variant}.keras"


def train(cfg: TrainConfig) -> dict[str, object]:
    """Train ``cfg.variant``, save the inference model, return the training record."""
    check_feedback_steps(cfg.feedback_steps, cfg.feedback_weight, every_step=cfg.every_step)
    check_varied_share(cfg.varied_share)
    check_ssim_weight(cfg.ssim_weight)
    if cfg.varied_share > 0:
        from model_export.frames.scenes import TRAIN_VARIED, require_fonts

        require_fonts(TRAIN_VARIED)  # a missing font stops here, not mid-generation
    cfg = replace(cfg, precision=resolve_precision(cfg.precision))  # the record names it
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    work = cfg.out_dir / "training"
    work.mkdir(exist_ok=True)

    k = cfg.feedback_steps
    # The draws of a sequence do not depend on its length: with K > 1 the sequences are
    # those of K = 1, each K - 1 frames longer.
    length = data.FRAMES + k
    if cfg.varied_share > 0 or cfg.augment:
        from model_export.frames.scenes import varied_mix

        train_seq = varied_mix(
            cfg.train_samples,
            split="train",
            share=cfg.varied_share,
            seed=cfg.seed,
            skip=cfg.train_skip,
            augmented=cfg.augment,
            frames=length,
        )
        val_seq = varied_mix(
            cfg.validation_samples,
            split="validation",
            share=cfg.varied_share,
            seed=cfg.seed,
            frames=length,
        )
    else:
        train_seq = data.generate_split(
            cfg.train_samples, "train", skip=cfg.train_skip, frames=length
        )
        val_seq = data.generate_split(cfg.validation_samples, "validation", frames=length)
    every = cfg.every_step
    x_train, y_train = data.inputs_and_targets(train_seq, every_step=every, feedback_steps=k)
    x_val, y_val = data.inputs_and_targets(val_seq, every_step=every, feedback_steps=k)

    step_model = build(cfg.variant, every_step=cfg.every_step, head=cfg.head)
    warm_started: list[str] = []
    if cfg.init_from is not None:
        # A checkpoint of a fed-back run holds the every-step model inside it.
        source = single_pass(keras.models.load_model(cfg.init_from))
        warm_started = copy_weights_by_name(source, step_model)
    model, loss = objective(
        step_model,
        loss=cfg.loss,
        feedback_steps=k,
        teacher_frames=data.FRAMES,
        weight=cfg.feedback_weight,
        feedback_loss=cfg.feedback_loss,
        ssim_weight=cfg.ssim_weight,
    )
    model, history, clock, seconds = fit_with_checkpoints(
        model,
        (x_train, y_train),
        (x_val, y_val),
        work=work,
        name=cfg.variant,
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        patience=cfg.patience,
        max_minutes=cfg.max_minutes,
        loss=loss,
        schedule=cfg.schedule,
    )

    keras.mixed_precision.set_global_policy("float32")
    inference = to_inference(single_pass(model), cfg.variant)
    inference.save(checkpoint_path(cfg.out_dir, cfg.variant))

    epochs_run = len(history.history["loss"])
    # The last batch of an epoch may be short; this is exact to within one batch per epoch.
    sequences_seen = min(clock.batches * cfg.batch_size, cfg.train_samples * epochs_run)
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "warm_started_layers": warm_started,
        "epochs_run": epochs_run,
        "stopped_by_budget": clock.stopped_early,
        "wall_seconds": round(seconds, 1),
        "batches_run": clock.batches,
        "sequences_seen": sequences_seen,
        "sequences_per_second": round(sequences_seen / seconds, 3),
        "best_val_loss": float(np.min(history.history["val_loss"])),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "machine": describe_machine(),
        "backend": keras.backend.backend(),
    }
    (work / f"{cfg.variant}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
