"""`python -m model_export fp16`: the float16 variant of the ConvLSTM graph, for GPUs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser(
        "fp16",
        help="the float16 variant of the ConvLSTM graph for GPUs (opt-in; float32 stays "
        "default), written only if its test-split MSE is within 1%% of float32's",
    )
    f.add_argument("--models", type=Path, default=Path("models"))
    f.add_argument(
        "--sequences", type=int, default=32, help="test sequences the MSE gate is scored on"
    )
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.export.fp16 import Fp16Error, convert, fp16_path

    source = args.models / "convlstm.onnx"
    try:
        card = convert(source, sequences=args.sequences)
    except Fp16Error as err:
        print(f"fp16 failed: {err}", file=sys.stderr)
        return 1
    parity = card.parity or {}
    print(
        f"{fp16_path(source)}: MSE {parity['mse_fp16']:.6g} against float32's "
        f"{parity['mse_fp32']:.6g} ({parity['mse_ratio']:.5f}x), max |fp16 - fp32| "
        f"{parity['max_abs_diff']:.2e}, sha256 {card.sha256}"
    )
    return 0
