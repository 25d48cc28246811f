"""Where a stream's state is kept outside the process: one small interface and its two
implementations, ``SnapshotStore`` here (files in a directory, for one server across its
restarts) and ``RedisStore`` (``service.streams.redis_store``: shared by replicas, with a
lease per stream).

A state is stored exactly and compactly as one blob (``encode``/``decode``): a short
header (format, the stream's model name, version and sha256, frames seen, times, and
each tensor's name, shape and dtype) and then the tensors' raw little-endian bytes, no
JSON of floats. ``decode`` refuses a blob that is cut short, of another format, or whose
tensors do not add up, with ``CorruptState`` naming what is wrong.

Only ``service.streams.keeper`` calls a store: every load and store of stream state goes
through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.errors import NotReady, ServiceError
from service.streams.session import State

MAGIC = b"CLSTMST1"
"""The blob's first bytes: this project's stream state, format 1."""

_HEADER_LEN = struct.Struct("<I")


class CorruptState(ServiceError):
    """A stored state this server cannot use: cut short, of another format, or of another
    model. The stream is closed; other streams are not affected."""

    status_code = 409
    error_type = "corrupt_stream_state"


class StoreUnavailable(NotReady):
    """The store does not answer: stream calls get 503 until it does."""

    error_type = "stream_store_unavailable"


class LeaseHeld(ServiceError):
    """Another replica is stepping this stream (or held it and has not let go)."""

    status_code = 409
    error_type = "stream_busy"


@dataclass
class StoredStream:
    """A stream as the store holds it."""

    id: str
    model: str
    version: str
    sha256: str
    frames_seen: int
    steps: int
    created: float
    """Wall-clock seconds since the epoch."""
    last_used: float
    """Wall-clock seconds since the epoch."""
    state: State


def encode(stored: StoredStream) -> bytes:
    """The blob of ``stored``: header, then each tensor's float32 bytes in C order."""
    arrays = [np.ascontiguousarray(v, dtype="<f4") for v in stored.state.values()]
    header = {
        "id": stored.id,
        "model": stored.model,
        "version": stored.version,
        "sha256": stored.sha256,
        "frames_seen": stored.frames_seen,
        "steps": stored.steps,
        "created": stored.created,
        "last_used": stored.last_used,
        "tensors": [
            {"name": name, "shape": list(a.shape), "dtype": "<f4"}
            for name, a in zip(stored.state, arrays, strict=True)
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, _HEADER_LEN.pack(len(head)), head, *(a.tobytes() for a in arrays)])


def decode(blob: bytes, stream_id: str) -> StoredStream:
    """The stream a blob holds; ``CorruptState`` saying what is wrong with it. The
    tensors are read-only views of ``blob`` (no copy)."""
    where = f"stored state of stream {stream_id!r}"
    if not blob.startswith(MAGIC):
        raise CorruptState(f"{where}: not a stream state of this server (format {blob[:8]!r})")
    try:
        (n,) = _HEADER_LEN.unpack_from(blob, len(MAGIC))
        start = len(MAGIC) + _HEADER_LEN.size
        header: dict[str, Any] = json.loads(blob[start : start + n])
        offset = start + n
        state: State = {}
        for t in header["tensors"]:
            if t["dtype"] != "<f4":
                raise CorruptState(f"{where}: tensor {t['name']!r} of dtype {t['dtype']}")
            shape = tuple(int(d) for d in t["shape"])
            count = int(np.prod(shape))
            size = 4 * count
            if offset + size > len(blob):
                raise CorruptState(f"{where}: cut short in tensor {t['name']!r}")
            state[str(t["name"])] = np.frombuffer(blob, "<f4", count, offset).reshape(shape)
            offset += size
        if offset != len(blob):
            raise CorruptState(f"{where}: {len(blob) - offset} bytes after the last tensor")
        return StoredStream(
            id=str(header["id"]),
            model=str(header["model"]),
            version=str(header["version"]),
            sha256=str(header["sha256"]),
            frames_seen=int(header["frames_seen"]),
            steps=int(header["steps"]),
            created=float(header["created"]),
            last_used=float(header["last_used"]),
            state=state,
        )
    except CorruptState:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as err:
        raise CorruptState(f"{where}: unreadable header ({err})") from None


