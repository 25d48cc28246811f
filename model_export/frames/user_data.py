"""The user's own frame sequences: checked, normalised, split into windows and described.

``python -m model_export train --data PATH`` takes what ``frame_readers`` reads (an
``.npy``/``.npz`` array, a folder of frame folders, videos). Every refusal is a
``DataError`` with a one-line message, raised before anything is written. The frames
are normalised to [0, 1] (uint8 / 255, uint16 / 65535, other data min-max), and the
transform is recorded so that the server is sent frames normalised the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_export.frames.frame_readers import IMAGE_SUFFIXES, VIDEO_SUFFIXES, WINDOW_FLAGS, read

# Raised by the readers and here alike; importers catch it as ``user_data.DataError``.
from model_export.frames.frame_readers import DataError as DataError

SPLITS = ("train", "validation", "test")
# Shares of the sequences held out; each split gets at least one sequence.
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1


def split_order(n: int, *, seed: int, where: str = "") -> dict[str, NDArray[np.int64]]:
    """The sequences of each split by index, sorted (no sequence in two splits): the one
    split of the in-memory and the streamed loaders. ``where`` starts the error."""
    n_val = max(1, int(round(n * VALIDATION_FRACTION)))
    n_test = max(1, int(round(n * TEST_FRACTION)))
    if n < n_val + n_test + 1:
        raise DataError(
            f"{where}{n} sequence(s); the train, validation and test splits need at least 3"
        )
    order = np.random.default_rng(seed).permutation(n)
    return {
        "test": np.sort(order[:n_test]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


@dataclass(frozen=True)
class Dataset:
    """Normalised windows per split, and the record of how they were made."""

    splits: dict[str, NDArray[np.float32]]
    """Split name -> windows (n, T, H, W, C) in [0, 1]."""
    record: dict[str, Any]
    """Provenance, normalisation, split counts: written into the training record and card."""

    @property
    def window_shape(self) -> tuple[int, int, int, int]:
        t, h, w, c = self.splits["train"].shape[1:]
        return int(t), int(h), int(w), int(c)


def load(
    path: Path,
    *,
    key: str | None = None,
    frames: int | None = None,
    resize: tuple[int, int] | None = None,
    seed: int = 0,
) -> Dataset:
    """Read ``path``, check it, normalise it, split it by sequence and cut windows."""
    seqs = read(path, key=key, frames=frames)
    lengths = {len(s) for s in seqs.frames}
    if frames is None and len(lengths) > 1:
        raise DataError(
            f"{path}: sequences have different lengths {sorted(lengths)}; "
            "cut windows of one length with --frames T"
        )
    sizes = {s.shape[1:] for s in seqs.frames}
    if len(sizes) > 1:
        raise DataError(
            f"{path}: sequences have frames of different sizes (H, W, C) {sorted(sizes)}"
        )
    window = frames if frames is not None else lengths.pop()
    if window < 2:
        raise DataError(
            f"{path}: a window needs at least 2 frames (inputs and the next); got {window}"
        )
    short = [n for n, s in zip(seqs.names, seqs.frames, strict=True) if len(s) < window]
    if short:
        raise DataError(
            f"{path}: {len(short)} sequence(s) shorter than a window of {window} frames "
            f"({WINDOW_FLAGS}), e.g. {short[0]}"
        )
    chosen = split_order(len(seqs.frames), seed=seed, where=f"{path}: ")
    norm, scale = normalisation(seqs.frames)
    splits = {}
    for split in SPLITS:
        windows = [w for i in chosen[split] for w in _windows(seqs.frames[i], window)]
        arr = scale(np.stack(windows))
        if resize is not None:
            arr = _resize(arr, resize)
        splits[split] = arr
    t, h, w, c = splits["train"].shape[1:]
    record = {
        **seqs.provenance,
        "normalisation": norm,
        "resize": None if resize is None else list(resize),
        "window_frames": int(t),
        "window_shape": [int(t), int(h), int(w), int(c)],
        "windows": "whole sequences"
        if frames is None
        else f"every window of {frames} consecutive frames",
        "split_seed": seed,
        "split_by": "sequence (no sequence's frames in two splits)",
        "splits": {s: {"sequences": len(chosen[s]), "windows": len(splits[s])} for s in SPLITS},
    }
    return Dataset(splits, record)


def check_fits_in_memory(
    path: Path, *, key: str | None, frames: int | None, limit_gb: float | None
) -> None:
    """Refuse, before reading, data whose float32 windows would pass ``limit_gb`` (default:
    half the memory available), pointing to ``--stream``. Sized from array headers and
    frame counts; a video's length is known only once decoded, so videos pass here."""
    limit = _available_bytes() / 2 if limit_gb is None else limit_gb * 2**30
    need = _estimate_bytes(path, key, frames)
    if need is not None and need > limit:
        raise DataError(
            f"{path}: its windows take {need / 2**30:.1f} GiB as float32 in memory, over the "
            f"bound of {limit / 2**30:.1f} GiB; train with --stream (read from disk) or "
            "raise --memory-limit-gb"
        )


