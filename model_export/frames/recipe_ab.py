"""Recipe A/B: score trained checkpoints side by side on the test split.

Each arm is one ``python -m model_export train ... --out DIR`` run; arms compare when
they share the budget in training sequences (``--samples`` x ``--epochs``), the seed
and the split, not the wall clock (a shared CPU makes that unfair). This scores each
arm's Keras checkpoint (float32, no export needed) on the same test sequences: the
next frame (MSE, as a fraction of copy-last-frame, SSIM, tint error) and the fed-back
horizon, and prints one markdown table with the recipe and the budget of each arm.

    python -m model_export.frames.recipe_ab DIR_OR_KERAS ... [--samples 128] [--horizon 3]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_export.frames.evaluate import BASELINE, horizon_scores, horizon_split, rollout, scores


def _checkpoint_and_record(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """An arm's inference checkpoint and its training record (None for a bare file)."""
    if path.is_dir():
        record = path / "training" / "convlstm.json"
        return path / "convlstm.keras", json.loads(record.read_text()) if record.exists() else None
    return path, None


def score_arm(path: Path, x: NDArray[np.float32], future: NDArray[np.float32]) -> dict[str, Any]:
    import keras

    import model_export.frames.model  # noqa: F401 - registers the blend head's layer for loading

    checkpoint, record = _checkpoint_and_record(path)
    model = keras.models.load_model(checkpoint)

    def predict(frames: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(model.predict(frames, batch_size=16, verbose=0), dtype=np.float32)

    fed = rollout(predict, x, future.shape[1])
    steps = horizon_scores(fed, x, future)
    arm: dict[str, Any] = {"arm": path.name, "checkpoint": str(checkpoint), "fed_back": steps}
    if record is not None:
        cfg = record["config"]
        arm["recipe"] = {
            k: cfg.get(k)
            for k in ("head", "loss", "schedule", "learning_rate", "init_from", "seed")
        }
        arm["budget"] = {
            "train_samples": cfg["train_samples"],
            "epochs_run": record["epochs_run"],
            "sequences_seen": record["sequences_seen"],
            "wall_seconds": record["wall_seconds"],
        }
    return arm


def table(arms: list[dict[str, Any]], baseline: dict[str, float], horizon: int) -> str:
    h = horizon
    lines = [
        f"| arm | head | loss | schedule | sequences seen | wall s | MSE | x copy-last | SSIM "
        f"| tint error | step {h} x copy-last | step {h} SSIM |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {BASELINE} | | | | | | {baseline['mse']:.5f} | 1.000 | {baseline['ssim']:.3f} "
        f"| {baseline['tint_error']:.4f} | 1.000 | |",
    ]
    for arm in arms:
        recipe = arm.get("recipe") or {}
        budget = arm.get("budget") or {}
        one, last = arm["fed_back"][0], arm["fed_back"][-1]
        lines.append(
            f"| {arm['arm']} | {recipe.get('head', '')} | {recipe.get('loss', '')} "
            f"| {recipe.get('schedule', '')} | {budget.get('sequences_seen', '')} "
            f"| {budget.get('wall_seconds', '')} | {one['mse']:.5f} "
            f"| {one['mse_vs_copy_last']:.3f} | {one['ssim']:.3f} | {one['tint_error']:.4f} "
            f"| {last['mse_vs_copy_last']:.3f} | {last['ssim']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model_export.frames.recipe_ab", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("arms", type=Path, nargs="+", help="train --out folders or .keras files")
    p.add_argument("--samples", type=int, default=128, help="test sequences")
    p.add_argument("--horizon", type=int, default=3, help="fed-back steps scored")
    p.add_argument("--json", type=Path, help="write every figure here too")
    args = p.parse_args(argv)
    x, future = horizon_split(args.samples, args.horizon)
    baseline = scores(x[:, -1], future[:, 0])
    arms = [score_arm(path, x, future) for path in args.arms]
    text = table(arms, baseline, args.horizon)
    print(f"test split, {args.samples} sequences, fed back {args.horizon} steps\n")
    print(text)
    if args.json is not None:
        report = {"samples": args.samples, "horizon": args.horizon, BASELINE: baseline}
        args.json.write_text(json.dumps({**report, "arms": arms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
