"""Training data read from disk as it is needed (``train --data PATH --stream``), for data
sets larger than memory.

A scan first opens every source once, without keeping its frames: ``.npy`` shards and
uncompressed ``.npz`` members memory-mapped (NumPy reads only the header), PNG/JPEG
frames by their headers (Pillow's ``verify``), videos decoded once with PyAV and
dropped. Every refusal the issue lists (mixed frame sizes or channel counts, unreadable
files, a video that cannot be decoded, a shard of the wrong dtype or shape, too few
frames for one window) is a ``DataError`` naming the file, before training starts.

Batches are then read by ``WindowStream``, a Keras ``PyDataset``: each epoch shuffles
the order of the sources, takes them ``group`` at a time and shuffles the windows of a
group together, so a batch mixes sources while at most ``group`` decoded videos are
held (a shard's window is read with ``pread``, so no page of a shard stays in the
resident set). Keras' worker threads prefetch at
most ``max_queue_size`` batches. The order is a pure function of (seed, epoch), so a run
stopped mid-epoch resumes at the batch it had reached (``start_batch``).

Hand-written rather than ``tf.data``: the data must also feed the JAX and PyTorch
backends, and ``PyDataset`` is Keras' own backend-neutral input path.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model_export.frames import data
from model_export.frames.frame_readers import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DataError,
    decode_video,
    read_image,
)

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


def _memmap_array(path: Path, key: str | None) -> list[tuple[str | None, NDArray[Any]]]:
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
    for name, array in _memmap_array(path, key):
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
    # With --feedback-steps K the caller's window is --frames T + K - 1 frames.
    how = (
        "--frames T, plus K - 1 with --feedback-steps K"
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


# Bytes read from a Fortran-ordered shard's memory map before its pages are given back
# (madvise DONTNEED): a mapped page that was read stays in the resident set until then.
RELEASE_EVERY = 64 * 2**20


class SourceReader:
    """Frames of a source on demand. A C-ordered shard's window is one contiguous run of
    bytes, read with ``pread`` at its offset (the memory map gives only its shape, dtype
    and offset); decoded videos and frame folders are kept in an LRU of ``cache`` entries
    (the memory bound).

    ``pread`` rather than copying out of the memory map: every page a map touches joins
    the process' resident set, and the kernel maps up to 64 KiB of cached pages around
    each fault, so a shuffled pass over a shard kept about four times the bytes it read
    resident between two ``madvise`` calls. Read, the pages stay in the page cache, which
    the kernel gives back under pressure, and the resident set holds only the batches."""

    def __init__(self, cache: int) -> None:
        self.cache = cache
        self._maps: dict[tuple[Path, str | None], NDArray[Any]] = {}
        self._decoded: OrderedDict[Path, NDArray[Any]] = OrderedDict()
        self._read_since_release = 0

    def _release(self) -> None:
        """Drop the read pages of every map from the resident set (the page cache keeps
        them, so a re-read is cheap)."""
        for mapped in self._maps.values():
            handle = getattr(mapped, "_mmap", None)
            if handle is not None:
                handle.madvise(mmap.MADV_DONTNEED)
        self._read_since_release = 0

    def _array_window(self, source: Source, start: int, length: int) -> NDArray[Any]:
        mapped = self._maps.get((source.path, source.key))
        if mapped is None:
            mapped = dict(_memmap_array(source.path, source.key))[source.key]
            self._maps[(source.path, source.key)] = mapped
        if not isinstance(mapped, np.memmap) or not mapped.flags.c_contiguous:
            window = np.array(mapped[source.row, start : start + length])  # a copy
            self._read_since_release += window.nbytes
            if self._read_since_release > RELEASE_EVERY:
                self._release()
            return window
        window = np.empty((length, *mapped.shape[2:]), dtype=mapped.dtype)
        frame_bytes = window.nbytes // length
        offset = int(mapped.offset) + (source.row * source.length + start) * frame_bytes
        fd = os.open(source.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [window.data.cast("B")], offset)
        finally:
            os.close(fd)
        if got != window.nbytes:
            raise DataError(
                f"{source.path}: row {source.row} ends early ({got} of {window.nbytes} bytes "
                "read); was the file changed since the scan?"
            )
        return window

    def frames(self, source: Source, start: int, length: int) -> NDArray[Any]:
        if source.kind == "array":
            return self._array_window(source, start, length)
        if source.kind == "frames":
            files = sorted(p for p in source.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            try:
                return np.stack([read_image(f) for f in files[start : start + length]])
            except DataError:
                raise
            except Exception as err:  # a file changed since the scan
                raise DataError(f"{source.path}: {err}") from err
        decoded = self._decoded.get(source.path)
        if decoded is None:
            decoded = decode_video(source.path)
            self._decoded[source.path] = decoded
            while len(self._decoded) > self.cache:
                self._decoded.popitem(last=False)
        self._decoded.move_to_end(source.path)
        return decoded[start : start + length]


def epoch_order(
    sources: list[Source], window: int, *, seed: int, epoch: int, group: int
) -> NDArray[np.int64]:
    """(source index, first frame) of every window, in this epoch's order, as rows of an
    (n, 2) array (16 bytes a window, rather than a list of tuples): the sources
    shuffled, then the windows of each run of ``group`` sources shuffled together."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(sources))
    counts = np.array([s.length - window + 1 for s in sources], dtype=np.int64)
    out = np.empty((int(counts.sum()), 2), dtype=np.int64)
    at = 0
    for first in range(0, len(order), group):
        chunk = order[first : first + group]
        n = counts[chunk]
        index = np.repeat(chunk, n)
        start = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        mix = rng.permutation(len(index))
        out[at : at + len(index), 0] = index[mix]
        out[at : at + len(index), 1] = start[mix]
        at += len(index)
    return out