@dataclass(frozen=True)
class Lease:
    """The right to step one stream until ``expires`` (monotonic seconds): ``fence`` is
    the token every write under it carries; a write with an older token is refused."""

    stream_id: str
    fence: int
    stored_fence: int
    """The fence of the write that made the stored state (-1: no state stored, the
    stream closed or expired)."""
    expires: float


class StreamStore(Protocol):
    """What the keeper needs of a store. ``ttl_s``: the stream's idle expiry."""

    kind: str

    async def start(self) -> None:
        """Connect; ``StoreUnavailable`` saying why when the store does not answer."""

    async def ping(self) -> None:
        """``StoreUnavailable`` when the store does not answer now."""

    async def load(self, stream_id: str) -> bytes | None:
        """The stream's blob, None when none is stored (never, closed, or expired)."""

    async def save(self, stream_id: str, blob: bytes, ttl_s: float) -> int:
        """Store a blob outside any lease (a new stream, a drain); its fence."""

    async def delete(self, stream_id: str) -> None: ...

    async def acquire(self, stream_id: str, lease_s: float, ttl_s: float) -> Lease | None:
        """A lease on the stream, or None while another holder has one."""

    async def commit(self, lease: Lease, blob: bytes, ttl_s: float) -> bool:
        """Store the blob under ``lease`` and let the lease go; False (nothing written)
        when the lease was lost (expired, taken by another replica, the stream closed)."""

    async def release(self, lease: Lease) -> None: ...

    async def close(self) -> None: ...


class SnapshotStore:
    """A file per stream in a directory (``CONVLSTM_STREAM_SNAPSHOT_DIR``), for a single
    server: no other process steps its streams, so a lease is always granted. A file is
    written whole (a temporary file renamed over it), so a crash leaves the old or the
    new state, never half of one; the idle expiry is checked against the file's time."""

    kind = "snapshot"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fence = 0

    def _path(self, stream_id: str) -> Path:
        # Ids may be up to 128 characters of anything (OIP sequence ids): a digest is a
        # safe file name of fixed length.
        return self.directory / f"{hashlib.sha256(stream_id.encode()).hexdigest()}.state"

    async def start(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".writable"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StoreUnavailable(
                f"stream snapshot directory {self.directory}: {err.strerror or err}"
            ) from None

    async def ping(self) -> None:
        if not self.directory.is_dir():
            raise StoreUnavailable(f"stream snapshot directory {self.directory} is gone")

    async def load(self, stream_id: str) -> bytes | None:
        path = self._path(stream_id)
        try:
            expires = float(path.stat().st_mtime)
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        if expires < time.time():
            path.unlink(missing_ok=True)
            return None
        return blob

    async def save(self, stream_id: str, blob: bytes, ttl_s: float) -> int:
        path = self._path(stream_id)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(blob)
            # The file's time is when it expires: a restart finds the expiry without
            # reading the blob.
            expires = time.time() + ttl_s
            os.utime(tmp, (expires, expires))
            tmp.replace(path)
        except OSError as err:
            raise StoreUnavailable(f"stream snapshot {path}: {err.strerror or err}") from None
        self._fence += 1
        return self._fence

    async def delete(self, stream_id: str) -> None:
        self._path(stream_id).unlink(missing_ok=True)

    async def acquire(self, stream_id: str, lease_s: float, ttl_s: float) -> Lease | None:
        # One process steps these streams: whatever it holds in memory is current.
        return Lease(stream_id, 0, -1, time.monotonic() + lease_s)

    async def commit(self, lease: Lease, blob: bytes, ttl_s: float) -> bool:
        await self.save(lease.stream_id, blob, ttl_s)
        return True

    async def release(self, lease: Lease) -> None:
        return None

    async def close(self) -> None:
        return None


def redact(url: str) -> str:
    """``url`` without a password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"
