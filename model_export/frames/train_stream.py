"""Training the ConvLSTM on sequences streamed from disk (``train --data PATH --stream``).

The same model, loss, checkpoints and record as ``train_data``, fed by
``stream_data.WindowStream`` instead of arrays in memory. Every ``LAST_EVERY`` batches
the model and the position in the epoch (``work/NAME.progress.json``) are saved
together, so ``--resume work/NAME.last.keras`` continues at the batch it had reached
(the weights and the position; the optimiser starts afresh, as every ``--resume``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model_export.frames.feedback import single_pass
from model_export.frames.precision import resolve_precision
from model_export.frames.stream_data import WindowStream
from model_export.frames.stream_scan import Catalogue, scale_of, split_sources
from model_export.frames.train import LAST_EVERY, fit_with_checkpoints
from model_export.frames.train_data import (
    DataTrainConfig,
    _starting_model,
    evaluate_split,
    fit_objective,
    model_window,
    record_head,
    record_path,
    save_inference,
)
from model_export.host import describe_machine

# Test windows scored after training (read from disk, the first of the test split).
TEST_WINDOWS = 256


def progress_path(last: Path) -> Path:
    """``NAME.last.keras`` -> ``NAME.progress.json``."""
    return last.with_name(last.name.replace(".last.keras", ".progress.json"))


class StreamProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves the model and its place in the epoch together, every ``every`` batches."""

    def __init__(self, last: Path, *, start_batch: int, every: int = LAST_EVERY) -> None:
        super().__init__()
        self.last = last
        self.start_batch = start_batch
        self.every = every
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        done = self.start_batch + batch + 1
        if done % self.every == 0:
            self.model.save(self.last)
            progress_path(self.last).write_text(
                json.dumps({"epoch": self.epoch, "batch": done}) + "\n"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.start_batch = 0


def resume_point(cfg: DataTrainConfig) -> tuple[int, int]:
    """(epoch, batch) to start at: from the progress file beside ``--resume``, else (0, 0)."""
    if cfg.resume is None or not progress_path(cfg.resume).exists():
        return 0, 0
    progress = json.loads(progress_path(cfg.resume).read_text())
    return int(progress["epoch"]), int(progress["batch"])


def train_on_stream(
    cfg: DataTrainConfig, catalogue: Catalogue, *, path: Path, window: int, group: int = 8
) -> dict[str, Any]:
    """Train on windows read from disk; save ``OUT/NAME.keras`` and its record."""
    try:
        return _train(cfg, catalogue, path=path, window=window, group=group)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _stream(
    sources: Any, cfg: DataTrainConfig, catalogue: Catalogue, window: int, **kw: Any
) -> WindowStream:
    return WindowStream(
        sources,
        window=window,
        batch_size=cfg.batch_size,
        dtype=catalogue.dtype,
        seed=cfg.seed,
        **({"feedback_steps": cfg.feedback_steps} | kw),
    )


def _train(
    cfg: DataTrainConfig, catalogue: Catalogue, *, path: Path, window: int, group: int
) -> dict[str, Any]:
    cfg = replace(cfg, precision=resolve_precision(cfg.precision))
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)
    h, w, c = catalogue.frame_shape
    # ``window``: the frames drawn; the model's own window is K - 1 shorter.
    own = model_window(cfg, (window, h, w, c))
    model, loss = fit_objective(cfg, _starting_model(cfg, own))
    splits = split_sources(catalogue.sources, seed=cfg.seed)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    work = cfg.out_dir / "training"
    work.mkdir(exist_ok=True)
    last = work / f"{cfg.name}.last.keras"
    validation = _stream(splits["validation"], cfg, catalogue, window, shuffle=False)
    epoch, batch = resume_point(cfg)

    histories: list[dict[str, list[float]]] = []
    seconds = 0.0
    batches = 0
    stopped = False
    if batch > 0 and epoch < cfg.epochs:
        # The rest of the interrupted epoch, in that epoch's order, on its own.
        rest = _stream(
            splits["train"], cfg, catalogue, window, group=group, epoch=epoch, start_batch=batch
        )
        model, history, clock, spent = fit_with_checkpoints(
            model,
            rest,
            validation,
            work=work,
            name=cfg.name,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            epochs=epoch + 1,
            patience=cfg.patience,
            max_minutes=cfg.max_minutes,
            verbose=1,
            loss=loss,
            initial_epoch=epoch,
            extra_callbacks=(StreamProgress(last, start_batch=batch),),
        )
        histories.append(history.history)
        seconds, batches, stopped = spent, clock.batches, clock.stopped_early
        epoch += 1
    if epoch < cfg.epochs and not stopped:
        left = None if cfg.max_minutes is None else max(cfg.max_minutes - seconds / 60, 0.01)
        train = _stream(splits["train"], cfg, catalogue, window, group=group, epoch=epoch)
        model, history, clock, spent = fit_with_checkpoints(
            model,
            train,
            validation,
            work=work,
            name=cfg.name,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            patience=cfg.patience,
            max_minutes=left,
            verbose=1,
            loss=loss,
            initial_epoch=epoch,
            extra_callbacks=(StreamProgress(last, start_batch=0),),
        )
        histories.append(history.history)
        seconds += spent
        batches += clock.batches
        stopped = clock.stopped_early

    inference, checkpoint = save_inference(single_pass(model), cfg, own)

    # Scored as served: windows of the model's own length, the next frame only.
    test = _stream(splits["test"], cfg, catalogue, own[0], shuffle=False, feedback_steps=1)
    take = min(len(test), -(-TEST_WINDOWS // cfg.batch_size))
    windows = np.concatenate(
        [np.concatenate([x, y[:, -1:]], axis=1) for x, y in (test[i] for i in range(take))]
    )
    history_all = {
        k: [float(v) for hist in histories for v in hist.get(k, [])]
        for k in ("loss", "val_loss", "mse", "val_mse")
    }
    scale = scale_of(catalogue.dtype)
    record: dict[str, Any] = {
        **record_head(cfg, checkpoint, own),
        "data": {
            "path": str(path.resolve()),
            "format": "streamed from disk (memory-mapped shards, frame folders, videos)",
            "sequences": len(catalogue.sources),
            "frame_shape": list(catalogue.frame_shape),
            "dtype": catalogue.dtype,
            "normalisation": {"kind": f"x / {scale:g}", "formula": f"x / {scale:g}"},
            "window_frames": own[0],
            "drawn_window_frames": window,
            "split_seed": cfg.seed,
            "split_by": "sequence (no sequence's frames in two splits)",
            "splits": {s: {"sequences": len(v)} for s, v in splits.items()},
            "shuffle": f"sources shuffled per epoch, windows shuffled within groups of {group}",
        },
        "epochs_run": len(history_all["loss"]),
        "resumed_at": {"epoch": resume_point(cfg)[0], "batch": resume_point(cfg)[1]},
        "stopped_by_budget": stopped,
        "wall_seconds": round(seconds, 1),
        "batches_run": batches,
        "best_val_loss": float(np.min(history_all["val_loss"]))
        if history_all["val_loss"]
        else None,
        "history": history_all,
        "evaluation": evaluate_split(inference, windows),
        "machine": describe_machine(),
        "backend": keras.backend.backend(),
    }
    text = json.dumps(record, indent=2) + "\n"
    record_path(checkpoint).write_text(text)
    (work / f"{cfg.name}.json").write_text(text)
    return record
