"""`python -m model_export check`: committed ONNX files against their checkpoints and cards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_export.frames.model import VARIANTS


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("check", help="check committed ONNX files against checkpoints and cards")
    c.add_argument("--models", type=Path, default=Path("models"))
    c.add_argument("--variant", choices=VARIANTS, nargs="+", default=list(VARIANTS))
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.export.frame_models import ParityError, check_graphs
    from model_export.export.quantize import QuantizationError, check_int8
    from model_export.files import int8_path

    failed = 0
    for variant in args.variant:
        try:
            diffs = check_graphs(args.models / f"{variant}.keras")
            matches = ", ".join(f"{name} max |diff| {diff:.2e}" for name, diff in diffs.items())
            print(f"{variant}: ONNX matches checkpoint ({matches}), card sha256 ok")
            onnx_path = args.models / f"{variant}.onnx"
            if int8_path(onnx_path).exists():
                result = check_int8(onnx_path)
                print(
                    f"{int8_path(onnx_path).stem}: made from {onnx_path.name}, mean |diff| "
                    f"{result['mean_abs_diff']:.2e}, card sha256 ok"
                )
        except (ParityError, QuantizationError, FileNotFoundError) as err:
            print(f"{variant}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
