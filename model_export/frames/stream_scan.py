"""The scan before streamed training (``train --data PATH --stream``): every sequence on
disk opened once, without keeping its frames, and checked.

``.npy`` shards and uncompressed ``.npz`` members are memory-mapped (NumPy reads only
the header), PNG/JPEG frames opened by their headers (Pillow's ``verify``), videos
decoded once with PyAV and dropped. Every refusal the issue lists (mixed frame sizes or
channel counts, unreadable files, a video that cannot be decoded, a shard of the wrong
dtype or shape, too few frames for one window) is a ``DataError`` naming the file,
before training starts. What the scan finds, a ``Catalogue`` of ``Source``s, is what
``stream_data`` reads batches from.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_export.frames.frame_readers import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    WINDOW_FLAGS,
    DataError,
    decode_video,
)
from model_export.frames.user_data import split_order

Kind = str  # "array", "frames" or "video"


# Slots: a data set of many short sequences has one Source each, and the catalogue is
# the part of the reader's memory that grows with the data set.
@dataclass(frozen=True, slots=True)
class Source:
    """One sequence on disk: an array shard's row, a folder of frames, or a video."""

    kind: Kind
    path: Path
    length: int
    frame_shape: tuple[int, int, int]
    dtype: str
    row: int = 0
    key: str | None = None


@dataclass(frozen=True)
class Catalogue:
    """What the scan found: the sequences, their common frame shape and dtype."""

    sources: list[Source]
    frame_shape: tuple[int, int, int]
    dtype: str

    def nbytes(self, window: int) -> int:
        """Bytes the windows of length ``window`` would take in memory as float32."""
        h, w, c = self.frame_shape
        windows = sum(max(0, s.length - window + 1) for s in self.sources)
        return windows * window * h * w * c * 4


def memmap_array(path: Path, key: str | None) -> list[tuple[str | None, NDArray[Any]]]:
    """The arrays of a ``.npy`` (memory-mapped) or of an ``.npz``'s uncompressed members
    (memory-mapped at their offset in the zip file)."""
    if path.suffix.lower() == ".npy":
        try:
            return [(None, np.load(path, mmap_mode="r", allow_pickle=False))]
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable NumPy file ({err})") from err
    out: list[tuple[str | None, NDArray[Any]]] = []
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            for member in members:
                name = member.filename[: -len(".npy")]
                if key is not None and name != key:
                    continue
                if member.compress_type != zipfile.ZIP_STORED:
                    raise DataError(
                        f"{path}: array {name!r} is compressed (np.savez_compressed) and "
                        "cannot be memory-mapped; save shards with np.save or np.savez"
                    )
                # The member's bytes start after its local header (30 bytes, name, extra).
                raw.seek(member.header_offset)
                header = raw.read(30)
                start = member.header_offset + 30 + int.from_bytes(header[26:28], "little")
                start += int.from_bytes(header[28:30], "little")
                raw.seek(start)
                version = np.lib.format.read_magic(raw)
                header_of = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = header_of(raw)
                if dtype.hasobject:
                    raise DataError(f"{path}: array {name!r} holds Python objects")
                out.append(
                    (
                        name,
                        np.memmap(
                            path,
                            dtype=dtype,
                            mode="r",
                            offset=raw.tell(),
                            shape=shape,
                            order="F" if fortran else "C",
                        ),
                    )
                )
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz ({err})") from err
    if not out:
        raise DataError(f"{path}: no array {key!r} in it" if key else f"{path}: holds no array")
    return out


def _scan_array(path: Path, key: str | None) -> list[Source]:
    sources = []
    for name, array in memmap_array(path, key):
        where = f"{path}" + (f" [{name}]" if name else "")
        if array.ndim != 5:
            raise DataError(f"{where}: shape {array.shape} is not (N, T, H, W, C)")
        if array.dtype not in (np.uint8, np.uint16, np.float32, np.float16):
            raise DataError(
                f"{where}: dtype {array.dtype}; shards stream as uint8, uint16, float16 or "
                "float32 (values in [0, 1])"
            )
        n, t, h, w, c = (int(v) for v in array.shape)
        shape, dtype = (h, w, c), str(array.dtype)  # one object shared by every row
        sources += [Source("array", path, t, shape, dtype, row=i, key=name) for i in range(n)]
    return sources


def _scan_frames(folder: Path) -> Source:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG frames")
    shape: tuple[int, int, int] | None = None
    dtype = ""
    for file in files:
        try:
            with Image.open(file) as image:
                image.verify()  # reads the whole file: truncated data fails here
            with Image.open(file) as image:
                bands = len(image.getbands()) if image.mode not in ("P", "1") else 3
                frame_shape = (image.height, image.width, bands)
                frame_dtype = "uint16" if image.mode.startswith("I;16") else "uint8"
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"{file}: not a readable image ({err})") from err
        if shape is None:
            shape, dtype = frame_shape, frame_dtype
        elif frame_shape != shape:
            raise DataError(f"{file}: frame (H, W, C) {frame_shape}, the folder's first is {shape}")
    assert shape is not None
    return Source("frames", folder, len(files), shape, dtype)


def _scan_video(video: Path) -> Source:
    decoded = decode_video(video)  # decoded once to prove it decodes, then dropped
    t, h, w, c = decoded.shape
    return Source("video", video, int(t), (int(h), int(w), int(c)), "uint8")


def scan(path: Path, *, window: int | None, key: str | None = None) -> Catalogue:
    """Every sequence under ``path`` (a shard, a folder of shards, of frame folders or
    of videos), checked; raises ``DataError`` naming the first bad file."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    sources: list[Source] = []
    for file in files:
        suffix = file.suffix.lower()
        if file.is_dir():
            sources.append(_scan_frames(file))
        elif suffix in (".npy", ".npz"):
            sources += _scan_array(file, key)
        elif suffix in VIDEO_SUFFIXES:
            sources.append(_scan_video(file))
        else:
            raise DataError(f"{file}: not a .npy/.npz shard, a folder of frames or a video")
    if not sources:
        raise DataError(f"{path}: no sequences found")
    first = sources[0]
    for s in sources[1:]:
        if s.frame_shape != first.frame_shape:
            raise DataError(
                f"{s.path}: frames (H, W, C) {s.frame_shape}, but {first.path} has "
                f"{first.frame_shape}; every sequence needs one size (resize them first)"
            )
        if s.dtype != first.dtype:
            raise DataError(f"{s.path}: dtype {s.dtype}, but {first.path} has {first.dtype}")
    need = window if window is not None else first.length
    if need < 2:
        raise DataError(f"{path}: a window needs at least 2 frames (inputs and the next)")
    how = (
        WINDOW_FLAGS
        if window is not None
        else f"the length of {first.path}; cut windows with --frames T"
    )
    for s in sources:
        if s.length < need:
            what = f"{s.path}" + (f" row {s.row}" if s.kind == "array" else "")
            raise DataError(f"{what}: {s.length} frame(s), fewer than one window of {need} ({how})")
    return Catalogue(sources, first.frame_shape, first.dtype)


def scale_of(dtype: str) -> float:
    """The divisor that brings a dtype's values into [0, 1] (floats must be there)."""
    return {"uint8": 255.0, "uint16": 65535.0}.get(dtype, 1.0)


def split_sources(sources: list[Source], *, seed: int) -> dict[str, list[Source]]:
    """Sources split by sequence, as ``user_data.load`` splits sequences in memory."""
    return {
        split: [sources[i] for i in chosen]
        for split, chosen in split_order(len(sources), seed=seed).items()
    }
