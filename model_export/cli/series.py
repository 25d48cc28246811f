"""`python -m model_export series`: train, export and compare the series models."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from model_export.series.data import DATASETS

    r = sub.add_parser(
        "series",
        help="train, export and compare the series models on real data (statsmodels')",
        description="The four series networks by one loop, the baselines, rolling-origin "
        "evaluation on the held-out tail; writes --models/{data}_{model}.onnx + cards and "
        "RESULTS.md.",
    )
    r.add_argument("--data", choices=DATASETS, nargs="+", default=list(DATASETS))
    r.add_argument("--models", type=Path, default=Path("models/series"))
    r.add_argument("--epochs", type=int, default=60, help="at most; early stopping on validation")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--samples",
        type=Path,
        default=Path("service/web/samples/series.json"),
        help="the demo page's series samples (history and held-out truth) are written here",
    )
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.series.train import TrainConfig, run

    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    rows = run(args.data, args.models, cfg, args.samples)
    for row in rows:
        print(
            f"{row.data:9s} {row.model:22s} params {row.params:6d}  mean MASE "
            f"{row.scores.mean_mase:.3f}  mean sMAPE {row.scores.mean_smape:6.2f}%  "
            f"{row.latency_ms:.3f} ms"
        )
    print(f"{args.models / 'RESULTS.md'}: the table")
    return 0
