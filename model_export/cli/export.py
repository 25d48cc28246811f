"""`python -m model_export export`: the trained variants, or any Keras model, to ONNX and a model card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.frames.model import VARIANTS

if TYPE_CHECKING:
    from model_export.export.any_model import SeriesOptions


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "export",
        help="Keras checkpoint -> ONNX + model card, with parity check",
        description="Export the trained variants in --models, or any Keras model with --keras.",
    )
    e.add_argument("--models", type=Path, default=Path("models"))
    e.add_argument(
        "--keras", type=Path, help="any .keras model file: written as --models/NAME.onnx + .json"
    )
    e.add_argument("--name", help="with --keras: the exported model's name")
    e.add_argument(
        "--task",
        choices=["next_frame", "tensor", "series"],
        help="with --keras: what the model does (default: next_frame for a 5-D input, "
        "tensor for any other)",
    )
    e.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="with --keras: the input values the model takes, refused outside them by the "
        "service (parity inputs are drawn in it); default: [0, 1] for frames of 1, 3 or 4 "
        "channels (an image), none for any other input (a tensor)",
    )
    e.add_argument(
        "--data",
        type=Path,
        help="with --keras: .npy or .npz input sequences to check parity on as well",
    )
    e.add_argument(
        "--frequency", help="with --task series: the step between rows (week, W, year, ...)"
    )
    e.add_argument(
        "--target",
        type=int,
        nargs="+",
        help="with --task series: the feature columns the output forecasts (default: 0, "
        "or every feature for an (h, F) output)",
    )
    e.add_argument("--feature-names", nargs="+", help="with --task series: one per feature")
    e.add_argument(
        "--offset",
        type=float,
        nargs="+",
        help="with --task series: per feature, model = (value - offset) / scale "
        "(default: the model takes raw units)",
    )
    e.add_argument("--scale", type=float, nargs="+", help="with --task series: per feature")
    e.add_argument("--variant", choices=VARIANTS, nargs="+", default=list(VARIANTS))
    e.add_argument("--opset", type=int, default=17)
    e.add_argument(
        "--keep-evaluation",
        action="store_true",
        help="keep the existing card's evaluation (a new graph of the same checkpoint)",
    )
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.keras is not None:
        return _export_keras(args)
    if args.name is not None or args.task is not None or args.data is not None:
        print("export: --name, --task and --data go with --keras", file=sys.stderr)
        return 2
    from model_export.export.frame_models import ParityError, export

    for variant in args.variant:
        try:
            result = export(
                args.models / f"{variant}.keras",
                opset=args.opset,
                keep_evaluation=args.keep_evaluation,
            )
        except ParityError as err:
            print(f"export failed: {err}", file=sys.stderr)
            return 1
        print(
            f"{result.onnx_path}: parity max |diff| {result.max_abs_diff:.2e}, sha256 {result.sha256}"
        )
        if result.plain_path is not None:
            print(f"{result.plain_path}: parity max |diff| {result.plain_max_abs_diff:.2e}")
    return 0


def _export_keras(args: argparse.Namespace) -> int:
    from model_export.export.any_model import ExportError, export_keras

    if args.name is None:
        print("export: --keras needs --name (the ONNX file's name in --models)", file=sys.stderr)
        return 2
    try:
        result = export_keras(
            args.keras,
            name=args.name,
            models_dir=args.models,
            task=args.task,
            value_range=None if args.range is None else tuple(args.range),
            data=args.data,
            series=_series_options(args),
        )
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    card = result.card
    print(result.input_choice)
    graph = card.graph.kind if card.graph else "?"
    parity = card.parity or {}
    print(
        f"{result.onnx_path}: task {card.task}, output kind {card.output_kind}, {graph} graph, "
        f"parity max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, sha256 {card.sha256}"
    )
    return 0


def _series_options(args: argparse.Namespace) -> SeriesOptions | None:
    """The series flags as ``SeriesOptions``; ``None`` when none was given."""
    from convlstm_card import SeriesScaling
    from model_export.export.any_model import ExportError, SeriesOptions

    given = [args.frequency, args.target, args.feature_names, args.offset, args.scale]
    if all(v is None for v in given):
        return None
    scaling = None
    if (args.offset is None) != (args.scale is None):
        raise ExportError("--offset and --scale go together: model = (value - offset) / scale")
    if args.offset is not None:
        scaling = SeriesScaling(kind="affine", offset=args.offset, scale=args.scale)
    return SeriesOptions(
        frequency=args.frequency,
        targets=args.target,
        feature_names=args.feature_names,
        scaling=scaling,
    )
