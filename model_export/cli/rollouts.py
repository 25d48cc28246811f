"""`python -m model_export rollouts`: the window and state roll-outs scored per step."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "rollouts", help="score the window and state roll-outs per step on the test split"
    )
    r.add_argument("--onnx", type=Path, default=Path("models/convlstm.onnx"))
    r.add_argument("--samples", type=int, default=64)
    r.add_argument("--horizon", type=int, default=8)
    r.add_argument("--out", type=Path, help="also write the table as JSON here")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.frames.rollouts import main

    return main(args.onnx, args.samples, args.horizon, args.out)
