"""Streams across real server processes on loopback, sharing a real redis-server: streams
whose frames alternate between two replicas answer what the step graph answers on the
same frames (onnxruntime in this process, the reference); a replica killed with SIGKILL
mid-run loses at most its frames in flight and every stream carries on on the other
after the lease expiry, no frame applied twice; SIGTERM and a restart with ``drain``
(Redis, and the snapshot directory without Redis) carry the streams on exactly; Debian's
nginx with the project's edge config keeps each stream on one replica, and a replica
leaving moves only its own streams.

32 streams x 40 frames each, clients in parallel threads. The model is the small
exported ConvLSTM stack of ``tiny_model`` (one layer, a real tf2onnx export with its step
graph): these tests are about state moving between processes, and its 51 KB of state per
stream keeps their steps cheap; ``test_streams_redis.py`` checks the committed model's
2.7 MB state across two replicas bit for bit. In ``make test``; ``make
test-stream-replicas`` runs them alone. Debian's redis-server and nginx are needed
(``make stream-tools``): where missing they skip, or fail under
``REQUIRE_STREAM_TOOLS=1``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from convlstm_card import read_card
from service.config import Settings
from service.streams.session import StepSession
from tests.service.conftest import RunningServer, run_server
from tests.service.stream_tools import (
    RedisServer,
    frames_of,
    nginx_edge,
    prediction,
    redis_server,
    step,
)

STREAMS, FRAMES = 32, 40
# Threads stepping streams at once: each stream's frames go in order, streams in parallel.
CLIENTS = 8
# Short, so that the kill test waits little for the dead replica's leases; long enough
# for a step on a loaded 2-core machine (a step that outlasts it is refused with 409 and
# sent again, as the message says).
LEASE_S = 3.0


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def reference(model: Path) -> list[NDArray[np.float32]]:
    """Each stream's predictions after each frame, from the step graph alone: (FRAMES,
    40, 40, 3) per stream."""
    spec = read_card(model.with_suffix(".json")).stream
    assert spec is not None
    session = StepSession(model, spec, Settings())
    out = []
    for s in range(STREAMS):
        state = {k: v[None] for k, v in session.zero_state().items()}
        predicted = []
        for frame in frames_of(s, FRAMES):
            y, state = session.run(frame[None], state)
            predicted.append(y[0])
        out.append(np.stack(predicted))
    return out


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def env(**more: str) -> dict[str, str]:
    return {
        "CONVLSTM_SERVE_MODEL_DIR": "false",
        "CONVLSTM_GRPC_PORT": "0",
        "CONVLSTM_WARMUP_RUNS": "0",
        "CONVLSTM_MAX_STREAMS": "256",
        "CONVLSTM_STREAM_LEASE_S": str(LEASE_S),
        # No stream may expire while it waits for its thread.
        "CONVLSTM_STREAM_IDLE_S": "600",
        **{f"CONVLSTM_{k.upper()}": v for k, v in more.items()},
    }


def open_streams(server: RunningServer, n: int) -> list[str]:
    with server.client() as c:
        return [c.post("/v1/streams").json()["stream_id"] for _ in range(n)]


def frames_seen(server: RunningServer, stream_id: str) -> int:
    with server.client() as c:
        r = c.get(f"/v1/streams/{stream_id}")
        assert r.status_code == 200, r.text
        seen: int = r.json()["frames_seen"]
        return seen


@pytest.fixture(scope="module")
def pair(redis: RedisServer, model: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two replicas sharing ``redis`` with ``step`` durability."""
    with (
        run_server(model, env=env(stream_store=redis.url)) as a,
        run_server(model, env=env(stream_store=redis.url)) as b,
    ):
        yield a, b


def test_streams_alternating_between_replicas_answer_as_the_step_graph(
    pair: tuple[RunningServer, RunningServer], reference: list[NDArray[np.float32]]
) -> None:
    a, b = pair
    ids = open_streams(a, STREAMS)

    def run(s: int) -> None:
        frames = frames_of(s, FRAMES)
        with a.client() as ca, b.client() as cb:
            for t in range(FRAMES):
                got = prediction(step((ca, cb)[(t + s) % 2], ids[s], frames[t]))
                np.testing.assert_allclose(got, reference[s][t], atol=1e-5)

    parallel(run)
    assert {frames_seen(b, i) for i in ids} == {FRAMES}


def parallel(run: Callable[[int], None]) -> None:
    """``run(s)`` for every stream s, ``CLIENTS`` at a time; the first failure raised."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(run, range(STREAMS)))


def steps_logged(server: RunningServer, stream_id: str) -> int:
    """Steps of ``stream_id`` in the server's access log."""
    return server.output().count(f"POST /v1/streams/{stream_id} 200")


