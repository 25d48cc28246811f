"""The stream store on its own: the state blob exact and compact, a corrupt blob refused
naming what is wrong, the snapshot directory's expiry, and Redis's lease, fence and TTL
on a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.streams.redis_store import RedisStore
from service.streams.store import (
    MAGIC,
    CorruptState,
    SnapshotStore,
    StoredStream,
    StoreUnavailable,
    decode,
    encode,
)
from tests.service.stream_tools import RedisServer, redis_server

pytestmark = pytest.mark.anyio


def stored(stream_id: str = "a" * 32, seed: int = 0) -> StoredStream:
    rng = np.random.default_rng(seed)
    return StoredStream(
        id=stream_id,
        model="convlstm",
        version="1",
        sha256="f" * 64,
        frames_seen=7,
        steps=9,
        created=1_700_000_000.25,
        last_used=1_700_000_010.5,
        state={
            "h0": rng.standard_normal((8, 5, 6), dtype=np.float32),
            "c0": rng.standard_normal((8, 5, 6), dtype=np.float32),
        },
    )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis.url, timeout_s=1.0)
    await s.start()
    yield s
    await s.close()


def test_blob_is_exact_and_compact() -> None:
    s = stored()
    blob = encode(s)
    state_bytes = sum(v.nbytes for v in s.state.values())
    assert blob.startswith(MAGIC)
    assert state_bytes < len(blob) < state_bytes + 512  # the floats as bytes, a short header
    back = decode(blob, s.id)
    for name, value in s.state.items():
        assert back.state[name].dtype == np.float32
        np.testing.assert_array_equal(back.state[name], value)  # bit for bit
    assert (back.model, back.version, back.sha256) == (s.model, s.version, s.sha256)
    assert (back.frames_seen, back.steps, back.created, back.last_used) == (
        7,
        9,
        s.created,
        1_700_000_010.5,
    )
    assert list(back.state) == ["h0", "c0"]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b"GARBAGE!" + b[8:], "not a stream state of this server"),
        (lambda b: b[:-4], "cut short in tensor 'c0'"),
        (lambda b: b + b"\0\0\0\0", "4 bytes after the last tensor"),
        (lambda b: b[:12] + b"[" + b[13:], "unreadable header"),
        (lambda b: b[:10], "unreadable header"),
    ],
)
def test_corrupt_blob_is_refused_saying_what(damage: object, words: str) -> None:
    blob = encode(stored())
    with pytest.raises(CorruptState, match=words) as err:
        decode(damage(blob), "s1")  # type: ignore[operator]
    assert "stream 's1'" in err.value.message and err.value.status_code == 409


async def test_snapshot_store_keeps_a_state_until_its_expiry(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    await store.start()
    s = stored("oip:convlstm:" + "x" * 128)  # long ids make safe file names too
    await store.save(s.id, encode(s), ttl_s=60)
    blob = await store.load(s.id)
    assert blob is not None
    np.testing.assert_array_equal(decode(blob, s.id).state["h0"], s.state["h0"])
    await store.save("b" * 32, encode(stored("b" * 32)), ttl_s=0.01)
    await asyncio.sleep(0.05)
    assert await store.load("b" * 32) is None  # expired, and removed
    assert len(list((tmp_path / "snapshots").iterdir())) == 1
    await store.delete(s.id)
    assert await store.load(s.id) is None


async def test_snapshot_store_refuses_a_directory_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable, match="snapshot directory"):
        await SnapshotStore(tmp_path / "file" / "under").start()


async def test_redis_keeps_the_blob_with_the_idle_expiry_as_ttl(
    store: RedisStore, redis: RedisServer
) -> None:
    import redis as sync_redis

    s = stored("c" * 32)
    fence = await store.save(s.id, encode(s), ttl_s=30)
    assert fence >= 1
    blob = await store.load(s.id)
    assert blob == encode(s)
    with sync_redis.Redis(port=redis.port) as r:
        ttl = r.pttl(f"convlstm:stream:{{{s.id}}}:state")
    assert 29_000 < ttl <= 30_000
    await store.delete(s.id)
    assert await store.load(s.id) is None


async def test_redis_lease_is_exclusive_expires_and_fences_a_late_writer(
    store: RedisStore, redis: RedisServer
) -> None:
    import redis as sync_redis

    s = stored("d" * 32)
    saved = await store.save(s.id, encode(s), ttl_s=30)
    first = await store.acquire(s.id, lease_s=0.2, ttl_s=30)
    assert first is not None and first.stored_fence == saved and first.fence > saved
    assert await store.acquire(s.id, lease_s=0.2, ttl_s=30) is None  # held
    time.sleep(0.3)  # the holder pauses past its lease
    second = await store.acquire(s.id, lease_s=5, ttl_s=30)
    assert second is not None and second.fence > first.fence
    newer = stored(s.id, seed=1)
    assert await store.commit(second, encode(newer), ttl_s=30)
    # The first holder wakes up and writes: refused, the newer state stays.
    assert not await store.commit(first, encode(s), ttl_s=30)
    assert await store.load(s.id) == encode(newer)
    with sync_redis.Redis(port=redis.port) as r:  # no staged blob is left behind
        assert sorted(r.scan_iter(f"convlstm:stream:{{{s.id}}}:*")) == [
            f"convlstm:stream:{{{s.id}}}:{k}".encode() for k in ("fence", "state", "written")
        ]
    third = await store.acquire(s.id, lease_s=5, ttl_s=30)  # commit let the lease go
    assert third is not None and third.stored_fence == second.fence
    await store.release(third)
    assert await store.acquire(s.id, lease_s=5, ttl_s=30) is not None


async def test_redis_lease_of_a_closed_stream_says_so_and_commits_nothing(
    store: RedisStore,
) -> None:
    s = stored("e" * 32)
    await store.save(s.id, encode(s), ttl_s=30)
    lease = await store.acquire(s.id, lease_s=5, ttl_s=30)
    assert lease is not None
    await store.delete(s.id)  # closed by another replica meanwhile
    assert not await store.commit(lease, encode(s), ttl_s=30)
    assert await store.load(s.id) is None
    gone = await store.acquire("f" * 32, lease_s=5, ttl_s=30)
    assert gone is not None and gone.stored_fence == -1


async def test_redis_that_does_not_answer_is_unavailable_saying_where(
    tmp_path: Path,
) -> None:
    from bench.server import free_port

    store = RedisStore(f"redis://:secret@127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="does not answer") as err:
        await store.start()
    assert "secret" not in err.value.message and err.value.status_code == 503
    await store.close()
