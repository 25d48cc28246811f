"""`python -m model_export quantize`: the int8 variant of the ConvLSTM graph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = sub.add_parser(
        "quantize", help="the int8 variant of the ConvLSTM graph (opt-in; float32 stays default)"
    )
    q.add_argument("--models", type=Path, default=Path("models"))
    q.add_argument(
        "--calibration-sequences",
        type=int,
        default=64,
        help="training sequences that set the activation ranges",
    )
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.export.quantize import QuantizationError, quantize
    from model_export.files import int8_path

    source = args.models / "convlstm.onnx"
    try:
        card = quantize(source, calibration_sequences=args.calibration_sequences)
    except QuantizationError as err:
        print(f"quantize failed: {err}", file=sys.stderr)
        return 1
    parity = card.parity or {}
    print(
        f"{int8_path(source)}: mean |int8 - float32| {parity['mean_abs_diff']:.2e}, "
        f"max {parity['max_abs_diff']:.2e}, sha256 {card.sha256}"
    )
    return 0
