"""Recipe A/B: score trained checkpoints side by side on the test split and the
out-of-distribution set.

Each arm is one ``python -m model_export train ... --out DIR`` run; arms compare when
they share the budget in training sequences (``--samples`` x ``--epochs``), the seed
and the split, not the wall clock (a shared CPU makes that unfair). This scores each
arm's Keras checkpoint (float32, no export needed) on the same test sequences: the
next frame (MSE, as a fraction of copy-last-frame, SSIM, tint error) and the fed-back
horizon, and prints one markdown table with the recipe and the budget of each arm. The
same scores on ``--ood-samples`` sequences of the out-of-distribution set
(``model_export.frames.ood``) go beside them, so an arm that only learns the test
split's generator better shows it.

    python -m model_export.frames.recipe_ab DIR_OR_KERAS ... [--samples 128] [--horizon 3]
        [--ood-samples 64] [--json FILE]
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
    """An arm's inference checkpoint and its training record (None for a bare file): a
    ``train --out`` folder holds one ``VARIANT.keras`` and ``training/VARIANT.json``."""
    if path.is_dir():
        saved = sorted(path.glob("*.keras"))
        if len(saved) != 1:
            raise SystemExit(f"{path}: expected one trained .keras, found {len(saved)}")
        record = path / "training" / f"{saved[0].stem}.json"
        return saved[0], json.loads(record.read_text()) if record.exists() else None
    return path, None


Frames = tuple[NDArray[np.float32], NDArray[np.float32]]


def score_arm(
    path: Path, x: NDArray[np.float32], future: NDArray[np.float32], ood: Frames | None = None
) -> dict[str, Any]:
    """An arm's fed-back scores on the test split (``fed_back``) and, given ``ood``'s
    inputs and true frames, on the out-of-distribution set (``ood_fed_back``)."""
    import keras

    import model_export.frames.model  # noqa: F401 - registers the blend head's layer for loading

    checkpoint, record = _checkpoint_and_record(path)
    model = keras.models.load_model(checkpoint)

    def predict(frames: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(model.predict(frames, batch_size=16, verbose=0), dtype=np.float32)

    fed = rollout(predict, x, future.shape[1])
    steps = horizon_scores(fed, x, future)
    arm: dict[str, Any] = {"arm": path.name, "checkpoint": str(checkpoint), "fed_back": steps}
    if ood is not None:
        ox, ofuture = ood
        arm["ood_fed_back"] = horizon_scores(rollout(predict, ox, ofuture.shape[1]), ox, ofuture)
    if record is not None:
        cfg = record["config"]
        arm["recipe"] = {
            k: cfg.get(k)
            for k in ("head", "loss", "schedule", "learning_rate", "init_from", "seed")
        }
        # Records older than these options trained without them: K = 1, no SSIM term.
        arm["recipe"]["feedback_steps"] = cfg.get("feedback_steps", 1)
        arm["recipe"]["feedback_loss"] = cfg.get("feedback_loss")
        arm["recipe"]["ssim_weight"] = cfg.get("ssim_weight", 0.0)
        arm["budget"] = {
            "train_samples": cfg["train_samples"],
            "epochs_run": record["epochs_run"],
            "sequences_seen": record["sequences_seen"],
            "wall_seconds": record["wall_seconds"],
        }
    return arm


def objective_label(recipe: dict[str, Any]) -> str:
    """The loss column: ``bce``, ``bce; K=3 fed l1``, ``bce + 0.3 (1-SSIM)`` ..."""
    label = str(recipe.get("loss") or "")
    k = recipe.get("feedback_steps") or 1
    if k > 1:
        label += f"; K={k} fed {recipe.get('feedback_loss') or recipe.get('loss')}"
    if recipe.get("ssim_weight"):
        label += f" + {recipe['ssim_weight']:g} (1-SSIM)"
    return label


def table(
    arms: list[dict[str, Any]],
    baseline: dict[str, float],
    horizon: int,
    ood_baseline: dict[str, float] | None = None,
) -> str:
    h = horizon
    ood = ood_baseline is not None
    head = (
        f"| arm | head | loss | schedule | sequences seen | wall s | MSE | x copy-last | SSIM "
        f"| tint error | step {h} x copy-last | step {h} SSIM |"
    )
    rule = "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    base = (
        f"| {BASELINE} | | | | | | {baseline['mse']:.5f} | 1.000 | {baseline['ssim']:.3f} "
        f"| {baseline['tint_error']:.4f} | 1.000 | |"
    )
    if ood_baseline is not None:
        head += f" OOD x copy-last | OOD SSIM | OOD step {h} x copy-last |"
        rule += "---:|---:|---:|"
        base += f" 1.000 | {ood_baseline['ssim']:.3f} | 1.000 |"
    lines = [head, rule, base]
    for arm in arms:
        recipe = arm.get("recipe") or {}
        budget = arm.get("budget") or {}
        one, last = arm["fed_back"][0], arm["fed_back"][-1]
        line = (
            f"| {arm['arm']} | {recipe.get('head', '')} | {objective_label(recipe)} "
            f"| {recipe.get('schedule', '')} | {budget.get('sequences_seen', '')} "
            f"| {budget.get('wall_seconds', '')} | {one['mse']:.5f} "
            f"| {one['mse_vs_copy_last']:.3f} | {one['ssim']:.3f} | {one['tint_error']:.4f} "
            f"| {last['mse_vs_copy_last']:.3f} | {last['ssim']:.3f} |"
        )
        if ood:
            o1, olast = arm["ood_fed_back"][0], arm["ood_fed_back"][-1]
            line += (
                f" {o1['mse_vs_copy_last']:.3f} | {o1['ssim']:.3f} "
                f"| {olast['mse_vs_copy_last']:.3f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model_export.frames.recipe_ab", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("arms", type=Path, nargs="+", help="train --out folders or .keras files")
    p.add_argument("--samples", type=int, default=128, help="test sequences")
    p.add_argument("--horizon", type=int, default=3, help="fed-back steps scored")
    p.add_argument(
        "--ood-samples",
        type=int,
        default=64,
        help="sequences of the out-of-distribution set scored beside the test split (0: none)",
    )
    p.add_argument("--json", type=Path, help="write every figure here too")
    args = p.parse_args(argv)
    x, future = horizon_split(args.samples, args.horizon)
    baseline = scores(x[:, -1], future[:, 0])
    ood: Frames | None = None
    ood_baseline = None
    if args.ood_samples > 0:
        from model_export.frames.ood import ood_horizon_split

        ood = ood_horizon_split(args.ood_samples, args.horizon)
        ood_baseline = scores(ood[0][:, -1], ood[1][:, 0])
    arms = [score_arm(path, x, future, ood) for path in args.arms]
    text = table(arms, baseline, args.horizon, ood_baseline)
    print(
        f"test split, {args.samples} sequences; out-of-distribution set, {args.ood_samples} "
        f"sequences; fed back {args.horizon} steps\n"
    )
    print(text)
    if args.json is not None:
        report = {
            "samples": args.samples,
            "ood_samples": args.ood_samples,
            "horizon": args.horizon,
            BASELINE: baseline,
            f"ood_{BASELINE}": ood_baseline,
        }
        args.json.write_text(json.dumps({**report, "arms": arms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