def test_nginx_keeps_each_stream_on_one_replica_and_moves_only_a_leaving_ones(
    pair: tuple[RunningServer, RunningServer],
    reference: list[NDArray[np.float32]],
    tmp_path: Path,
) -> None:
    a, b = pair
    n = STREAMS
    replicas = [a.url.removeprefix("http://"), b.url.removeprefix("http://")]
    with nginx_edge(tmp_path, replicas) as edge, httpx.Client(base_url=edge, timeout=60) as c:
        ids = [c.post("/v1/streams").json()["stream_id"] for _ in range(n)]
        half = 6
        for t in range(half):
            for s, stream_id in enumerate(ids):
                got = prediction(step(c, stream_id, frames_of(s, FRAMES)[t]))
                np.testing.assert_allclose(got, reference[s][t], atol=1e-5)
        # Affinity: every step of a stream on one replica; the streams spread over both.
        # (A request's log line is written just after its answer: waited for, briefly.)
        deadline = time.monotonic() + 10
        while True:
            on_a = [i for i in ids if steps_logged(a, i) == half]
            on_b = [i for i in ids if steps_logged(b, i) == half]
            if sorted(on_a + on_b) == sorted(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted(on_a + on_b) == sorted(ids), [
            (steps_logged(a, i), steps_logged(b, i)) for i in ids
        ]
        assert on_a and on_b
        # Replica a leaves: its streams go on on b from Redis, b's stay where they were.
        a.process.send_signal(signal.SIGTERM)
        assert a.process.wait(timeout=60) == 0
        before = {i: steps_logged(b, i) for i in ids}
        for t in range(half, half + 3):
            for s, stream_id in enumerate(ids):
                got = prediction(step(c, stream_id, frames_of(s, FRAMES)[t]))
                np.testing.assert_allclose(got, reference[s][t], atol=1e-5)
        deadline = time.monotonic() + 10
        while not all(steps_logged(b, i) == before[i] + 3 for i in ids):
            assert time.monotonic() < deadline, [steps_logged(b, i) - before[i] for i in ids]
            time.sleep(0.1)
        assert [frames_seen(b, i) for i in ids] == [half + 3] * n


def test_a_replica_killed_mid_run_loses_at_most_its_frames_in_flight(
    redis: RedisServer, model: Path, reference: list[NDArray[np.float32]]
) -> None:
    with (
        run_server(model, env=env(stream_store=redis.url)) as a,
        run_server(model, env=env(stream_store=redis.url)) as b,
    ):
        ids = open_streams(b, STREAMS)
        killed = threading.Event()
        lost: list[tuple[int, int]] = []  # applied, but the answer never came

        def run(s: int) -> None:
            stream_id, frames = ids[s], frames_of(s, FRAMES)
            with a.client(timeout=30) as ca, b.client(timeout=30) as cb:
                for t in range(FRAMES):
                    if t == FRAMES // 2 and s == 0:
                        os.kill(a.process.pid, signal.SIGKILL)
                        killed.set()
                    client = cb if killed.is_set() or s % 2 else ca
                    try:
                        r = step(client, stream_id, frames[t])
                    except httpx.TransportError:
                        # The frame was in flight on the killed replica: the state in Redis
                        # says whether its step was kept; send it again only if not.
                        killed.wait()
                        if frames_seen(b, stream_id) == t + 1:
                            lost.append((s, t))
                            continue
                        r = step(cb, stream_id, frames[t])
                    np.testing.assert_allclose(prediction(r), reference[s][t], atol=1e-5)

        parallel(run)
        assert a.process.wait(timeout=5) == -signal.SIGKILL
        # Every frame applied exactly once: none lost from the state, none twice.
        assert [frames_seen(b, i) for i in ids] == [FRAMES] * STREAMS
        assert len(lost) <= STREAMS  # at most one frame in flight per stream


@pytest.mark.parametrize("where", ["redis", "snapshot"])
def test_sigterm_and_restart_with_drain_carry_streams_on(
    where: str,
    redis: RedisServer,
    model: Path,
    reference: list[NDArray[np.float32]],
    tmp_path: Path,
) -> None:
    store = (
        {"stream_store": redis.url}
        if where == "redis"
        else {"stream_snapshot_dir": str(tmp_path / "snapshots")}
    )
    settings = env(stream_durability="drain", **store)
    half = FRAMES // 2

    def steps(server: RunningServer, ids: list[str], frames: range) -> None:
        def run(s: int) -> None:
            with server.client() as c:
                for t in frames:
                    got = prediction(step(c, ids[s], frames_of(s, FRAMES)[t]))
                    np.testing.assert_allclose(got, reference[s][t], atol=1e-5)

        parallel(run)

    with run_server(model, env=settings) as first:
        ids = open_streams(first, STREAMS)
        steps(first, ids, range(half))
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=60) == 0
        assert f"wrote {STREAMS} open stream(s)" in first.output()
    with run_server(model, env=settings) as second:
        steps(second, ids, range(half, FRAMES))
        assert [frames_seen(second, i) for i in ids] == [FRAMES] * STREAMS
