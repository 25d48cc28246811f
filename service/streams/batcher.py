"""Where stream steps wait and run: one queue per model, and workers that run the steps
of every stream queued together as one batched step-graph run.

A request gives k >= 1 frames and a horizon h: its stream takes k + h - 1 steps, the
first k fed the given frames, the rest fed its own predictions. Requests of different
lengths share runs: at each step the batch holds the streams that still have a step to
take. The state kept for a stream is the one after its last given frame, so predictions
fed back for a horizon never enter what the stream has seen.

The batching mirrors ``service.inference.scheduler`` (bounded queue, refused when full,
deadlines, jobs of departed clients dropped unrun), with jobs that carry a state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray
from opentelemetry.trace import SpanContext

from service import tracing
from service.errors import DeadlineExceeded, Overloaded, ShuttingDown
from service.inference.scheduler import Cohort, collect_batch
from service.streams.session import State

log = logging.getLogger(__name__)

RunStep = Callable[[NDArray[np.float32], State], tuple[NDArray[np.float32], State]]


@dataclass(frozen=True)
class StepWork:
    """One stream's request: its frames (k, H, W, C), its horizon, its state (F, H, W)."""

    frames: NDArray[np.float32]
    horizon: int
    state: State

    @property
    def steps(self) -> int:
        return len(self.frames) + self.horizon - 1


@dataclass(frozen=True)
class StepResult:
    predicted: NDArray[np.float32]
    """The ``horizon`` frames after the given ones (h, H, W, C)."""
    state: State
    """The stream's state after its last given frame."""
    seconds: float
    """Time in the model for the batch this request ran in."""


def advance(run_step: RunStep, work: list[StepWork]) -> tuple[list[StepResult], list[int]]:
    """Every request's steps in one batched roll-out; the results and each run's size."""
    start = time.perf_counter()
    n = len(work)
    if n == 1:  # a view, not a copy: the state of one stream is 2.7 MB for the seed model
        state = {name: value[None] for name, value in work[0].state.items()}
    else:
        state = {name: np.stack([w.state[name] for w in work]) for name in work[0].state}
    given = [len(w.frames) for w in work]
    total = [w.steps for w in work]
    frame_shape = work[0].frames.shape[1:]
    last = np.zeros((n, *frame_shape), np.float32)
    predicted: list[list[NDArray[np.float32]]] = [[] for _ in work]
    kept: list[State] = [{} for _ in work]
    sizes = []
    for step in range(max(total)):
        active = [i for i in range(n) if total[i] > step]
        x = np.stack([work[i].frames[step] if step < given[i] else last[i] for i in active])
        whole = len(active) == n
        out, new = run_step(x, state if whole else {k: v[active] for k, v in state.items()})
        sizes.append(len(active))
        for name, value in new.items():
            if whole:
                state[name] = value
            else:
                state[name][active] = value
        last[active] = out
        for k, i in enumerate(active):
            if step >= given[i] - 1:
                predicted[i].append(out[k])
            if step == given[i] - 1:
                # One stream's rows of fresh model outputs; copied out of a batch so that
                # a stream's state never keeps the whole batch's arrays alive, or shares
                # them with later in-place updates.
                kept[i] = {
                    name: value[0] if n == 1 else value[i].copy() for name, value in state.items()
                }
    seconds = time.perf_counter() - start
    results = [StepResult(np.stack(p), s, seconds) for p, s in zip(predicted, kept, strict=True)]
    return results, sizes


@dataclass
class StepJob:
    work: StepWork
    deadline: float
    future: asyncio.Future[StepResult]
    abandoned: bool = field(default=False)
    started: bool = field(default=False)
    queued_at: float = field(default_factory=time.monotonic)
    trace_context: SpanContext = field(default_factory=tracing.request_span_context)


class StepBatcher:
    """A bounded queue of stream steps in front of one model's step graph."""

    def __init__(
        self,
        run_step: RunStep,
        *,
        max_queue: int,
        max_batch: int,
        max_wait_s: float,
        cohort_wait: float = 0.0,
        on_batch: Callable[[list[int]], None] = lambda sizes: None,
        span_attributes: dict[str, Any] | None = None,
    ) -> None:
        self._span_attributes = span_attributes or {}
        self._cohort = Cohort(cohort_wait) if cohort_wait > 0 else None
        self._run_step = run_step
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[StepJob] = asyncio.Queue(maxsize=max_queue)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stream-step")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=False)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service stopped before running it"))

    def submit(self, work: StepWork, timeout_s: float) -> StepJob:
        """Queue ``work``; ``Overloaded`` at once when the queue is full."""
        if self._closed:
            raise ShuttingDown("the service is shutting down")
        loop = asyncio.get_running_loop()
        job = StepJob(work, time.monotonic() + timeout_s, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"the stream step queue is full ({self._queue.maxsize} waiting); retry later"
            ) from None
        return job

    async def wait(self, job: StepJob, timeout_s: float) -> StepResult:
        """The job's result. If the caller is cancelled or the deadline passes first, a
        job not yet started is dropped unrun; one already running is waited for, so that
        whoever holds the stream's lock releases it only once the step is over."""
        try:
            with anyio.fail_after(timeout_s):
                return await asyncio.shield(job.future)
        except BaseException as err:
            job.abandoned = True
            if job.started:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([job.future])
            if isinstance(err, TimeoutError):
                raise DeadlineExceeded(f"no answer within the {timeout_s:g} s deadline") from None
            raise

    async def _collect(self) -> list[StepJob]:
        return await collect_batch(self._queue, self._max_batch, self._max_wait, self._cohort)

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            now = time.monotonic()
            live = []
            for job in batch:
                if job.abandoned or job.future.done():
                    continue
                if job.deadline <= now:
                    job.future.set_exception(
                        DeadlineExceeded("the deadline passed while the step was queued")
                    )
                    continue
                job.started = True
                live.append(job)
            if not live:
                continue
            run = asyncio.get_running_loop().run_in_executor(
                self._thread, advance, self._run_step, [j.work for j in live]
            )
            traced = tracing.trace_batch(
                [j.trace_context for j in live],
                [now - j.queued_at for j in live],
                self._span_attributes,
            )
            try:
                results, sizes = await _finish(run)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a failed run fails its batch, not the server
                if traced is not None:
                    traced.end(err)
                log.exception("stream step failed for a batch of %d", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            if traced is not None:
                traced.end()
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
            if self._cohort is not None:
                self._cohort.answered(len(live) + self._queue.qsize(), results[0].seconds)
            self._on_batch(sizes)


async def _finish(
    run: asyncio.Future[tuple[list[StepResult], list[int]]],
) -> tuple[list[StepResult], list[int]]:
    """Await a run; if the worker is cancelled meanwhile (shutdown), let the run end
    first, since its thread and buffers belong to the model."""
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        await asyncio.wait([run])
        raise
