"""``RedisStore``: stream state in Redis (``redis://host:port/db``), shared by every
replica, with a lease and fencing token per stream. Each operation is one round trip: the
lease, the conditional write and the hand-over are Lua scripts run atomically by Redis."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.streams.store import Lease, StoreUnavailable, redact


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
