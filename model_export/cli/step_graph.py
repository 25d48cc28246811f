"""`python -m model_export step-graph`: the one-step graph of a ConvLSTM stack, for streams."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "step-graph",
        help="the one-step graph of a ConvLSTM stack, for streams (written by export too)",
    )
    s.add_argument("keras", type=Path, help="the checkpoint, e.g. models/convlstm.keras")
    s.add_argument("--onnx", type=Path, help="its windowed graph (default: the .keras as .onnx)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.export.step_graph import StepGraphError, export_step_graph

    try:
        result = export_step_graph(args.keras, args.onnx)
    except (StepGraphError, ValueError) as err:
        print(f"step-graph failed: {err}", file=sys.stderr)
        return 1
    print(
        f"{result.path}: {args.keras.stem} stepped from zero state matches the windowed graph "
        f"(max |diff| {result.max_abs_diff:.2e}); state {result.state_bytes:,} bytes per stream"
    )
    return 0
