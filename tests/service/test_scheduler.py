"""The queue in front of the model: batching, backpressure, deadlines, dropped work.

The model here is a small pure function (the next frame is the last frame plus 1), so
that every answer shows which request and which step it belongs to, rolled out as the
next-frame task does (each prediction fed back in); the real session is exercised in
test_registry.py and the server tests.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import anyio
import numpy as np
import pytest

from service.errors import DeadlineExceeded, Overloaded
from service.inference.scheduler import BatchStats, Scheduler, run_once
from service.tasks.next_frame import feed_back

pytestmark = pytest.mark.anyio

SHAPE = (3, 2, 2, 1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Model:
    """Next frame = last frame + 1; records batch sizes; can be held to fill the queue."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.gate.wait(timeout=5)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        self.batches.append(len(windows))
        self.seen.extend(float(w[0, 0, 0, 0]) for w in windows)
        out: np.ndarray = windows[:, -1] + 1.0
        return out


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition``; fail the test instead of hanging when it never holds."""
    with anyio.fail_after(within):
        while not condition():
            await asyncio.sleep(0.005)


def sequence(start: float) -> np.ndarray:
    return np.full(SHAPE, start, dtype=np.float32)


def scheduler(model: Model, **kwargs: float) -> Scheduler:
    options = {"workers": 1, "max_queue": 16, "max_batch": 8, "max_wait_s": 0.0, **kwargs}
    return Scheduler(model, rollout=feed_back, **options)  # type: ignore[arg-type]


async def test_each_answer_goes_to_its_own_request() -> None:
    model = Model()
    s = scheduler(model)
    s.start()
    try:
        results = await asyncio.gather(*(s.submit(sequence(i * 10), 2, 5) for i in range(6)))
    finally:
        await s.stop()
    for i, (frames, seconds) in enumerate(results):
        assert frames.shape == (2, 2, 2, 1)
        assert frames[0, 0, 0, 0] == i * 10 + 1 and frames[1, 0, 0, 0] == i * 10 + 2
        assert seconds > 0


async def test_concurrent_requests_share_a_model_run() -> None:
    model = Model()
    model.gate.clear()  # hold the first run so the rest queue up behind it
    s = scheduler(model, max_batch=4)
    s.start()
    try:
        tasks = [asyncio.create_task(s.submit(sequence(0), 1, 5))]
        await until(lambda: s.running == 1)
        tasks += [asyncio.create_task(s.submit(sequence(i), 1, 5)) for i in range(1, 5)]
        await until(lambda: s.queued == 4)
        model.gate.set()
        await asyncio.gather(*tasks)
    finally:
        await s.stop()
    assert model.batches == [1, 4]


async def test_batching_off_runs_one_at_a_time() -> None:
    model = Model()
    s = scheduler(model, max_batch=1)
    s.start()
    try:
        await asyncio.gather(*(s.submit(sequence(i), 1, 5) for i in range(4)))
    finally:
        await s.stop()
    assert model.batches == [1, 1, 1, 1]


async def test_wait_gathers_a_late_request_into_the_batch() -> None:
    model = Model()
    s = scheduler(model, max_batch=2, max_wait_s=5.0)
    s.start()
    try:
        first = asyncio.create_task(s.submit(sequence(0), 1, 10))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(s.submit(sequence(1), 1, 10))
        await asyncio.gather(first, second)
    finally:
        await s.stop()
    assert model.batches == [2]  # full batch: it did not wait out the 5 s


async def test_different_horizons_in_one_batch() -> None:
    model = Model()
    model.gate.clear()
    s = scheduler(model)
    s.start()
    try:
        tasks = [asyncio.create_task(s.submit(sequence(-50), 1, 5))]
        await until(lambda: s.running == 1)
        tasks += [
            asyncio.create_task(s.submit(sequence(i * 100), h, 5)) for i, h in enumerate([1, 3, 2])
        ]
        await until(lambda: s.queued == 3)
        model.gate.set()
        results = await asyncio.gather(*tasks)
    finally:
        await s.stop()
    assert model.batches == [1, 3, 2, 1]  # steps 1, 2, 3 of the batch of three
    for (frames, _), (start, horizon) in zip(
        results[1:], [(0, 1), (100, 3), (200, 2)], strict=True
    ):
        assert list(frames[:, 0, 0, 0]) == [start + k + 1 for k in range(horizon)]


async def test_full_queue_is_refused_at_once() -> None:
    model = Model()
    model.gate.clear()
    s = scheduler(model, max_queue=2, max_batch=1)
    s.start()
    try:
        running = asyncio.create_task(s.submit(sequence(0), 1, 5))
        await until(lambda: s.running == 1)
        queued = [asyncio.create_task(s.submit(sequence(i), 1, 5)) for i in (1, 2)]
        await until(lambda: s.queued == 2)
        with pytest.raises(Overloaded, match="queue is full"):
            await s.submit(sequence(3), 1, 5)
        model.gate.set()
        await asyncio.gather(running, *queued)
    finally:
        await s.stop()
    assert sorted(model.seen) == [0, 1, 2]


async def test_deadline_passed_in_the_queue_never_reaches_the_model() -> None:
    model = Model()
    model.gate.clear()
    stats: list[BatchStats] = []
    s = Scheduler(
        model,
        rollout=feed_back,
        workers=1,
        max_queue=4,
        max_batch=1,
        max_wait_s=0,
        on_batch=stats.append,
    )
    s.start()
    try:
        running = asyncio.create_task(s.submit(sequence(0), 1, 5))
        await until(lambda: s.running == 1)
        with pytest.raises(DeadlineExceeded, match="0.05 s deadline"):
            await s.submit(sequence(7), 1, 0.05)
        model.gate.set()
        await running
        await asyncio.sleep(0.05)
    finally:
        await s.stop()
    assert 7.0 not in model.seen
    assert sum(b.dropped_abandoned + b.dropped_expired for b in stats) == 1


async def test_cancelled_request_is_dropped_before_the_model() -> None:
    model = Model()
    model.gate.clear()
    s = scheduler(model, max_batch=1)
    s.start()
    try:
        running = asyncio.create_task(s.submit(sequence(0), 1, 5))
        await until(lambda: s.running == 1)
        gone = asyncio.create_task(s.submit(sequence(9), 1, 5))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.gate.set()
        await running
        await s.submit(sequence(1), 1, 5)
    finally:
        await s.stop()
    assert model.seen == [0, 1]


async def test_a_failing_batch_fails_only_its_requests() -> None:
    model = Model()
    s = scheduler(model)
    s.start()
    try:
        model.fail_next = True
        with pytest.raises(RuntimeError, match="model exploded"):
            await s.submit(sequence(0), 1, 5)
        frames, _ = await s.submit(sequence(5), 1, 5)
    finally:
        await s.stop()
    assert frames[0, 0, 0, 0] == 6


async def test_a_one_run_rollout_runs_the_batch_once() -> None:
    """The plain-tensor task's rollout: one model run for the batch, one output per job."""
    model = Model()
    s = Scheduler(model, rollout=run_once, workers=1, max_queue=8, max_batch=8, max_wait_s=0.05)
    s.start()
    try:
        results = await asyncio.gather(*(s.submit(sequence(i), 1, 5) for i in range(3)))
    finally:
        await s.stop()
    assert model.batches == [3]
    for i, (out, _) in enumerate(results):
        assert out.shape == SHAPE[1:] and out[0, 0, 0] == i + 1


