"""`python -m model_export train`: train one variant on the moving digits, or the ConvLSTM on your own sequences."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.frames.model import HEADS, VARIANTS
from model_export.frames.precision import PRECISIONS
from model_export.frames.train import LOSSES, SCHEDULES

if TYPE_CHECKING:  # TensorFlow is imported only by the commands that train
    from model_export.frames.train_data import DataTrainConfig

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    t.add_argument(
        "--stream",
        action="store_true",
        help="with --data: read windows from disk as training needs them (memory-mapped "
        ".npy/.npz shards, PNG/JPEG frame folders, videos decoded on the fly), for data "
        "larger than memory; PATH may be a folder of shards",
    )
    t.add_argument(
        "--shuffle-group",
        type=int,
        default=8,
        help="with --stream: sources whose windows are shuffled together (and decoded "
        "videos held per prefetch thread)",
    )
    t.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="with --data (in memory): refuse a data set whose windows take more than "
        "this as float32 (default: half the memory available)",
    )
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
    t.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="auto",
        help="auto (default): mixed_bfloat16 on a GPU or a CPU with AVX-512 BF16/AMX, "
        "float32 elsewhere, where bf16 is emulated and about 10x slower",
    )
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
    t.add_argument(
        "--varied-share",
        type=float,
        default=0.0,
        help="share of the generated sequences drawn from the varied glyph family (fonts, "
        "speeds 0-3, 1-3 glyphs, backgrounds, occlusion; docs/training.md), 0-1",
    )
    t.add_argument(
        "--augment",
        action="store_true",
        help="flip, transpose and permute the colours of each generated training sequence",
    )
    t.add_argument(
        "--feedback-steps",
        type=int,
        default=1,
        metavar="K",
        help="run the model K times on a sliding window of its own predictions, as serving "
        "feeds them back at horizon K, and add the fed-back frames' loss to the every-step "
        "loss (1, the default: the next frame only; at most 15); each pass costs one more "
        "run of the stack; with --data, windows of --frames T are cut T + K - 1 frames long "
        "(whole sequences of L frames give the model L - K inputs)",
    )
    t.add_argument(
        "--feedback-weight",
        type=float,
        default=None,
        metavar="W",
        help="with --feedback-steps K > 1: the weight of the fed-back frames' mean loss "
        "against the every-step mean loss (default 1)",
    )
    t.add_argument(
        "--feedback-loss",
        choices=LOSSES,
        default=None,
        help="with --feedback-steps K > 1: the loss of the fed-back frames (default: --loss; "
        "l1 does not reward smearing an uncertain digit, docs/recipe.md)",
    )
    t.add_argument(
        "--ssim-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="add W * (1 - SSIM) per sequence to the loss, SSIM as the cards score it "
        "(default 0: none; docs/recipe.md)",
    )
    t.add_argument("--out", type=Path, default=Path("models"), help="output directory")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    from model_export.frames.feedback import resolve_feedback_flags
    from model_export.frames.model import RELEASE_HEAD
    from model_export.frames.ssim_loss import check_ssim_weight
    from model_export.frames.train import TrainConfig, check_varied_share, train

    try:
        weight = resolve_feedback_flags(
            args.feedback_steps,
            args.feedback_weight,
            args.feedback_loss,
            every_step=args.supervise == "every-step",
        )
        check_varied_share(args.varied_share)
        check_ssim_weight(args.ssim_weight)
    except ValueError as err:
        print(f"train: {err}", file=sys.stderr)
        return 2

    head = args.head or (RELEASE_HEAD if args.variant == "convlstm" else "sigmoid")

    cfg = TrainConfig(
        variant=args.variant,
        train_samples=3000 if args.samples is None else args.samples,
        validation_samples=64 if args.validation_samples is None else args.validation_samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        precision=args.precision,  # resolved where training starts
        patience=args.patience,
        max_minutes=args.max_minutes,
        out_dir=args.out,
        every_step=args.supervise == "every-step",
        head=head,
        loss=args.loss,
        schedule=args.schedule,
        init_from=args.resume,
        train_skip=args.skip_samples,
        varied_share=args.varied_share,
        augment=args.augment,
        feedback_steps=args.feedback_steps,
        feedback_weight=weight,
        feedback_loss=args.feedback_loss,
        ssim_weight=args.ssim_weight,
    )
    record = train(cfg)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    return 0


def _data_config(args: argparse.Namespace, name: str) -> DataTrainConfig:
    """The training settings of `train --data`, in memory or streamed alike."""
    from model_export.frames.feedback import resolve_feedback_flags
    from model_export.frames.model import CONVLSTM_FILTERS
    from model_export.frames.train_data import DataTrainConfig

    return DataTrainConfig(
        name=name,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        precision=args.precision,  # resolved where training starts
        patience=args.patience,
        max_minutes=args.max_minutes,
        out_dir=args.out,
        filters=tuple(args.filters or CONVLSTM_FILTERS),
        resume=args.resume,
        feedback_steps=args.feedback_steps,
        # Checked by ``_train_on_data`` already; here only its default is resolved.
        feedback_weight=resolve_feedback_flags(
            args.feedback_steps, args.feedback_weight, args.feedback_loss
        ),
        feedback_loss=args.feedback_loss,
    )


def _drawn_frames(args: argparse.Namespace) -> int | None:
    """The frames a window is cut with: --frames T, and the K - 1 fed-back frames after
    them with --feedback-steps K (None: whole sequences)."""
    return None if args.frames is None else args.frames + args.feedback_steps - 1


def _train_on_data(args: argparse.Namespace) -> int:
    from model_export.frames import user_data
    from model_export.frames.train_data import checkpoint_path, record_path, train_on_data

    recipe = {"--head": args.head is not None, "--loss": args.loss != "bce"}
    recipe["--schedule"] = args.schedule != "plateau"
    recipe["--varied-share"] = args.varied_share != 0.0
    recipe["--augment"] = args.augment
    recipe["--ssim-weight"] = args.ssim_weight != 0.0
    if any(recipe.values()):
        flags = ", ".join(flag for flag, given in recipe.items() if given)
        print(f"train: {flags} go with --data digits", file=sys.stderr)
        return 2
    from model_export.frames.feedback import resolve_feedback_flags

    try:
        resolve_feedback_flags(args.feedback_steps, args.feedback_weight, args.feedback_loss)
    except ValueError as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    if args.variant != "convlstm" or args.supervise != "every-step":
        print(
            "train: --data PATH trains the convlstm variant with every-step supervision only",
            file=sys.stderr,
        )
        return 2
    name = args.name or "own"
    if not NAME_PATTERN.fullmatch(name):
        print(f"train: --name {name!r}: use letters, digits, _ and -", file=sys.stderr)
        return 2
    if args.stream:
        return _train_streamed(args, name)
    if args.samples is not None or args.validation_samples is not None:
        # The data decides how many sequences there are; the split is by --seed.
        print("train: --samples and --validation-samples go with --data digits", file=sys.stderr)
        return 2
    try:
        user_data.check_fits_in_memory(
            Path(args.data),
            key=args.data_key,
            frames=_drawn_frames(args),
            limit_gb=args.memory_limit_gb,
        )
        dataset = user_data.load(
            Path(args.data),
            key=args.data_key,
            frames=_drawn_frames(args),
            resize=None if args.resize is None else user_data.parse_size(args.resize),
            seed=args.seed,
        )
        cfg = _data_config(args, name)
        record = train_on_data(cfg, dataset)
    except user_data.DataError as err:
        print(f"train: {err}", file=sys.stderr)
        return 1
    checkpoint = checkpoint_path(cfg.out_dir, cfg.name)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    print(f"{checkpoint}: the inference checkpoint; record {record_path(checkpoint)}")
    return 0


def _train_streamed(args: argparse.Namespace, name: str) -> int:
    from model_export.frames.stream_scan import scan
    from model_export.frames.train_data import checkpoint_path, record_path
    from model_export.frames.train_stream import train_on_stream
    from model_export.frames.user_data import DataError

    if args.resize is not None or args.shuffle_group < 1:
        print(
            "train: --stream takes frames of one size (no --resize) and --shuffle-group >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        catalogue = scan(Path(args.data), window=_drawn_frames(args), key=args.data_key)
        window = _drawn_frames(args) or catalogue.sources[0].length
        cfg = _data_config(args, name)
        record = train_on_stream(
            cfg, catalogue, path=Path(args.data), window=window, group=args.shuffle_group
        )
    except DataError as err:
        print(f"train: {err}", file=sys.stderr)
        return 1
    checkpoint = checkpoint_path(cfg.out_dir, cfg.name)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    print(f"{checkpoint}: the inference checkpoint; record {record_path(checkpoint)}")
    return 0
