"""What a fed-back training step costs: the release ConvLSTM (carry head) trained with
``--feedback-steps 1`` (today's every-step objective) against ``--feedback-steps K``.

    python -m bench.train_feedback [--steps 3] [--rounds 5] [--feedback-steps 3]
                                   [--batch-size 8] [--out bench/results]

One process builds both training graphs (the same layers as ``train`` builds,
compiled with Adam on binary cross-entropy, ``FedBackLoss`` for K > 1), times one
warm-up batch of each apart (tracing), then alternates: ``steps`` optimiser steps of
K = 1, ``steps`` of K, for ``rounds`` rounds, so a shared CPU's load falls on both
alike. Reported: seconds per step of each round and their medians, the ratio K / 1 (of
the medians, and round by round), the 1-minute load average after each round, and the
process's peak RSS after each warm-up (K = 1 first). Opt-in: ``make bench-train-feedback``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import describe

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per arm and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--feedback-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()

    import keras

    from model_export.frames import data
    from model_export.frames.feedback import FedBackLoss, build_fed_back, check_feedback_steps
    from model_export.frames.model import RELEASE_HEAD, build_convlstm

    check_feedback_steps(args.feedback_steps)
    k, n = args.feedback_steps, args.batch_size
    keras.utils.set_random_seed(0)
    seqs = data.generate_split(n, "train", frames=data.FRAMES + k)
    arms: dict[int, tuple[keras.Model, Any, Any]] = {}
    for passes in (1, k):
        step_model = build_convlstm(every_step=True, head=RELEASE_HEAD)
        x, y = data.inputs_and_targets(
            seqs[:, : data.FRAMES + passes], every_step=True, feedback_steps=passes
        )
        model = step_model if passes == 1 else build_fed_back(step_model, passes)
        loss = "binary_crossentropy" if passes == 1 else FedBackLoss(teacher_frames=data.FRAMES)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        arms[passes] = (model, x, y)

    warm_up, peak_rss = {}, {}
    for passes, (model, x, y) in arms.items():
        start = time.monotonic()
        model.train_on_batch(x, y)
        warm_up[passes] = round(time.monotonic() - start, 1)
        # K = 1 runs first, so the peak after its warm-up is its own; K's is at least
        # what the process reached after both.
        peak_rss[passes] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(f"warm-up K={passes}: {warm_up[passes]} s, peak RSS {peak_rss[passes]} GiB")

    per_step: dict[int, list[float]] = {passes: [] for passes in arms}
    loads = []
    for r in range(args.rounds):
        for passes, (model, x, y) in arms.items():
            start = time.monotonic()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            per_step[passes].append(round((time.monotonic() - start) / args.steps, 2))
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}: {json.dumps(per_step)} load {loads[-1]}", flush=True)

    median = {passes: statistics.median(times) for passes, times in per_step.items()}
    report = {
        "what": (
            f"seconds per optimiser step, release ConvLSTM (carry head), batch {n}: "
            f"every-step objective (K=1) against {k} fed-back passes (K={k})"
        ),
        "command": "python -m bench.train_feedback " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "warm_up_seconds": {f"K={p}": t for p, t in warm_up.items()},
        "seconds_per_step": {f"K={p}": t for p, t in per_step.items()},
        "process_peak_rss_gib_after_warm_up": {f"K={p}": g for p, g in peak_rss.items()},
        "median_seconds_per_step": {f"K={p}": t for p, t in median.items()},
        f"ratio_K{k}_to_K1": round(median[k] / median[1], 2),
        # each round's K and 1 ran back to back, under much the same load
        f"ratio_K{k}_to_K1_per_round": [
            round(a / b, 2) for a, b in zip(per_step[k], per_step[1], strict=True)
        ],
        "load_average_1min_after_each_round": loads,
        "machine": describe(),
    }
    print(json.dumps({key: v for key, v in report.items() if key != "machine"}, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_feedback.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
