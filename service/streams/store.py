"""Where a stream's state is kept outside the process: one small interface and its two
implementations, ``SnapshotStore`` (files in a directory, for one server across its
restarts) and ``RedisStore`` (``redis://``, shared by replicas, with a lease per stream).

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
import redis.asyncio as aioredis
from redis.exceptions import RedisError

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


# Keys of one stream share a hash tag ({id}), so that a Redis Cluster keeps them on one
# node and the scripts below may touch them together.
def _keys(stream_id: str) -> tuple[str, str, str]:
    tag = f"convlstm:stream:{{{stream_id}}}"
    return f"{tag}:state", f"{tag}:lease", f"{tag}:fence"


# The fence counter outlives the state by a day (86,400,000 ms), so that an id used
# again (an OIP sequence started anew) never hands out a token an old cached copy carries.

# A lease is SET NX with an expiry; its value is a fence token from a counter that only
# grows. The state is a hash {fence, blob}: its fence says which write made it, so a
# replica whose cached copy carries that fence skips reading the blob again.
_ACQUIRE = """
if redis.call('SET', KEYS[2], 'pending', 'NX', 'PX', ARGV[1]) then
  local f = redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[2] + 86400000)
  redis.call('SET', KEYS[2], f, 'PX', ARGV[1])
  local stored = redis.call('HGET', KEYS[1], 'fence')
  if not stored then stored = -1 end
  return {f, stored}
end
return {0, -1}
"""

# Written only while the lease still holds this token: a replica paused past its
# lease (or one whose stream was closed or reopened meanwhile) writes nothing.
_COMMIT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'blob', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""

# A new or handed-off state, outside any lease: the lease of an earlier holder is
# dropped, so that holder cannot write over it.
_SAVE = """
local f = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2] + 86400000)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'fence', f, 'blob', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return f
"""

_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisStore:
    """Stream state in Redis (``redis://host:port/db``), shared by every replica: the
    idle expiry is the keys' TTL, a lease per stream lets one replica step it at a
    time."""

    kind = "redis"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._save = self._redis.register_script(_SAVE)

    def _unavailable(self, err: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            f"the stream store {redact(self.url)} does not answer ({type(err).__name__}: "
            f"{err}); stream calls fail until it does, window predictions go on"
        )

    async def start(self) -> None:
        await self.ping()

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None

    async def load(self, stream_id: str) -> bytes | None:
        state, _, _ = _keys(stream_id)
        try:
            blob = await self._redis.hget(state, "blob")
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        return None if blob is None else bytes(blob)  # type: ignore[arg-type]  # bytes: no decode_responses

    async def save(self, stream_id: str, blob: bytes, ttl_s: float) -> int:
        try:
            fence = await self._save(keys=list(_keys(stream_id)), args=[blob, _ms(ttl_s)])
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        return int(fence)

    async def delete(self, stream_id: str) -> None:
        try:
            await self._redis.delete(*_keys(stream_id))
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None

    async def acquire(self, stream_id: str, lease_s: float, ttl_s: float) -> Lease | None:
        keys = list(_keys(stream_id))
        try:
            fence, stored = await self._acquire(keys=keys, args=[_ms(lease_s), _ms(ttl_s)])
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        if int(fence) == 0:
            return None
        return Lease(stream_id, int(fence), int(stored), time.monotonic() + lease_s)

    async def commit(self, lease: Lease, blob: bytes, ttl_s: float) -> bool:
        keys = list(_keys(lease.stream_id))
        try:
            done = await self._commit(keys=keys, args=[lease.fence, blob, _ms(ttl_s)])
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        return bool(int(done))

    async def release(self, lease: Lease) -> None:
        try:
            await self._release(keys=list(_keys(lease.stream_id)), args=[lease.fence])
        except (RedisError, OSError):
            pass  # the lease expires by itself

    async def close(self) -> None:
        await self._redis.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def redact(url: str) -> str:
    """``url`` without a password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"
