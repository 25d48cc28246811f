"""Reading the user's own frame sequences as they are on disk, before any checking of
the whole set, normalisation or windows (``user_data``) or streaming (``stream_data``).

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

What cannot be read is a ``DataError`` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg")


class DataError(ValueError):
    """The data cannot be trained on; the message is one line saying why."""


# What sets a window's length, named by both loaders' "too short" errors: with
# --feedback-steps K the model is fed its own last K - 1 predictions, so a window holds
# K - 1 frames more than --frames T.
WINDOW_FLAGS = "--frames T, plus K - 1 with --feedback-steps K"


@dataclass(frozen=True)
class Sequences:
    """Sequences of frames as read, before normalisation, with where they came from."""

    frames: list[NDArray[Any]]
    """One (T, H, W, C) array per sequence."""
    provenance: dict[str, Any]
    names: list[str] = field(default_factory=list)


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
        decoded = decode_video(video)
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


def decode_video(video: Path) -> NDArray[np.uint8]:
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
            frames.append(read_image(file))
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


def read_image(file: Path) -> NDArray[Any]:
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
