"""Training data read from disk as it is needed (``train --data PATH --stream``), for data
sets larger than memory, from what ``stream_scan.scan`` found and checked.

Batches are read by ``WindowStream``, a Keras ``PyDataset``: each epoch shuffles
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
from collections import OrderedDict
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model_export.frames import data
from model_export.frames.frame_readers import (
    IMAGE_SUFFIXES,
    DataError,
    decode_video,
    read_image,
)
from model_export.frames.stream_scan import Source, memmap_array, scale_of

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
            mapped = dict(memmap_array(source.path, source.key))[source.key]
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
