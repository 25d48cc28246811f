"""Where a request waits for the model: a bounded queue, deadlines, and batching.

Requests are queued as jobs; worker tasks take whatever is queued (up to the maximum
batch size, waiting at most the configured delay for more), drop jobs whose client
has gone or whose deadline has passed, and run the rest as one batch. A full queue
is refused at once rather than letting latency grow without bound.

Jobs are arrays; how a batch of them becomes answers (one model run, or several with
each output fed back in) is the ``Rollout`` the model's task adapter supplies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import numpy as np
from numpy.typing import NDArray
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext

from service import tracing
from service.errors import DeadlineExceeded, Overloaded, ShuttingDown

log = logging.getLogger(__name__)
_T = TypeVar("_T")

RunBatch = Callable[[NDArray[np.float32]], NDArray[np.float32]]
Rollout = Callable[
    [RunBatch, list[NDArray[np.float32]], list[int]],
    tuple[list[NDArray[np.float32]], list[int]],
]
"""Given the model's run, every job's input and its number of steps: every job's output
and the batch size of each model run made."""


def run_once(
    run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
) -> tuple[list[NDArray[np.float32]], list[int]]:
    """The rollout of a model that answers in one run: the whole batch, once. Its task
    adapter admits only one step."""
    outputs = run_batch(np.stack(inputs))
    return list(outputs), [len(inputs)]


@dataclass
class Job:
    inputs: NDArray[np.float32]
    steps: int
    deadline: float
    future: asyncio.Future[tuple[NDArray[np.float32], float]]
    abandoned: bool = field(default=False)
    queued_at: float = field(default_factory=time.monotonic)
    trace_context: SpanContext = field(default=INVALID_SPAN_CONTEXT)
    """The span of the request that submitted it (invalid when it is not traced)."""


@dataclass(frozen=True)
class BatchStats:
    """What one batch did; the runner turns it into metrics."""

    sizes: list[int]
    dropped_abandoned: int
    dropped_expired: int
    queue_waits: list[float] = field(default_factory=list)
    """Seconds each job run in the batch waited in the queue."""


class Scheduler:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        rollout: Rollout,
        workers: int,
        max_queue: int,
        max_batch: int,
        max_wait_s: float,
        cohort_wait: float = 0.0,
        on_batch: Callable[[BatchStats], None] = lambda stats: None,
        span_attributes: dict[str, Any] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._span_attributes = span_attributes or {}
        self._cohort_wait = cohort_wait
        self._rollout = rollout
        self._workers = workers
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self._tasks: list[asyncio.Task[None]] = []
        # Each worker runs the model on a thread of its own for the life of the model,
        # not on whichever pooled thread is free: onnxruntime's CUDA provider keeps a
        # context per calling thread (cuDNN and cuBLAS handles), so a fixed set of
        # threads, warmed before ready, pays that once. (On the H100 this did not cure
        # the slowdown at 16 clients; see bench/results/gpu/ and docs/gpu.md.)
        self._threads = [
            ThreadPoolExecutor(1, thread_name_prefix=f"model-run-{i}") for i in range(workers)
        ]
        self._running = 0
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(i)) for i in range(self._workers)]

    def warm_up(self, warm: Callable[[], float]) -> float:
        """Run ``warm`` once on every worker's model thread (blocking); the seconds spent."""
        return sum(thread.submit(warm).result() for thread in self._threads)

    async def stop(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for thread in self._threads:
            thread.shutdown(wait=False)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service stopped before running it"))

    async def submit(
        self, inputs: NDArray[np.float32], steps: int, timeout_s: float
    ) -> tuple[NDArray[np.float32], float]:
        """Queue one item (one sequence, one tensor); its output after ``steps`` steps
        and the seconds the model took. Raises ``Overloaded`` at once when the queue is
        full and ``DeadlineExceeded`` when ``timeout_s`` passes first."""
        if self._closed:
            raise ShuttingDown("the service is shutting down")
        loop = asyncio.get_running_loop()
        job = Job(inputs, steps, time.monotonic() + timeout_s, loop.create_future())
        job.trace_context = tracing.request_span_context()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"the queue is full ({self._queue.maxsize} requests waiting); retry later"
            ) from None
        try:
            with anyio.fail_after(timeout_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            job.abandoned = True
            raise DeadlineExceeded(f"no answer within the {timeout_s:g} s deadline") from None
        except BaseException:
            # Cancelled: the client went away. The worker will skip the job.
            job.abandoned = True
            raise

    async def _work(self, index: int) -> None:
        thread = self._threads[index]
        cohort = Cohort(self._cohort_wait) if self._cohort_wait > 0 else None
        while True:
            batch = await collect_batch(self._queue, self._max_batch, self._max_wait, cohort)
            now = time.monotonic()
            live, abandoned, expired = [], 0, 0
            for job in batch:
                if job.abandoned or job.future.done():
                    abandoned += 1
                elif job.deadline <= now:
                    expired += 1
                    job.future.set_exception(
                        DeadlineExceeded("the deadline passed while the request was queued")
                    )
                else:
                    live.append(job)
            sizes: list[int] = []
            waits = [now - job.queued_at for job in live]
            if live:
                self._running += len(live)
                traced = tracing.trace_batch(
                    [job.trace_context for job in live], waits, self._span_attributes
                )
                failure: BaseException | None = None
                try:
                    outputs, seconds, sizes = await _finish(
                        asyncio.get_running_loop().run_in_executor(thread, self._run, live)
                    )
                except Exception as err:  # a model failure fails its batch, not the server
                    failure = err
                    log.exception("model run failed for a batch of %d", len(live))
                    for job in live:
                        if not job.future.done():
                            job.future.set_exception(err)
                else:
                    for job, out in zip(live, outputs, strict=True):
                        if not job.future.done():
                            job.future.set_result((out, seconds))
                    if cohort is not None:
                        cohort.answered(len(live) + self._queue.qsize(), seconds)
                finally:
                    self._running -= len(live)
                    if traced is not None:
                        traced.end(failure)
            self._on_batch(BatchStats(sizes, abandoned, expired, waits))

    def _run(self, jobs: list[Job]) -> tuple[list[NDArray[np.float32]], float, list[int]]:
        start = time.perf_counter()
        outputs, sizes = self._rollout(
            self._run_batch, [j.inputs for j in jobs], [j.steps for j in jobs]
        )
        return outputs, time.perf_counter() - start, sizes


async def _finish(run: asyncio.Future[_T]) -> _T:
    """Await a model run; if the worker is cancelled meanwhile (shutdown), let the run
    end first, since its thread and buffers belong to the model."""
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        await asyncio.wait([run])
        raise


_Item = TypeVar("_Item")


@dataclass
class Cohort:
    """The clients a worker last saw: those it has just answered plus those already
    queued then, and until when it waits for that many to be queued before its next run.

    Closed-loop clients answered together come back together, but a few milliseconds
    apart (each answer is encoded and sent, each next request read and decoded, one at a
    time on the event loop). A worker that starts on the first to return runs it nearly
    alone, and the rest queue up behind that run: the cohort splits into small
    alternating batches, at most half the device's rate, and on a GPU every run then
    changes the batch size. Counting those already queued too rejoins a cohort that has
    split (the half that waited during the run, and the half just answered). The wait is
    bounded by a fraction of the last run's time."""

    fraction: float
    size: int = 0
    until: float = 0.0

    def answered(self, size: int, run_seconds: float) -> None:
        self.size = size
        self.until = time.monotonic() + self.fraction * run_seconds


async def collect_batch(
    queue: asyncio.Queue[_Item],
    max_batch: int,
    max_wait_s: float,
    cohort: Cohort | None = None,
) -> list[_Item]:
    """The next batch from ``queue``: wait for one item, take what is already queued, wait
    for the rest of the last ``cohort`` while its bound lasts, then up to ``max_wait_s``
    for more, never past ``max_batch`` (the model scheduler's and the streams' batcher's
    shared rule)."""
    batch = [await queue.get()]
    while len(batch) < max_batch and not queue.empty():
        batch.append(queue.get_nowait())
    if cohort is not None:
        want = min(cohort.size, max_batch)
        left = cohort.until - time.monotonic()
        if len(batch) < want and left > 0:
            with anyio.move_on_after(left):
                while len(batch) < want:
                    batch.append(await queue.get())
    if len(batch) < max_batch and max_wait_s > 0:
        with anyio.move_on_after(max_wait_s):
            while len(batch) < max_batch:
                batch.append(await queue.get())
    return batch
