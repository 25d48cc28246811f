"""``RedisStore``: stream state in Redis (``redis://host:port/db``), shared by every
replica, with a lease and fencing token per stream. Each operation is one round trip: the
lease, the conditional write and the hand-over are Lua scripts run atomically by Redis
(a write pipelined behind the SET of its blob to a staging key)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.streams.store import CorruptState, Lease, StoreUnavailable, redact


# Keys of one stream share a hash tag ({id}), so that a Redis Cluster keeps them on one
# node and the scripts below may touch them together: the state blob (a plain string),
# the lease, the fence counter, and the fence of the write that made the state.
def _keys(stream_id: str) -> tuple[str, str, str, str]:
    tag = f"convlstm:stream:{{{stream_id}}}"
    return f"{tag}:state", f"{tag}:lease", f"{tag}:fence", f"{tag}:written"


def _staging(stream_id: str, unique: str) -> str:
    """Where a write puts its blob before a script renames it into place."""
    return f"convlstm:stream:{{{stream_id}}}:staging:{unique}"


# Why the blob goes to a staging key with a plain SET, then a script renames it in place
# (both in one pipelined round trip), instead of being an argument of the script: Redis
# keeps a large SET argument as it read it from the socket, and RENAME moves it without
# copying, while a script argument of 2.7 MB is copied into Lua and again into the key.
# That made the write about 2x slower alone and 4x with four at once
# (bench/stream_store.py's components measure both).

# The fence counter outlives the state by a day (86,400,000 ms), so that an id used
# again (an OIP sequence started anew) never hands out a token an old cached copy carries.

# A lease is SET NX with an expiry; its value is a fence token from a counter that only
# grows. The state's fence (KEYS[4]) says which write made it, so a replica whose cached
# copy carries that fence skips reading the blob again.
_ACQUIRE = """
if redis.call('SET', KEYS[2], 'pending', 'NX', 'PX', ARGV[1]) then
  local f = redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[2] + 86400000)
  redis.call('SET', KEYS[2], f, 'PX', ARGV[1])
  local stored = redis.call('GET', KEYS[4])
  if not stored then stored = -1 end
  return {f, stored}
end
return {0, -1}
"""

# Kept only while the lease still holds this token: a replica paused past its lease (or
# one whose stream was closed or reopened meanwhile) keeps nothing, and its staged blob
# is dropped. KEYS[5] is the staged blob.
_COMMIT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[5])
  return 0
end
redis.call('RENAME', KEYS[5], KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# A new or handed-off state, outside any lease: the lease of an earlier holder is
# dropped, so that holder cannot write over it.
_SAVE = """
local f = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1] + 86400000)
redis.call('DEL', KEYS[2])
redis.call('RENAME', KEYS[5], KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[4], f, 'PX', ARGV[1])
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
        self._release = self._redis.register_script(_RELEASE)

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
        state = _keys(stream_id)[0]
        try:
            blob = await self._redis.get(state)
        except ResponseError as err:
            if "WRONGTYPE" not in str(err):
                raise self._unavailable(err) from None
            raise CorruptState(
                f"stream_id: the stored state of stream {stream_id!r} is not a stream state "
                "of this server (a Redis value of another type); the stream is closed, open "
                "a new one",
                location="stream_id",
            ) from None
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        return None if blob is None else bytes(blob)  # type: ignore[arg-type]  # bytes: no decode_responses

    async def _staged(
        self, script: str, stream_id: str, unique: str, blob: bytes, args: list[Any]
    ) -> Any:
        """SET the blob to a staging key, then ``script`` (which renames it into place),
        in one pipelined round trip; the script's answer. EVAL with the script's text, not
        a registered script: redis-py's pipeline asks Redis whether a registered script
        exists before every run, one more round trip (Redis caches the compiled script)."""
        staging = _staging(stream_id, unique)
        keys = [*_keys(stream_id), staging]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(staging, blob, px=args[-1])
                pipe.eval(script, len(keys), *keys, *args)
                _, answer = await pipe.execute()
        except (RedisError, OSError) as err:
            raise self._unavailable(err) from None
        return answer

    async def save(self, stream_id: str, blob: bytes, ttl_s: float) -> int:
        fence = await self._staged(_SAVE, stream_id, uuid.uuid4().hex, blob, [_ms(ttl_s)])
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
        # The staging key is unique to this lease's token: no other writer uses it.
        args = [lease.fence, _ms(ttl_s)]
        done = await self._staged(_COMMIT, lease.stream_id, str(lease.fence), blob, args)
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
