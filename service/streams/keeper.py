"""The one place stream state is loaded from and stored to a store
(``service.streams.store``), following ``CONVLSTM_STREAM_DURABILITY``:

- no store (``memory`` without a snapshot directory): every call here does nothing;
- ``step``: a new stream is saved when opened, each step's state is written through
  before its answer leaves, under a lease with Redis (``begin`` / ``commit``);
- ``drain``: nothing per step; ``drain`` writes every open stream at shutdown, and a
  server that finds a stream in the store (``fetch``) takes it over, removing it there.

``StreamService`` calls these and nothing else of a store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from service.config import Settings
from service.errors import ServiceError
from service.streams.redis_store import RedisStore
from service.streams.store import (
    Lease,
    LeaseHeld,
    SnapshotStore,
    StoredStream,
    StoreUnavailable,
    StreamStore,
    decode,
    encode,
    redact,
)

log = logging.getLogger(__name__)

# How often a request waiting for another replica's lease asks again.
LEASE_POLL_S = 0.01


class LeaseLost(ServiceError):
    """The step ran, but its lease was gone before its state could be written."""

    status_code = 409
    error_type = "stream_lease_lost"


@dataclass(frozen=True)
class Begun:
    """A step may go ahead: its lease, and the stored state when the copy in memory is
    older (None: the copy in memory is current)."""

    lease: Lease | None
    fresher: StoredStream | None
    gone: bool = False
    """The store has no state for the stream (closed or expired there)."""


def open_store(settings: Settings) -> StreamStore | None:
    """The store the settings name; None for ``memory`` without a snapshot directory."""
    if settings.stream_store != "memory":
        return RedisStore(settings.stream_store, settings.stream_store_timeout_s)
    if settings.stream_snapshot_dir is not None:
        return SnapshotStore(settings.stream_snapshot_dir)
    return None


class StreamKeeper:
    def __init__(self, settings: Settings, store: StreamStore | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.durability = settings.stream_durability
        self.problem: str | None = None

    @property
    def kind(self) -> str:
        return "memory" if self.store is None else self.store.kind

    @property
    def write_through(self) -> bool:
        """State written at every step."""
        return self.store is not None and self.durability == "step"

    @property
    def shared(self) -> bool:
        """Other replicas may step these streams: the store, not memory, has the state."""
        return isinstance(self.store, RedisStore) and self.durability == "step"

    @property
    def where(self) -> str:
        if isinstance(self.store, RedisStore):
            return redact(self.store.url)
        if isinstance(self.store, SnapshotStore):
            return str(self.store.directory)
        return "this process"

    @property
    def ttl_s(self) -> float:
        return self.settings.stream_idle_s

    async def start(self) -> None:
        """Connect to the store. One that does not answer leaves the server not ready
        (``readiness_problem``) rather than stopping it: Redis may come up later."""
        if self.store is None:
            return
        try:
            await self.store.start()
        except StoreUnavailable as err:
            self.problem = err.message
            log.error("%s", err.message)
            return
        log.info(
            "stream state in %s %s, durability %s", self.store.kind, self.where, self.durability
        )

    async def readiness_problem(self) -> str | None:
        """Why streams cannot be served now (the store does not answer), or None."""
        if self.store is None:
            return None
        try:
            await self.store.ping()
        except StoreUnavailable as err:
            self.problem = err.message
            return err.message
        self.problem = None
        return None

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    # -- the calls StreamService makes ---------------------------------------------------

    async def opened(self, stored: StoredStream) -> int:
        """A new stream: saved at once with ``step`` (so any replica finds it); the
        fence of that write (0 when nothing was written)."""
        if self.store is None or not self.write_through:
            return 0
        return await self.store.save(stored.id, encode(stored), self.ttl_s)

    async def fetch(self, stream_id: str) -> StoredStream | None:
        """The stored stream ``stream_id`` (None when the store has none). With ``drain``
        this server takes it over: the store's copy is removed, so that no later
        server carries on from it after this one has moved the stream on."""
        if self.store is None:
            return None
        blob = await self.store.load(stream_id)
        if blob is None:
            return None
        if self.durability == "drain":
            await self.store.delete(stream_id)
        return decode(blob, stream_id)

    async def begin(self, stream_id: str, fence: int) -> Begun:
        """Before a step of a stream whose copy in memory was written with ``fence``: its
        lease (waiting up to ``stream_lease_s`` for another replica's), and the stored
        state if it is newer. ``LeaseHeld`` when the wait is over; ``gone`` when the store
        has no state for it."""
        if self.store is None or not self.write_through:
            return Begun(None, None)
        lease_s = self.settings.stream_lease_s
        deadline = time.monotonic() + lease_s
        while True:
            lease = await self.store.acquire(stream_id, lease_s, self.ttl_s)
            if lease is not None:
                break
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"stream_id: stream {stream_id!r} is being stepped by another request "
                    f"or replica, which has held it for {lease_s:g} s (stream_lease_s); "
                    "retry, one request per stream at a time",
                    location="stream_id",
                )
            await asyncio.sleep(LEASE_POLL_S)
        if not self.shared:
            return Begun(lease, None)
        if lease.stored_fence == -1:
            await self.store.release(lease)
            return Begun(None, None, gone=True)
        if lease.stored_fence == fence:
            return Begun(lease, None)
        try:
            fresher = await self.fetch(stream_id)
        except BaseException:
            await self.store.release(lease)
            raise
        return Begun(lease, fresher)

    async def commit(self, lease: Lease | None, stored: StoredStream) -> int:
        """After a step: its state written through (``step``); the fence it was written
        with. ``LeaseLost`` when the lease was gone first: nothing was written."""
        if self.store is None or lease is None:
            return 0
        if not await self.store.commit(lease, encode(stored), self.ttl_s):
            raise LeaseLost(
                f"stream_id: the step of stream {lease.stream_id!r} was not kept: its "
                f"lease ran out (the step outlasted stream_lease_s="
                f"{self.settings.stream_lease_s:g} s) or the stream was closed or started "
                "anew meanwhile; this request's frames were not applied, send them again",
                location="stream_id",
            )
        return lease.fence

    async def abort(self, lease: Lease | None) -> None:
        """A step that failed: its lease let go, the stored state left as it was."""
        if self.store is not None and lease is not None:
            await self.store.release(lease)

    async def closed(self, stream_id: str) -> None:
        if self.store is not None:
            await self.store.delete(stream_id)

    async def drain(self, streams: Iterable[StoredStream]) -> int:
        """At shutdown with ``drain``: every open stream written to the store, each
        expiring as it would have here; how many were written."""
        if self.store is None or self.durability != "drain":
            return 0
        now = time.time()
        n = 0
        for stored in streams:
            left = self.ttl_s - (now - stored.last_used)
            if left <= 0:
                continue
            try:
                await self.store.save(stored.id, encode(stored), left)
            except StoreUnavailable as err:
                log.error("stream %s not kept at shutdown: %s", stored.id, err.message)
                continue
            n += 1
        return n
