"""The open streams: each one's model, state and counters, the limit on how many may be
open, and their expiry when idle.

The table is what this process holds in memory. Where a store is configured
(``CONVLSTM_STREAM_STORE``, ``service.streams.keeper``), a stream missing here may be in
the store and is loaded from it; with Redis and ``step`` durability the table is a cache
of the store, checked against it (the fence) before every step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from service.errors import ServiceError
from service.streams.session import State

# Ids of expired or closed streams remembered, so that a 404 can say which it was.
REMEMBERED_IDS = 4096


class UnknownStream(ServiceError):
    status_code = 404
    error_type = "unknown_stream"


class StreamsFull(ServiceError):
    """Every stream slot is taken: come back when one expires or is closed."""

    status_code = 503
    error_type = "streams_full"


@dataclass
class Stream:
    id: str
    model: str
    state: State
    state_bytes: int
    model_version: str = ""
    sha256: str = ""
    """The model file's sha256: a stored state is carried on only by that file."""
    fence: int = 0
    """The store's fence of the write that made ``state`` (0 without a store)."""
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    last_used_wall: float = field(default_factory=time.time)
    frames_seen: int = 0
    steps: int = 0
    accuracy: LiveAccuracy = field(default_factory=lambda: LiveAccuracy())
    # Requests on one stream run one at a time, in the order they reach this lock
    # (asyncio.Lock wakes waiters first come, first served).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_wall = time.time()

    @property
    def busy(self) -> bool:
        return self.lock.locked()


@dataclass
class LiveAccuracy:
    """How well a stream's predictions turned out. Every request's first frame is the
    truth for the next frame the stream predicted after the request before; scored
    beside copying that request's last frame (the baseline a forecaster must beat)."""

    predicted: NDArray[np.float32] | None = None
    """The next frame the stream last predicted (H, W, C), waiting for its truth."""
    last_frame: NDArray[np.float32] | None = None
    """The last frame the stream was given (H, W, C): copy-last's prediction."""
    scored: int = 0
    mse_sum: float = 0.0
    copy_last_mse_sum: float = 0.0

    def score(self, truth: NDArray[np.float32]) -> tuple[float, float] | None:
        """The waiting prediction's MSE and copy-last's against ``truth``, counted; None
        when nothing was waiting (the stream's first request)."""
        if self.predicted is None or self.last_frame is None:
            return None
        mse = float(np.mean((self.predicted - truth) ** 2))
        copy = float(np.mean((self.last_frame - truth) ** 2))
        self.scored += 1
        self.mse_sum += mse
        self.copy_last_mse_sum += copy
        return mse, copy

    def expect(self, predicted: NDArray[np.float32], last_frame: NDArray[np.float32]) -> None:
        """Keep the next frame just predicted, and the frame it follows."""
        self.predicted = np.array(predicted, copy=True)
        self.last_frame = np.array(last_frame, copy=True)

    @property
    def ratio(self) -> float | None:
        """Mean MSE over copy-last's: under 1 while the model beats copying."""
        if not self.scored or self.copy_last_mse_sum == 0.0:
            return None
        return self.mse_sum / self.copy_last_mse_sum


class StreamTable:
    """Open streams by id, at most ``max_streams``, each expiring ``idle_s`` after its
    last use (never while a request on it runs)."""

    def __init__(
        self,
        max_streams: int,
        idle_s: float,
        on_expire: Callable[[Stream], None] = lambda stream: None,
    ) -> None:
        self.max_streams = max_streams
        self.idle_s = idle_s
        self._on_expire = on_expire
        self.streams: dict[str, Stream] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def state_bytes(self) -> int:
        return sum(s.state_bytes for s in self.streams.values())

    def open(
        self, model: str, state: State, state_bytes: int, stream_id: str | None = None
    ) -> Stream:
        """A new stream (a fresh id unless one is given); ``StreamsFull`` when the table
        is full after dropping expired streams."""
        self.expire()
        if len(self.streams) >= self.max_streams:
            raise StreamsFull(
                f"all {self.max_streams} stream slots are in use; close a stream or retry "
                f"when an idle one expires ({self.idle_s:g} s after its last use)",
                headers={"Retry-After": str(self.retry_after())},
            )
        stream = Stream(stream_id or uuid.uuid4().hex, model, state, state_bytes)
        self.streams[stream.id] = stream
        self._gone.pop(stream.id, None)
        return stream

    def retry_after(self) -> int:
        """Whole seconds until the stream idle longest expires, at least 1."""
        idle = [s.last_used for s in self.streams.values() if not s.busy]
        if not idle:
            return max(1, int(self.idle_s))
        return max(1, int(min(idle) + self.idle_s - time.monotonic()) + 1)

    def get(self, stream_id: str) -> Stream:
        """The open stream ``stream_id``; ``UnknownStream`` saying whether it expired, was
        closed, or never existed here."""
        stream = self.streams.get(stream_id)
        if stream is not None and self._expired(stream, time.monotonic()):
            self._drop(stream, "expired")
            stream = None
        if stream is None:
            raise UnknownStream(self.why_unknown(stream_id), location="stream_id")
        return stream

    def why_unknown(self, stream_id: str) -> str:
        why = self._gone.get(stream_id)
        if why == "expired":
            return (
                f"stream_id: stream {stream_id!r} expired after {self.idle_s:g} s without a "
                "request; open a new one (POST /v1/streams)"
            )
        if why == "closed":
            return f"stream_id: stream {stream_id!r} was closed; open a new one (POST /v1/streams)"
        return (
            f"stream_id: no stream {stream_id!r} (never opened, closed, or expired after "
            f"{self.idle_s:g} s without a request); open one with POST /v1/streams"
        )

    def close(self, stream_id: str) -> Stream:
        stream = self.get(stream_id)
        self._drop(stream, "closed")
        return stream

    def add(self, stream: Stream) -> None:
        """A stream loaded from the store, held here from now on (beyond ``max_streams``
        if need be: refusing it would strand a stream the client was promised)."""
        self.streams[stream.id] = stream
        self._gone.pop(stream.id, None)

    def forget(self, stream_id: str, why: str | None = None) -> None:
        """Drop a stream held here without expiring it: its copy in the store goes on
        (``why`` None), or it is gone there too (``why`` says how, for the 404)."""
        stream = self.streams.pop(stream_id, None)
        if why is not None:
            self._gone[stream_id] = why
        elif stream is not None:
            self._gone.pop(stream_id, None)

    def least_recently_used(self) -> Stream | None:
        """The idle stream used longest ago, None when every one is busy."""
        idle = [s for s in self.streams.values() if not s.busy]
        return min(idle, key=lambda s: s.last_used) if idle else None

    def expire(self) -> list[Stream]:
        """Drop every stream idle longer than ``idle_s``; those dropped."""
        now = time.monotonic()
        gone = [s for s in self.streams.values() if self._expired(s, now)]
        for stream in gone:
            self._drop(stream, "expired")
        return gone

    def clear(self) -> int:
        """Drop every stream (shutdown); how many there were."""
        n = len(self.streams)
        for stream in list(self.streams.values()):
            self._drop(stream, "closed")
        return n

    def _expired(self, stream: Stream, now: float) -> bool:
        return not stream.busy and now - stream.last_used > self.idle_s

    def _drop(self, stream: Stream, why: str) -> None:
        self.streams.pop(stream.id, None)
        self._gone[stream.id] = why
        if why == "expired":
            self._on_expire(stream)
        while len(self._gone) > REMEMBERED_IDS:
            self._gone.popitem(last=False)
