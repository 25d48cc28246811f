"""`python -m model_export evaluate`: score the ONNX models on the test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_export.frames.model import VARIANTS

# The trained variants and the int8 graph made from the ConvLSTM's.
EVALUATED = (*VARIANTS, "convlstm_int8")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser(
        "evaluate", help="score the ONNX models on the test split and the out-of-distribution set"
    )
    v.add_argument("--models", type=Path, default=Path("models"))
    v.add_argument("--variant", choices=EVALUATED, nargs="+", default=list(VARIANTS))
    v.add_argument("--samples", type=int, default=256)
    v.add_argument(
        "--horizon", type=int, default=8, help="fed-back steps scored after the next frame"
    )
    v.add_argument(
        "--horizon-samples",
        type=int,
        default=64,
        help="sequences the fed-back steps are scored on (the first of --samples; 0: none)",
    )
    v.add_argument(
        "--ood-samples",
        type=int,
        default=256,
        help="sequences of the out-of-distribution set scored beside the test split (0: none)",
    )
    v.add_argument(
        "--ood-breakdown",
        action="store_true",
        help="score only the out-of-distribution set taken apart one factor at a time, and "
        "add it to the cards' evaluation (their other scores stay as they are)",
    )
    v.add_argument(
        "--breakdown-samples", type=int, default=64, help="sequences per set of --ood-breakdown"
    )
    v.add_argument(
        "--threads",
        type=int,
        default=0,
        help="with --ood-breakdown: onnxruntime intra-op threads (0: its default)",
    )
    v.add_argument("--dry-run", action="store_true", help="print only; leave cards and plot alone")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ood_breakdown:
        return _breakdown(args)
    from model_export.frames.evaluate import evaluate

    report = evaluate(
        args.models,
        list(args.variant),
        samples=args.samples,
        grid_path=None if args.dry_run else args.models / "predictions.png",
        write_cards=not args.dry_run,
        horizon=args.horizon,
        horizon_samples=args.horizon_samples,
        ood_samples=args.ood_samples,
    )
    print(json.dumps(report, indent=2))
    return 0


def _breakdown(args: argparse.Namespace) -> int:
    from convlstm_card import card_path, read_card, write_card
    from model_export.files import find_onnx
    from model_export.frames.evaluate import OnnxModel
    from model_export.frames.ood_breakdown import breakdown, table

    paths = {name: find_onnx(args.models, name) for name in args.variant}
    report = breakdown(
        {name: OnnxModel(path, threads=args.threads) for name, path in paths.items()},
        samples=args.breakdown_samples,
        runtime=f"onnxruntime CPU, {args.threads or 'default'} intra-op threads",
    )
    if not args.dry_run:
        for path in paths.values():
            card = read_card(card_path(path))
            evaluation = {**(card.evaluation or {}), "ood_breakdown": report}
            write_card(card_path(path), card.model_copy(update={"evaluation": evaluation}))
    print(table(report))
    return 0