def _available_bytes() -> float:
    """MemAvailable from /proc/meminfo (Linux), else the free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _estimate_bytes(path: Path, key: str | None, frames: int | None) -> int | None:
    if path.is_file() and path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None  # ``read`` says what is wrong with it
        shape = array.shape
    elif path.is_dir() and not any(p.suffix.lower() in VIDEO_SUFFIXES for p in path.iterdir()):
        folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        counts = [
            sum(1 for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in folders
        ]
        first = next(
            (f for d in folders for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES),
            None,
        )
        if first is None:
            return None
        from PIL import Image

        try:
            with Image.open(first) as image:
                pixels = image.height * image.width * max(len(image.getbands()), 3)
        except OSError:
            return None
        t = frames or max(counts)
        return sum(max(0, n - t + 1) * t for n in counts) * pixels * 4
    else:
        return None
    if len(shape) != 5:
        return None
    n, total, h, w, c = shape
    t = frames or total
    return int(n * max(0, total - t + 1) * t * h * w * c * 4)


def normalisation(
    sequences: list[NDArray[Any]],
) -> tuple[dict[str, Any], Callable[[NDArray[Any]], NDArray[np.float32]]]:
    """How the frames are brought into [0, 1], recorded, and the function that does it."""
    dtype = sequences[0].dtype
    record: dict[str, Any]
    if dtype == np.uint8 or dtype == np.uint16:
        top = float(np.iinfo(dtype).max)
        record = {
            "kind": f"{dtype} / {top:g}",
            "formula": f"x / {top:g}",
            "low": 0.0,
            "high": top,
        }
    else:
        low = float(min(float(s.min()) for s in sequences))
        high = float(max(float(s.max()) for s in sequences))
        if 0.0 <= low and high <= 1.0 and np.issubdtype(dtype, np.floating):
            low, high = 0.0, 1.0
            record = {"kind": "none (already in [0, 1])", "formula": "x", "low": low, "high": high}
        else:
            if not high > low:
                raise DataError(f"every value is {low:g}: nothing to learn")
            record = {
                "kind": "min-max over the whole data set",
                "formula": f"(x - {low!r}) / ({high!r} - {low!r})",
                "low": low,
                "high": high,
            }
    low = float(record["low"])
    span = float(record["high"]) - low

    def scale(x: NDArray[Any]) -> NDArray[np.float32]:
        return np.asarray((x.astype(np.float64) - low) / span, dtype=np.float32)

    record["served"] = (
        "send the server frames normalised the same way, values in [0, 1]; "
        "a PNG sent to /predict is read as uint8 / 255"
    )
    return record, scale


def _windows(seq: NDArray[Any], length: int) -> list[NDArray[Any]]:
    return [seq[i : i + length] for i in range(len(seq) - length + 1)]


def _resize(x: NDArray[np.float32], size: tuple[int, int]) -> NDArray[np.float32]:
    import tensorflow as tf

    n, t, h, w, c = x.shape
    frames = tf.image.resize(x.reshape(n * t, h, w, c), size, antialias=True)
    out: NDArray[np.float32] = np.clip(np.asarray(frames), 0.0, 1.0).astype(np.float32)
    return out.reshape(n, t, *size, c)


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise DataError(f"--resize {text!r}: give HxW, e.g. 32x48")
    return int(parts[0]), int(parts[1])