def _in_order(sources: list[Source], window: int) -> NDArray[np.int64]:
    counts = np.array([s.length - window + 1 for s in sources], dtype=np.int64)
    index = np.repeat(np.arange(len(sources)), counts)
    start = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([index, start], axis=1)


class WindowStream(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches (inputs, every-step targets) of windows read from disk as Keras asks;
    with ``feedback_steps`` K the inputs leave out a window's last K frames, which stay
    among the targets (the fed-back ones, ``data.inputs_and_targets``)."""

    def __init__(
        self,
        sources: list[Source],
        *,
        window: int,
        batch_size: int,
        dtype: str,
        seed: int,
        group: int = 8,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
        workers: int = 2,
        max_queue_size: int = 4,
        feedback_steps: int = 1,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.sources = sources
        self.window = window
        self.feedback_steps = feedback_steps
        self.batch_size = batch_size
        self.scale = scale_of(dtype)
        self.seed = seed
        self.group = group
        self.shuffle = shuffle
        # Decoded videos kept: a group's worth for each worker thread.
        self.reader = SourceReader(cache=group * max(workers, 1))
        self.epoch = epoch
        self.start_batch = start_batch
        self._order = self._make_order()

    def _make_order(self) -> NDArray[np.int64]:
        if self.shuffle:
            return epoch_order(
                self.sources, self.window, seed=self.seed, epoch=self.epoch, group=self.group
            )
        return _in_order(self.sources, self.window)

    @property
    def windows(self) -> int:
        return len(self._order)

    @property
    def num_batches(self) -> int:
        return max(0, -(-len(self._order) // self.batch_size) - self.start_batch)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        at = (index + self.start_batch) * self.batch_size
        picks = self._order[at : at + self.batch_size].tolist()
        batch = np.stack(
            [self.reader.frames(self.sources[i], s, self.window) for i, s in picks]
        ).astype(np.float32)
        if self.scale != 1.0:
            batch /= self.scale
        return data.inputs_and_targets(batch, every_step=True, feedback_steps=self.feedback_steps)

    def on_epoch_end(self) -> None:
        # Keras reads the length once per fit, so ``start_batch`` (the rest of a resumed
        # epoch) is fitted on its own, for one epoch; later epochs get a fresh stream.
        self.epoch += 1
        self._order = self._make_order()


def split_sources(
    sources: list[Source], *, seed: int, validation: float, test: float
) -> dict[str, list[Source]]:
    """Sources split by sequence (no sequence in two splits), as ``user_data.load``."""
    n = len(sources)
    n_val = max(1, int(round(n * validation)))
    n_test = max(1, int(round(n * test)))
    if n < n_val + n_test + 1:
        raise DataError(f"{n} sequence(s); the train, validation and test splits need at least 3")
    order = np.random.default_rng(seed).permutation(n)
    return {
        "test": [sources[i] for i in np.sort(order[:n_test])],
        "validation": [sources[i] for i in np.sort(order[n_test : n_test + n_val])],
        "train": [sources[i] for i in np.sort(order[n_test + n_val :])],
    }
