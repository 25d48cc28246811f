"""Streams through Redis, in process: two apps (two replicas' worth of models, step
graphs and stores) share one real redis-server on loopback. A stream stepped on both in
turn answers what one server alone answers; steps at once on both are ordered or
refused, never mixed; a corrupt or foreign state is a clear error for its stream only;
Redis lost answers 503 and comes back; a version gone answers 410."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis as sync_redis
from fastapi import FastAPI
from pydantic import ValidationError

from bench.server import free_port
from service.api.examples import moving_square_frames
from service.config import Settings
from service.streams.store import decode, encode
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app
from tests.service.stream_tools import RedisServer, redis_server
from tests.service.test_streams import feed, open_stream, tensor_of

pytestmark = pytest.mark.anyio

FRAMES = moving_square_frames()
# 20 frames: the 15 of the moving square, then five of them again, backwards.
SEQUENCE = FRAMES + FRAMES[::-1][1:6]


def settings(store: str, **more: object) -> Settings:
    return Settings(
        model_path=COMMITTED_MODEL,
        serve_model_dir=False,
        warmup_runs=0,
        stream_store=store,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
async def replicas(redis: RedisServer) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    async with (
        running_app(settings(redis.url, stream_lease_s=2.0)) as a,
        running_app(settings(redis.url, stream_lease_s=2.0)) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
async def alone() -> AsyncIterator[FastAPI]:
    """One server with streams in memory: what a stream should answer."""
    async with running_app(settings("memory")) as app:
        yield app


def state_key(stream_id: str) -> str:
    return f"convlstm:stream:{{{stream_id}}}:state"


async def test_a_stream_stepped_on_two_replicas_answers_as_on_one(
    replicas: tuple[FastAPI, FastAPI], alone: FastAPI
) -> None:
    a, b = replicas
    async with asgi_client(a) as ca, asgi_client(b) as cb, asgi_client(alone) as cm:
        shared, reference = await open_stream(ca), await open_stream(cm)
        for i, frame in enumerate(SEQUENCE):
            got = await feed(ca if i % 2 else cb, shared, [frame])
            want = await feed(cm, reference, [frame])
            assert got.status_code == 200, got.text
            # Bit for bit where the batch is the same (one stream, one step).
            np.testing.assert_array_equal(tensor_of(got.json()), tensor_of(want.json()))
            if i == len(FRAMES) - 1:  # and after 15 frames, /predict's window of them
                window = await cm.post("/predict", json={"frames": FRAMES, "return_tensor": True})
                np.testing.assert_allclose(
                    tensor_of(got.json()), tensor_of(window.json()), atol=1e-5
                )
        for client in (ca, cb):
            info = (await client.get(f"/v1/streams/{shared}")).json()
            assert (info["frames_seen"], info["model_version"]) == (len(SEQUENCE), "1.0.0")
        ready = (await ca.get("/readyz")).json()
        assert (ready["stream_store"], ready["stream_durability"]) == ("redis", "step")
        # Closed on one: gone on the other.
        assert (await cb.delete(f"/v1/streams/{shared}")).status_code == 204
        gone = await feed(ca, shared, FRAMES[:1])
        assert gone.status_code == 404, gone.text


async def test_steps_at_once_on_two_replicas_are_ordered_or_refused_never_mixed(
    replicas: tuple[FastAPI, FastAPI], alone: FastAPI
) -> None:
    a, b = replicas
    async with asgi_client(a) as ca, asgi_client(b) as cb, asgi_client(alone) as cm:
        stream_id = await open_stream(ca)
        # Every request sends the same frame, so k applied steps give one state whatever
        # their order; a mixed or lost state would not equal k steps on one server.
        frame = FRAMES[7]
        answers = await asyncio.gather(
            *(feed(ca if i % 2 else cb, stream_id, [frame]) for i in range(12))
        )
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 409}, [r.text for r in answers]
        for r in answers:
            if r.status_code == 409:
                assert r.json()["error"]["type"] == "stream_busy"
        applied = codes.count(200)
        assert applied >= 1
        info = (await cb.get(f"/v1/streams/{stream_id}")).json()
        assert info["frames_seen"] == applied
        reference = await open_stream(cm)
        await feed(cm, reference, [frame] * applied)
        after = await feed(ca, stream_id, [FRAMES[8]])
        want = await feed(cm, reference, [FRAMES[8]])
        np.testing.assert_array_equal(tensor_of(after.json()), tensor_of(want.json()))


async def test_a_corrupt_or_foreign_state_is_an_error_for_that_stream_only(
    replicas: tuple[FastAPI, FastAPI], redis: RedisServer
) -> None:
    a, b = replicas
    async with asgi_client(a) as ca, asgi_client(b) as cb:
        ids = [await open_stream(ca) for _ in range(5)]
        bad, other, foreign, old, hashed = ids
        with sync_redis.Redis(port=redis.port) as r:
            r.set(state_key(bad), b"not a state at all", keepttl=True)
            blob = r.get(state_key(foreign))
            assert isinstance(blob, bytes)
            stored = decode(blob, foreign)
            stored.sha256 = "0" * 64
            r.set(state_key(foreign), encode(stored), keepttl=True)
            stored.sha256, stored.version, stored.id = "x", "99", old
            r.set(state_key(old), encode(stored), keepttl=True)
            # A value of another type where the blob belongs (a hash, as an earlier
            # layout of the store kept it).
            r.delete(state_key(hashed))
            r.hset(state_key(hashed), "blob", blob)
        r1 = await feed(cb, bad, FRAMES[:1])
        assert r1.status_code == 409, r1.text
        assert r1.json()["error"]["type"] == "corrupt_stream_state"
        assert f"stream {bad!r}" in r1.json()["error"]["message"]
        assert "not a stream state of this server" in r1.json()["error"]["message"]
        # Closed: the id now says so, and the store no longer holds it.
        assert (await feed(cb, bad, FRAMES[:1])).status_code == 404
        r2 = await feed(cb, foreign, FRAMES[:1])
        assert r2.status_code == 409 and "sha256 000000000000" in r2.json()["error"]["message"]
        r3 = await feed(cb, old, FRAMES[:1])
        assert r3.status_code == 410, r3.text
        assert "version 99, which this server no longer serves" in r3.json()["error"]["message"]
        r4 = await feed(cb, hashed, FRAMES[:1])
        assert r4.status_code == 409 and "another type" in r4.json()["error"]["message"]
        # The stream beside them carries on, on either replica.
        assert (await feed(cb, other, FRAMES[:1])).status_code == 200
        assert (await feed(ca, other, FRAMES[1:2])).status_code == 200


async def test_redis_lost_answers_503_and_streams_come_back_with_it(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        async with running_app(settings(server.url, stream_store_timeout_s=0.5)) as app:
            async with asgi_client(app) as client:
                kept = await open_stream(client)
                server.stop()
                r = await feed(client, kept, FRAMES[:1])
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] == "stream_store_unavailable"
                assert "does not answer" in r.json()["error"]["message"]
                assert (await client.post("/v1/streams")).status_code == 503
                # An id that is not one of ours is 404 without asking the store.
                assert (await feed(client, "nope", FRAMES[:1])).status_code == 404
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and "does not answer" in ready.text
                window = await client.post("/predict", json={"frames": FRAMES})
                assert window.status_code == 200
                server.start()  # same port, empty: the old stream is gone, new ones work
                assert (await client.get("/readyz")).status_code == 200
                assert (await feed(client, kept, FRAMES[:1])).status_code == 404
                fresh = await open_stream(client)
                assert (await feed(client, fresh, FRAMES[:1])).status_code == 200


async def test_redis_unreachable_at_start_up_is_not_ready_saying_why() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with running_app(settings(url, stream_store_timeout_s=0.5)) as app:
        async with asgi_client(app) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            message = ready.json()["error"]["message"]
            assert f"127.0.0.1:{url.split(':')[2]}" in message and "does not answer" in message


def test_a_store_that_is_not_a_redis_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="give 'memory' or a Redis URL"):
        settings("http://127.0.0.1:6379")
    with pytest.raises(ValidationError, match="database number"):
        settings("redis://127.0.0.1:6379/zero")
    with pytest.raises(ValidationError, match="memory only"):
        settings("redis://127.0.0.1:6379/0", stream_snapshot_dir="/tmp/x")


async def test_a_stream_past_its_maximum_duration_answers_410() -> None:
    async with running_app(settings("memory", max_stream_duration_s=0.3)) as app:
        async with asgi_client(app) as client:
            stream_id = await open_stream(client)
            assert (await feed(client, stream_id, FRAMES[:1])).status_code == 200
            await asyncio.sleep(0.4)
            r = await feed(client, stream_id, FRAMES[1:2])
            assert r.status_code == 410 and "maximum stream duration" in r.text
            assert (await feed(client, stream_id, FRAMES[1:2])).status_code == 404


async def test_a_model_past_its_stream_limit_answers_503_naming_it() -> None:
    limits = settings("memory", max_streams_per_model={"convlstm": 2})
    async with running_app(limits) as app, asgi_client(app) as client:
        first = await open_stream(client)
        await open_stream(client)
        r = await client.post("/v1/streams")
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert "all 2 stream slots of model 'convlstm'" in r.json()["error"]["message"]
        assert (await client.delete(f"/v1/streams/{first}")).status_code == 204
        await open_stream(client)
    with pytest.raises(ValidationError, match="must be at least 1"):
        settings("memory", max_streams_per_model={"convlstm": 0})
