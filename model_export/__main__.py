"""Command line: ``python -m model_export {summary,train,export,series,quantize,step-graph,rollouts,check,evaluate}``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.frames.model import HEADS, VARIANTS
from model_export.frames.train import LOSSES, SCHEDULES

if TYPE_CHECKING:
    from model_export.export.any_model import SeriesOptions

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

# The trained variants and the int8 graph made from the ConvLSTM's.
EVALUATED = (*VARIANTS, "convlstm_int8")


def _summary(args: argparse.Namespace) -> int:
    from model_export.frames.model import RELEASE_HEAD, build, format_table

    for variant in VARIANTS:
        head = RELEASE_HEAD if variant == "convlstm" else "sigmoid"
        print(format_table(build(variant, head=head)))
        print()
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.data != "digits":
        return _train_on_data(args)
    own = {"--data-key": args.data_key, "--frames": args.frames, "--resize": args.resize}
    own |= {"--name": args.name, "--filters": args.filters}
    given = [flag for flag, value in own.items() if value is not None]
    if given:
        print(f"train: {', '.join(given)} go with --data PATH", file=sys.stderr)
        return 2
    if args.head not in (None, "sigmoid") and args.variant != "convlstm":
        print(f"train: --head {args.head} goes with --variant convlstm", file=sys.stderr)
        return 2
    from model_export.frames.model import RELEASE_HEAD
    from model_export.frames.train import TrainConfig, train

    head = args.head or (RELEASE_HEAD if args.variant == "convlstm" else "sigmoid")

    cfg = TrainConfig(
        variant=args.variant,
        train_samples=3000 if args.samples is None else args.samples,
        validation_samples=64 if args.validation_samples is None else args.validation_samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        precision=args.precision,
        patience=args.patience,
        max_minutes=args.max_minutes,
        out_dir=args.out,
        every_step=args.supervise == "every-step",
        head=head,
        loss=args.loss,
        schedule=args.schedule,
        init_from=args.resume,
        train_skip=args.skip_samples,
    )
    record = train(cfg)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    return 0


def _train_on_data(args: argparse.Namespace) -> int:
    from model_export.frames import user_data
    from model_export.frames.model import CONVLSTM_FILTERS
    from model_export.frames.train_data import (
        DataTrainConfig,
        checkpoint_path,
        record_path,
        train_on_data,
    )

    recipe = {"--head": args.head is not None, "--loss": args.loss != "bce"}
    recipe["--schedule"] = args.schedule != "plateau"
    if any(recipe.values()):
        flags = ", ".join(flag for flag, given in recipe.items() if given)
        print(f"train: {flags} go with --data digits", file=sys.stderr)
        return 2
    if args.variant != "convlstm" or args.supervise != "every-step":
        print(
            "train: --data PATH trains the convlstm variant with every-step supervision only",
            file=sys.stderr,
        )
        return 2
    if args.samples is not None or args.validation_samples is not None:
        # The data decides how many sequences there are; the split is by --seed.
        print("train: --samples and --validation-samples go with --data digits", file=sys.stderr)
        return 2
    name = args.name or "own"
    if not NAME_PATTERN.fullmatch(name):
        print(f"train: --name {name!r}: use letters, digits, _ and -", file=sys.stderr)
        return 2
    try:
        dataset = user_data.load(
            Path(args.data),
            key=args.data_key,
            frames=args.frames,
            resize=None if args.resize is None else user_data.parse_size(args.resize),
            seed=args.seed,
        )
        cfg = DataTrainConfig(
            name=name,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            precision=args.precision,
            patience=args.patience,
            max_minutes=args.max_minutes,
            out_dir=args.out,
            filters=tuple(args.filters or CONVLSTM_FILTERS),
            resume=args.resume,
        )
        record = train_on_data(cfg, dataset)
    except user_data.DataError as err:
        print(f"train: {err}", file=sys.stderr)
        return 1
    checkpoint = checkpoint_path(cfg.out_dir, cfg.name)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    print(f"{checkpoint}: the inference checkpoint; record {record_path(checkpoint)}")
    return 0


def _export(args: argparse.Namespace) -> int:
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


def _series(args: argparse.Namespace) -> int:
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


def _quantize(args: argparse.Namespace) -> int:
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


def _step_graph(args: argparse.Namespace) -> int:
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


def _rollouts(args: argparse.Namespace) -> int:
    from model_export.frames.rollouts import main

    return main(args.onnx, args.samples, args.horizon, args.out)


def _check(args: argparse.Namespace) -> int:
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


def _evaluate(args: argparse.Namespace) -> int:
    from model_export.frames.evaluate import evaluate

    report = evaluate(
        args.models,
        list(args.variant),
        samples=args.samples,
        grid_path=None if args.dry_run else args.models / "predictions.png",
        write_cards=not args.dry_run,
        horizon=args.horizon,
        horizon_samples=args.horizon_samples,
    )
    print(json.dumps(report, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("summary", help="print both models' parameter tables").set_defaults(
        func=_summary
    )

    t = sub.add_parser(
        "train",
        help="train one variant and save its inference checkpoint",
        description="Train on the moving digits (the default), or on your own sequences with "
        "--data PATH: an .npy/.npz array (N, T, H, W, C) or a folder of frame folders.",
    )
    t.add_argument(
        "--data",
        default="digits",
        help="'digits' (generated) or PATH: .npy/.npz (N, T, H, W, C), or a folder with one "
        "sub-folder of PNG/JPEG frames per sequence",
    )
    t.add_argument("--data-key", help="with --data FILE.npz: the array to train on")
    t.add_argument(
        "--frames",
        type=int,
        help="with --data: cut windows of T frames (T-1 inputs and the next) from each "
        "sequence; default: each whole sequence",
    )
    t.add_argument("--resize", metavar="HxW", help="with --data: resize every frame")
    t.add_argument("--name", help="with --data: writes OUT/NAME.keras (default: own)")
    t.add_argument(
        "--resume",
        type=Path,
        help="continue from a saved .keras (with --data: of the same shape; on the digits: "
        "the weights of every layer it shares by name, e.g. a committed model or a "
        "training/NAME.best.keras; the optimiser starts afresh)",
    )
    t.add_argument(
        "--filters",
        type=int,
        nargs="+",
        help="with --data: ConvLSTM2D widths (default: 30 50 60 70, the seed stack)",
    )
    t.add_argument("--variant", choices=VARIANTS, default="convlstm")
    t.add_argument(
        "--samples", type=int, default=None, help="generated training sequences (default 3000)"
    )
    t.add_argument(
        "--validation-samples", type=int, default=None, help="generated ones (default 64)"
    )
    t.add_argument(
        "--skip-samples",
        type=int,
        default=0,
        help="train on the generated sequences after the first N (new to a model trained "
        "on those N)",
    )
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0, help="weight initialisation and shuffling")
    t.add_argument("--precision", choices=["mixed_bfloat16", "float32"], default="mixed_bfloat16")
    t.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs")
    t.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    t.add_argument(
        "--supervise",
        choices=["every-step", "last"],
        default="every-step",
        help="targets: the next frame after every input step, or only after the last",
    )
    t.add_argument(
        "--head",
        choices=HEADS,
        default=None,
        help="convlstm head (default carry; docs/recipe.md): sigmoid (the frame from the last "
        "state), blend (that frame mixed with the last input frame by a learned keep gate) "
        "or carry (an intensity coloured from the last input frame, behind a keep gate)",
    )
    t.add_argument("--loss", choices=LOSSES, default="bce", help="bce, mse or l1 (mean absolute)")
    t.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="plateau",
        help="learning rate: halved on validation plateaus, or cosine decay over the planned "
        "batches to 5%% of --learning-rate",
    )
    t.add_argument("--out", type=Path, default=Path("models"), help="output directory")
    t.set_defaults(func=_train)

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
    e.set_defaults(func=_export)

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
    r.set_defaults(func=_series)

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
    q.set_defaults(func=_quantize)

    s = sub.add_parser(
        "step-graph",
        help="the one-step graph of a ConvLSTM stack, for streams (written by export too)",
    )
    s.add_argument("keras", type=Path, help="the checkpoint, e.g. models/convlstm.keras")
    s.add_argument("--onnx", type=Path, help="its windowed graph (default: the .keras as .onnx)")
    s.set_defaults(func=_step_graph)

    r = sub.add_parser(
        "rollouts", help="score the window and state roll-outs per step on the test split"
    )
    r.add_argument("--onnx", type=Path, default=Path("models/convlstm.onnx"))
    r.add_argument("--samples", type=int, default=64)
    r.add_argument("--horizon", type=int, default=8)
    r.add_argument("--out", type=Path, help="also write the table as JSON here")
    r.set_defaults(func=_rollouts)

    c = sub.add_parser("check", help="check committed ONNX files against checkpoints and cards")
    c.add_argument("--models", type=Path, default=Path("models"))
    c.add_argument("--variant", choices=VARIANTS, nargs="+", default=list(VARIANTS))
    c.set_defaults(func=_check)

    v = sub.add_parser("evaluate", help="score the ONNX models on the test split")
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
    v.add_argument("--dry-run", action="store_true", help="print only; leave cards and plot alone")
    v.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
