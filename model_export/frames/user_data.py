"""The user's own frame sequences: loaded, checked, normalised, split and described.

``python -m model_export train --data PATH`` takes

- a ``.npy`` or ``.npz`` array (N, T, H, W, C): an ``.npz`` holding one array, or the
  one named by ``--data-key``;
- a folder with one sub-folder of PNG or JPEG frames per sequence, the frames in
  name order (read with Pillow);
- video: a folder of video files, one sequence each, or one video file, cut into
  consecutive sequences of ``--frames`` frames. Videos are read with PyAV (``av``),
  FFmpeg's own libraries bound in-process: its wheel brings the codecs, so no ffmpeg
  binary is needed, and a file it cannot decode raises an error we can report (where
  ``imageio-ffmpeg`` pipes a bundled ffmpeg executable's output). Frames are decoded
  as RGB (3 channels).

Every refusal is a ``DataError`` with a one-line message, raised before anything is
written. The frames are normalised to [0, 1] (uint8 / 255, uint16 / 65535, other
data min-max), and the transform is recorded so that the server is sent frames
normalised the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg")
SPLITS = ("train", "validation", "test")
# Shares of the sequences held out; each split gets at least one sequence.
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1


class DataError(ValueError):
    """The data cannot be trained on; the message is one line saying why."""


@dataclass(frozen=True)
class Sequences:
    """Sequences of frames as read, before normalisation, with where they came from."""

    frames: list[NDArray[Any]]
    """One (T, H, W, C) array per sequence."""
    provenance: dict[str, Any]
    names: list[str] = field(default_factory=list)


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
            f"{path}: {len(short)} sequence(s) shorter than --frames {window}, e.g. {short[0]}"
        )
    n = len(seqs.frames)
    n_val = max(1, int(round(n * VALIDATION_FRACTION)))
    n_test = max(1, int(round(n * TEST_FRACTION)))
    if n < n_val + n_test + 1:
        raise DataError(
            f"{path}: {n} sequence(s); the train, validation and test splits need at least 3"
        )
    norm, scale = normalisation(seqs.frames)
    order = np.random.default_rng(seed).permutation(n)
    chosen = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    splits = {}
    for split in SPLITS:
        windows = [w for i in np.sort(chosen[split]) for w in _windows(seqs.frames[i], window)]
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


def read(path: Path, *, key: str | None = None, frames: int | None = None) -> Sequences:
    """The sequences in ``path`` as read (an array file, a folder of frame folders, a
    folder of videos, or one video cut into sequences of ``frames`` frames)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        return _read_array(path, key)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return _read_videos(path, [path], frames)
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if videos:
            return _read_videos(path, videos, None)
        return _read_folder(path)
    raise DataError(f"{path}: not a .npy/.npz array, a folder of frame folders, or a video")


def _read_videos(path: Path, videos: list[Path], frames: int | None) -> Sequences:
    """Each video one sequence; a single video given as ``path`` is cut into
    consecutive sequences of ``frames`` frames (the last, shorter part dropped)."""
    single = videos == [path]
    if single and frames is None:
        raise DataError(f"{path}: one video is cut into sequences; say how long with --frames T")
    sequences, names, manifest = [], [], []
    for video in videos:
        decoded = _decode_video(video)
        manifest.append(
            f"{video.relative_to(path.parent if single else path).as_posix()} "
            f"{hashlib.sha256(video.read_bytes()).hexdigest()}"
        )
        if single and frames is not None:
            parts = [decoded[i : i + frames] for i in range(0, len(decoded) - frames + 1, frames)]
            sequences += parts
            names += [
                f"{video.name} frames {i * frames}-{(i + 1) * frames - 1}"
                for i in range(len(parts))
            ]
        else:
            sequences.append(decoded)
            names.append(video.name)
    lengths = {len(s) for s in sequences}
    provenance = {
        "path": str(path.resolve()),
        "format": "one video, cut into sequences of --frames frames"
        if single
        else "folder of videos",
        "reader": _video_reader(),
        "sha256": hashlib.sha256(("\n".join(manifest) + "\n").encode()).hexdigest(),
        "sha256_of": "the manifest: one line 'file sha256-of-file' per video, in name order",
        "sequences": len(sequences),
        "frames": sum(len(s) for s in sequences),
        "shape": [len(sequences), *sequences[0].shape]
        if len(lengths) == 1 and sequences
        else [len(sequences), None, *sequences[0].shape[1:]]
        if sequences
        else [0],
        "dtype": "uint8",
    }
    return Sequences(sequences, provenance, names)


