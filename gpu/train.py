"""The **train** job: the release ConvLSTM checkpoint, trained on the GPU machine.

Runs after ``gpu.receive --install train`` (``bash gpu/run.sh train``) with Keras on
the PyTorch backend (``KERAS_BACKEND=torch``: the machine has PyTorch, no TensorFlow).
It calls the same ``model_export.frames.train.train`` as the CPU recipe, with a wall-clock
budget, and leaves in ``--out`` what comes back to the CPU machine:
``convlstm.keras`` (the inference checkpoint; ``.keras`` files are backend-independent),
``convlstm.log.csv`` (per epoch), ``train.json`` (the record: GPU, backend, wall time,
sequences per second, epochs run). The varied family (``--varied-share``) draws the
DejaVu and Liberation fonts, which the machine lacks: ``gpu.pack`` carries them and
``gpu/run.sh`` points ``MODEL_EXPORT_FONT_DIR`` at them. Export (TensorFlow + tf2onnx), parity and
evaluation then run on the CPU machine (docs/gpu.md).

    python -m gpu.train --out DIR [--minutes 4] [--samples 8000] [--batch-size 16]
        [--head carry] [--loss bce] [--schedule plateau] [--resume models/convlstm.keras]
        [--feedback-steps 3 [--feedback-weight 1] [--feedback-loss l1]]
        [--varied-share 0.5 --augment --skip-samples 8000] [--ssim-weight 1]
    python -m gpu.train --out DIR --dry-run     # any backend, CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def device_facts() -> dict[str, Any]:
    """The backend and the device it trains on; the torch backend must see the GPU."""
    import keras

    facts: dict[str, Any] = {"backend": keras.backend.backend(), "keras": keras.__version__}
    if facts["backend"] == "torch":
        import torch

        facts["torch"] = torch.__version__
        facts["cuda"] = torch.cuda.is_available()
        if facts["cuda"]:
            facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def main(argv: list[str] | None = None) -> int:
    # Keras reads KERAS_BACKEND when first imported: here, not when this module is.
    from model_export.frames.feedback import resolve_feedback_flags
    from model_export.frames.model import HEADS, RELEASE_HEAD
    from model_export.frames.ssim_loss import check_ssim_weight
    from model_export.frames.train import (
        LOSSES,
        SCHEDULES,
        TrainConfig,
        check_varied_share,
        train,
    )

    p = argparse.ArgumentParser(prog="python -m gpu.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=4.0, help="training budget (wall clock)")
    p.add_argument("--samples", type=int, default=8000, help="training sequences")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--head", choices=HEADS, default=RELEASE_HEAD, help="the ConvLSTM's head")
    p.add_argument("--loss", choices=LOSSES, default="bce")
    p.add_argument("--schedule", choices=SCHEDULES, default="plateau")
    p.add_argument(
        "--resume",
        type=Path,
        help="start from this .keras (layers shared by name; e.g. a "
        "CPU checkpoint of the same recipe)",
    )
    p.add_argument(
        "--feedback-steps",
        type=int,
        default=1,
        metavar="K",
        help="passes on a window of the model's own predictions (train --feedback-steps)",
    )
    p.add_argument(
        "--feedback-weight",
        type=float,
        default=None,
        help="with --feedback-steps K > 1: the fed-back frames' mean loss against the "
        "every-step one (default 1)",
    )
    p.add_argument(
        "--feedback-loss",
        choices=LOSSES,
        default=None,
        help="with --feedback-steps K > 1: the fed-back frames' loss (default: --loss)",
    )
    p.add_argument(
        "--varied-share",
        type=float,
        default=0.0,
        help="share of the sequences from the varied glyph family (train --varied-share)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="flip, transpose and permute the colours of each training sequence",
    )
    p.add_argument(
        "--skip-samples",
        type=int,
        default=0,
        help="train on the generated sequences after the first N (new to --resume's model)",
    )
    p.add_argument(
        "--ssim-weight",
        type=float,
        default=0.0,
        help="add W * (1 - SSIM) per sequence to the loss (train --ssim-weight)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/gpu-train"),
        help="training files; only what comes back is copied to --out",
    )
    p.add_argument("--dry-run", action="store_true", help="tiny data and budget, any device")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        weight = resolve_feedback_flags(
            args.feedback_steps, args.feedback_weight, args.feedback_loss
        )
        check_varied_share(args.varied_share)
        check_ssim_weight(args.ssim_weight)
        if args.skip_samples < 0:
            raise ValueError(f"--skip-samples {args.skip_samples}: give N >= 0")
    except ValueError as err:
        p.error(str(err))

    facts = device_facts()
    print(f"train: {facts}", flush=True)
    if not args.dry_run and not facts.get("cuda"):
        print("train: no GPU seen by the torch backend; refusing to report a CPU run")
        return 1
    work: Path = args.work
    cfg = TrainConfig(
        variant="convlstm",
        train_samples=16 if args.dry_run else args.samples,
        validation_samples=8 if args.dry_run else 64,
        epochs=1 if args.dry_run else args.epochs,
        batch_size=4 if args.dry_run else args.batch_size,
        learning_rate=args.learning_rate,
        max_minutes=0.2 if args.dry_run else args.minutes,
        # On the GPU more epochs fit the budget than on the CPU; the CPU recipe's
        # patience of 4 would stop a run still improving in a noisy stretch.
        patience=8,
        out_dir=work,
        head=args.head,
        loss=args.loss,
        schedule=args.schedule,
        init_from=args.resume,
        feedback_steps=args.feedback_steps,
        feedback_weight=weight,
        feedback_loss=args.feedback_loss,
        train_skip=args.skip_samples,
        varied_share=args.varied_share,
        augment=args.augment,
        ssim_weight=args.ssim_weight,
    )
    record: dict[str, Any] = dict(train(cfg))
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "convlstm.keras", args.out / "convlstm.keras")
    shutil.copyfile(work / "training" / "convlstm.log.csv", args.out / "convlstm.log.csv")
    record = {**record, "device": facts, "job_seconds": round(time.perf_counter() - start, 1)}
    record["config"]["out_dir"] = "models"
    record["dry_run"] = args.dry_run
    record["environment"] = {k: os.environ.get(k) for k in ("KERAS_BACKEND",)}
    (args.out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    summary = {
        k: record[k]
        for k in ("epochs_run", "wall_seconds", "sequences_per_second", "best_val_loss")
    }
    print(f"train: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