class SlowModel(Model):
    """A model run that takes ``seconds`` (the GIL released, as a device run)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return super().__call__(windows)


async def closed_loop_batches(cohort_wait: float) -> list[int]:
    """Eight clients, each back 1 to 8 ms after its answer (the time an answer and the next
    request take on the event loop), for 12 rounds; the batch sizes the model saw."""
    model = SlowModel(0.04)
    s = scheduler(model, max_batch=8, cohort_wait=cohort_wait)
    s.start()

    async def client(i: int) -> None:
        for _ in range(12):
            await s.submit(sequence(i), 1, 10)
            await asyncio.sleep(0.001 * (1 + i))

    try:
        await asyncio.gather(*(client(i) for i in range(8)))
    finally:
        await s.stop()
    return model.batches


async def test_waiting_for_the_cohort_keeps_closed_loop_clients_in_one_batch() -> None:
    split = await closed_loop_batches(0.0)
    whole = await closed_loop_batches(0.5)
    # Without the wait the first client back runs (nearly) alone and the cohort splits;
    # with it, the clients answered together run together again.
    assert statistics.mean(whole) >= 7.0, whole
    assert statistics.mean(split) <= 5.0, split
    assert len(whole) < len(split)


async def split_cohort_batches(cohort_wait: float) -> list[int]:
    """Two groups of four clients, the second arriving while the first runs."""
    model = SlowModel(0.04)
    s = scheduler(model, max_batch=8, cohort_wait=cohort_wait)
    s.start()

    async def client(i: int, start: float) -> None:
        await asyncio.sleep(start)
        for _ in range(10):
            await s.submit(sequence(i), 1, 10)
            await asyncio.sleep(0.002)

    try:
        await asyncio.gather(*(client(i, 0.0 if i < 4 else 0.02) for i in range(8)))
    finally:
        await s.stop()
    return model.batches


async def test_a_split_cohort_is_rejoined() -> None:
    # The groups alternate for good unless the worker, when it answers one, counts the
    # other (queued meanwhile) as part of the cohort it waits for.
    alternating = await split_cohort_batches(0.0)
    rejoined = await split_cohort_batches(0.5)
    assert statistics.mean(alternating) <= 5.0, alternating
    assert rejoined[0] == 4 and statistics.mean(rejoined[1:-1]) >= 7.0, rejoined