def _decode_video(video: Path) -> NDArray[np.uint8]:
    """Every frame of the first video stream, (T, H, W, 3) RGB."""
    import av

    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise DataError(f"{video}: holds no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as err:
        raise DataError(f"{video}: not a readable video ({_first_line(err)})") from err
    if not frames:
        raise DataError(f"{video}: holds no frames")
    return np.stack(frames)


def _video_reader() -> str:
    import av

    return f"PyAV {av.__version__} (FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"


def _read_array(path: Path, key: str | None) -> Sequences:
    try:
        loaded: Any = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable NumPy file ({_first_line(err)})") from err
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        if key is not None and key not in names:
            raise DataError(f"{path}: no array {key!r}; it holds {names}")
        if key is None and len(names) != 1:
            raise DataError(f"{path}: holds arrays {names}; name one with --data-key")
        loaded = loaded[key if key is not None else names[0]]
    array = np.asarray(loaded)
    if array.ndim != 5:
        raise DataError(f"{path}: shape {array.shape} is not (N, T, H, W, C)")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: dtype {array.dtype} is not numeric")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DataError(f"{path}: holds NaN or infinite values")
    if array.shape[0] == 0:
        raise DataError(f"{path}: holds no sequences")
    provenance = {
        "path": str(path.resolve()),
        "format": path.suffix.lower().lstrip("."),
        "key": key,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "sha256_of": "the file",
        "sequences": int(array.shape[0]),
        "frames": int(array.shape[0] * array.shape[1]),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
    }
    names = [f"sequence {i}" for i in range(len(array))]
    return Sequences(list(array), provenance, names)


def _read_folder(path: Path) -> Sequences:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        raise DataError(f"{path}: no sequence folders (one sub-folder of PNG/JPEG frames each)")
    sequences, manifest, dtypes = [], [], set()
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: no PNG or JPEG frames")
        frames = []
        for file in files:
            raw = file.read_bytes()
            frames.append(_read_image(file))
            manifest.append(
                f"{file.relative_to(path).as_posix()} {hashlib.sha256(raw).hexdigest()}"
            )
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise DataError(f"{folder}: frames of different sizes (H, W, C) {sorted(sizes)}")
        dtypes |= {f.dtype for f in frames}
        sequences.append(np.stack(frames))
    if len(dtypes) > 1:
        raise DataError(f"{path}: frames of different bit depths {sorted(map(str, dtypes))}")
    total = sum(len(s) for s in sequences)
    provenance = {
        "path": str(path.resolve()),
        "format": "folder of image sequences",
        "sha256": hashlib.sha256(("\n".join(manifest) + "\n").encode()).hexdigest(),
        "sha256_of": "the manifest: one line 'relative/path sha256-of-file' per frame, in name order",
        "sequences": len(sequences),
        "frames": total,
        "shape": [len(sequences), None, *sequences[0].shape[1:]]
        if len({len(s) for s in sequences}) > 1
        else [len(sequences), *sequences[0].shape],
        "dtype": str(sequences[0].dtype),
    }
    return Sequences(sequences, provenance, [f.name for f in folders])


def _read_image(file: Path) -> NDArray[Any]:
    """One frame (H, W, C): greyscale -> 1 channel, RGB 3, RGBA 4; palette images as RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "1"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{file}: not a readable image ({_first_line(err)})") from err
    return array[:, :, None] if array.ndim == 2 else array


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
