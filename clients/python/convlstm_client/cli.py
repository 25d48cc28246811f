"""``convlstm-predict FRAMES... [--url URL] [--horizon N] [--out DIR] [--model NAME] [--stream]``
``convlstm-predict --csv FILE --column NAME... --model NAME --frequency F [--horizon N]``

Sends a sequence to a running service and writes what it predicts. FRAMES is one of:

- 15 PNG or JPEG files, oldest first, in the order given (a shell glob sorts them);
- one animated GIF: its first 15 frames (later ones are ignored, as on the demo page);
- one ``.npy`` array, (T, H, W, C) for one sequence or (N, T, H, W, C) for N sequences,
  C = 1, 3 or 4, uint8 in 0-255 or floating point in [0, 1].

Images are converted to the model's channels as the server converts PNGs: greyscale (L)
for a 1-channel model, RGB for 3, RGBA for 4 (an image without alpha made opaque).

For each sequence it writes ``pred_01.png``, ``pred_02.png``, ... (L, RGB or RGBA, as the
model predicts) and ``sequence.gif`` (the inputs, then the prediction) under DIR, or under
``DIR/seq_000/``, ``DIR/seq_001/``, ... for an (N, T, H, W, C) array, and shows progress
on stderr while a batch runs.

With ``--csv``, it forecasts instead: the named column (or columns, one row per time
step, for a multivariate model) of FILE is sent to the series model ``--model`` over
``/v1/timeseries/forecast``, and the forecast is printed as CSV (``step``, the forecast,
and any ``--quantiles``).

With ``--stream`` the frames (any number; every frame of a GIF) go one at a time through
a stream whose state the server keeps, and ``next_001.png``, ... hold the frame predicted
after each.

Exit status: 0 done; 1 the server refused a request or could not be reached (its
message is printed; sequences already written stay); 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageSequence, UnidentifiedImageError

from convlstm_client.client import ClientError, NextFrameClient, Prediction, ReadyInfo
from convlstm_client.series_csv import CsvError, read_columns

PROG = "convlstm-predict"
GIF_FRAME_MS = 200


class InputError(Exception):
    """The command line or an input file cannot be used: exit status 2."""


MODES = {1: "L", 3: "RGB", 4: "RGBA"}
"""The PIL mode of a frame of each channel count the service takes."""


@dataclass
class Inputs:
    """Every sequence to send, (N, T, H, W, C), uint8 or float32 in [0, 1]."""

    sequences: NDArray[Any]
    batched: bool
    source: str
    trim_to_model: bool = False  # a GIF: keep only as many frames as the model takes
    images: bool = False  # read from image files: converted to the model's channels


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(__doc__ or "").split("\n\n", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "frames", nargs="*", type=Path, metavar="FRAMES", help="PNG/JPEG files, a GIF or a .npy"
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="forecast a series from this CSV")
    p.add_argument("--column", nargs="+", metavar="NAME", help="with --csv: the column(s)")
    p.add_argument(
        "--frequency", metavar="F", help="with --csv: the step between rows (week, W, year, ...)"
    )
    p.add_argument("--start", metavar="ISO", help="with --csv: the time of the first row")
    p.add_argument(
        "--quantiles", type=float, nargs="+", metavar="Q", help="with --csv: e.g. 0.1 0.9"
    )
    p.add_argument(
        "--url",
        default=os.environ.get("CONVLSTM_URL", "http://127.0.0.1:8000"),
        metavar="URL",
        help="the service (default $CONVLSTM_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--horizon", type=int, default=1, metavar="N", help="frames to predict (default 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("predictions"),
        metavar="DIR",
        help="output directory (default ./predictions)",
    )
    p.add_argument(
        "--model", metavar="NAME", help="which served model answers (default: the server's)"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("CONVLSTM_API_KEY"),
        metavar="KEY",
        help="API key, when the service needs one (default $CONVLSTM_API_KEY)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds per request (60)"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="feed the frames one at a time through a stream (any number of them, the "
        "state kept on the server) and write next_NNN.png, the frame predicted after "
        "each; the last one's horizon as pred_NN.png",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (a console script passes it to exit)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 on --help
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.csv is not None:
        return forecast_csv(args)
    if not args.frames:
        print(f"{PROG}: error: give FRAMES, or --csv FILE to forecast a series", file=sys.stderr)
        return 2
    try:
        inputs = load_inputs(args.frames)
        with NextFrameClient(args.url, args.api_key, timeout=args.timeout) as client:
            ready = client.ready()
            if args.stream:
                # Any number of frames, one at a time: only their channels must fit.
                check_against_model(inputs, ready, args.model, frame_count=False)
                return stream_all(client, inputs, args.horizon, args.model, args.out)
            check_against_model(inputs, ready, args.model)
            return predict_all(client, inputs, args.horizon, args.model, args.out)
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ClientError as err:
        print(f"{PROG}: server error: {err}", file=sys.stderr)
        return 1


def forecast_csv(args: argparse.Namespace) -> int:
    """``--csv``: forecast the column(s) and print the forecast as CSV on stdout."""
    if args.frames or not args.column or not args.model or not args.frequency:
        print(
            f"{PROG}: error: --csv takes no FRAMES and needs --column, --model and --frequency",
            file=sys.stderr,
        )
        return 2
    try:
        series = read_columns(args.csv, args.column)
        with NextFrameClient(args.url, args.api_key, timeout=args.timeout) as client:
            forecast = client.forecast(
                args.model,
                series,
                horizon=args.horizon,
                frequency=args.frequency,
                start_timestamp=args.start,
                quantiles=args.quantiles,
            )
    except CsvError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ClientError as err:
        print(f"{PROG}: server error: {err}", file=sys.stderr)
        return 1
    mean = forecast.mean.reshape(len(forecast.mean), -1)
    names = ["forecast"] if mean.shape[1] == 1 else [f"forecast_{i}" for i in range(mean.shape[1])]
    quantiles = {q: v.reshape(len(v), -1)[:, 0] for q, v in forecast.quantiles.items()}
    print(",".join(["step", *names, *(f"q{q}" for q in quantiles)]))
    for i, row in enumerate(mean, start=1):
        cells = [f"{v:.10g}" for v in row] + [f"{v[i - 1]:.10g}" for v in quantiles.values()]
        print(",".join([str(i), *cells]))
    if forecast.note:
        print(f"{PROG}: {forecast.note}", file=sys.stderr)
    return 0


def load_inputs(paths: list[Path]) -> Inputs:
    """Read FRAMES: image files, one GIF or one ``.npy`` array."""
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    suffixes = {p.suffix.lower() for p in paths}
    for kind in (".npy", ".gif"):
        if kind in suffixes and len(paths) > 1:
            raise InputError(f"give one {kind} file alone, or image files; got {len(paths)} files")
    if suffixes == {".npy"}:
        return _load_npy(paths[0])
    if suffixes == {".gif"}:
        frames = _gif_frames(paths[0])
        return Inputs(frames[np.newaxis], batched=False, source=str(paths[0]), trim_to_model=True)
    images = [_read_image(p) for p in paths]
    first = images[0].shape[:2]
    for path, image in zip(paths, images, strict=True):
        if image.shape[:2] != first:
            raise InputError(f"{path}: {_size(image)}, but {paths[0]} is {_size(images[0])}")
    # Files of different modes (a greyscale frame among colour ones) share the widest.
    channels = max(image.shape[2] for image in images)
    images = [to_channels(image, channels) for image in images]
    return Inputs(
        np.stack(images)[np.newaxis], batched=False, source=f"{len(paths)} images", images=True
    )


def to_channels(frames: NDArray[np.uint8], channels: int) -> NDArray[np.uint8]:
    """uint8 frames (..., H, W, C) as ``channels`` channels, converted by PIL as the server
    converts a PNG: L by luminance, RGB by repeating grey, alpha dropped or made opaque."""
    if frames.shape[-1] == channels:
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    converted = [
        np.asarray(_image(frame).convert(MODES[channels])).reshape(*frame.shape[:2], channels)
        for frame in flat
    ]
    return np.stack(converted).reshape(*frames.shape[:-1], channels)


def check_against_model(
    inputs: Inputs, ready: ReadyInfo, model: str | None = None, *, frame_count: bool = True
) -> None:
    """Cut a GIF to the model's frame count and convert images to its channels; catch a
    wrong frame count or size here, naming the input, before any prediction is asked
    for. A model the server does not describe is left to the server to check."""
    spec = ready.frame_shape_of(model)
    if spec is None:
        return
    name = model or ready.model
    frames, height, width, channels = spec
    got = inputs.sequences.shape[1]
    if inputs.trim_to_model and got > frames:
        print(f"{inputs.source}: {got} frames, using the first {frames}", file=sys.stderr)
        inputs.sequences = inputs.sequences[:, :frames]
    have = inputs.sequences.shape[-1]
    if inputs.images and have != channels and channels in MODES:
        print(
            f"{inputs.source}: {MODES.get(have, have)} converted to {MODES[channels]} "
            f"for model {name}",
            file=sys.stderr,
        )
        inputs.sequences = to_channels(inputs.sequences, channels)
    shape = inputs.sequences.shape[1:]
    if frame_count and shape[0] != frames:
        raise InputError(f"{inputs.source}: {shape[0]} frames, but model {name} needs {frames}")
    if shape[1:] != (height, width, channels):
        raise InputError(
            f"{inputs.source}: frames are {list(shape[1:])} (height, width, channels), "
            f"but model {name} needs {[height, width, channels]}"
        )


def predict_all(
    client: NextFrameClient, inputs: Inputs, horizon: int, model: str | None, out: Path
) -> int:
    total = len(inputs.sequences)
    progress = Progress(total, sys.stderr) if total > 1 else None
    last: Prediction | None = None
    for i, sequence in enumerate(inputs.sequences):
        last = client.predict(sequence, horizon=horizon, model=model)
        directory = out / f"seq_{i:03d}" if inputs.batched else out
        write_outputs(directory, sequence, last.frames)
        if progress is not None:
            progress.step()
    assert last is not None
    where = f"{out}/seq_000 ... seq_{total - 1:03d}" if inputs.batched else str(out)
    print(
        f"{total} sequence(s), {horizon} frame(s) each, written to {where} "
        f"(model {last.model} {last.model_version} on {last.provider})"
    )
    return 0


def stream_all(
    client: NextFrameClient, inputs: Inputs, horizon: int, model: str | None, out: Path
) -> int:
    """One sequence, a frame at a time, through a stream; every frame of a GIF is fed."""
    if inputs.batched:
        raise InputError(f"{inputs.source}: --stream takes one sequence, not (N, T, H, W, C)")
    sequence = inputs.sequences[0]
    out.mkdir(parents=True, exist_ok=True)
    last: Prediction | None = None
    with client.stream(model) as stream:
        for t in range(len(sequence)):
            last = stream.send(
                sequence[t : t + 1], horizon=horizon if t == len(sequence) - 1 else 1
            )
            _image(to_uint8(last.frames)[0]).save(out / f"next_{t + 1:03d}.png")
    assert last is not None
    write_outputs(out, sequence, last.frames)
    print(
        f"{len(sequence)} frame(s) streamed one at a time, next_001.png ... "
        f"next_{len(sequence):03d}.png and {horizon} frame(s) after the last written to {out} "
        f"(model {last.model} {last.model_version} on {last.provider})"
    )
    return 0


def write_outputs(directory: Path, inputs: NDArray[Any], predicted: NDArray[np.float32]) -> None:
    """``pred_NN.png`` per predicted frame, and ``sequence.gif``: inputs then prediction."""
    directory.mkdir(parents=True, exist_ok=True)
    predicted_u8 = to_uint8(predicted)
    for i, frame in enumerate(predicted_u8, start=1):
        _image(frame).save(directory / f"pred_{i:02d}.png")
    images = [_image(f) for f in np.concatenate([to_uint8(inputs), predicted_u8])]
    images[0].save(
        directory / "sequence.gif",
        save_all=True,
        append_images=images[1:],
        duration=GIF_FRAME_MS,
        loop=0,
    )


def to_uint8(frames: NDArray[Any]) -> NDArray[np.uint8]:
    """uint8 stays; floating point in [0, 1] is rounded to 0-255 as the server rounds."""
    if frames.dtype == np.uint8:
        return np.asarray(frames, dtype=np.uint8)
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


class Progress:
    """One stderr line, redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.start = time.monotonic()
        self.tty = stream.isatty()

    def step(self) -> None:
        self.done += 1
        per = (time.monotonic() - self.start) / self.done
        left = per * (self.total - self.done)
        filled = round(20 * self.done / self.total)
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} sequences, "
            f"{per:.1f} s each, ~{left:.0f} s left"
        )
        end = "\n" if not self.tty or self.done == self.total else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _load_npy(path: Path) -> Inputs:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a NumPy .npy array ({err})") from None
    if array.ndim not in (4, 5) or array.shape[-1] not in MODES:
        raise InputError(
            f"{path}: shape {list(array.shape)}; expected (T, H, W, C) or (N, T, H, W, C) "
            "with C = 1, 3 or 4"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{path}: dtype {array.dtype}; expected uint8 or float in [0, 1]")
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InputError(f"{path}: float values must be finite and within [0, 1]")
    batched = array.ndim == 5
    if batched and len(array) == 0:
        raise InputError(f"{path}: holds no sequence (N = 0)")
    return Inputs(array if batched else array[np.newaxis], batched=batched, source=str(path))


def _gif_frames(path: Path) -> NDArray[np.uint8]:
    try:
        with Image.open(path) as img:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable GIF ({err})") from None


def _read_image(path: Path) -> NDArray[np.uint8]:
    """The image as (H, W, C): L, RGB and RGBA as they are; another mode as RGBA where it
    has transparency, L where it is greyscale (16-bit, 1-bit), else RGB."""
    try:
        with Image.open(path) as img:
            image: Image.Image = img
            if img.mode not in MODES.values():
                if "A" in img.getbands() or "transparency" in img.info:
                    image = img.convert("RGBA")
                elif img.mode in ("1", "I", "I;16", "F"):
                    image = img.convert("L")
                else:
                    image = img.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    return array[..., np.newaxis] if array.ndim == 2 else array


def _image(frame: NDArray[np.uint8]) -> Image.Image:
    """A (H, W, C) uint8 frame as a PIL image of its mode (L for one channel)."""
    return Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)


def _size(image: NDArray[Any]) -> str:
    return f"{image.shape[1]}x{image.shape[0]} (width x height)"


if __name__ == "__main__":
    raise SystemExit(main())
