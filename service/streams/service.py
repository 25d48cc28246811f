"""Streams for every protocol front: open, step, look up and close streams of the served
ConvLSTM stacks, and roll a sequence out from state for ``/predict``. No HTTP here.

A model serves streams when its card names a step graph (``stream`` section, written by
``model_export.export.step_graph``) that loads and matches the card; other models (the
CNN-LSTM, the int8 graph, tensor models) answer 422 naming why.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Literal

import anyio
import numpy as np
from numpy.typing import NDArray

from service import tracing
from service.config import Settings
from service.errors import InvalidInput
from service.registry import ModelRegistry
from service.streams.batcher import StepResult, StepWork
from service.streams.frames import decode_stream_frames
from service.streams.keeper import StreamKeeper
from service.streams.metrics import StreamMetrics
from service.streams.store import CorruptState, StoredStream
from service.streams.stored import StreamGone, check_stored, restore, to_stored
from service.streams.table import Stream, StreamsFull, StreamTable, UnknownStream
from service.streams.versions import StreamModel, StreamVersions, key_of
from service.tasks.next_frame import (
    INLINE_TENSOR_CHARS,
    FramesInput,
    Prediction,
    TensorInput,
)

log = logging.getLogger(__name__)

# How /predict rolls a horizon > 1 out when the request does not say: chosen by the
# quality of the two on the test split (the README's roll-out table,
# python -m model_export rollouts).
DEFAULT_ROLLOUT: Literal["window", "state"] = "window"

# The ids this service hands out: a uuid4's hex for /v1/streams, oip:MODEL:SEQ for the
# Open Inference Protocol's sequences. Anything else is answered 404 without asking the
# store.
STREAM_ID = re.compile(r"[0-9a-f]{32}|oip:.{1,300}", re.DOTALL)


class StreamService:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = StreamMetrics(registry.metrics)
        self.table = StreamTable(
            settings.max_streams, settings.stream_idle_s, on_expire=self._count_expiry
        )
        self.versions = StreamVersions(settings, self.table, self.metrics)
        self.keeper = StreamKeeper(settings)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def models(self) -> dict[str, StreamModel]:
        """The step graph each model's new streams get, by model name."""
        return self.versions.current

    @property
    def unavailable(self) -> dict[str, str]:
        """Why each served model that serves no streams does not."""
        return self.versions.unavailable

    async def start(self) -> None:
        """Load the step graph of every served model whose card names one, then follow
        the registry's swaps (``StreamVersions``). One that fails to load is logged and
        leaves its model without streams; the model still serves."""
        for name, served in self.registry.models.items():
            await self.versions.prepare(name, served)
            self.versions.publish(name, served)
        self.registry.listeners.append(self.versions)
        self.metrics.state_bytes.set_function(lambda: self.table.state_bytes)
        await self.keeper.start()
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        """Stop expiring and stepping; with ``drain`` durability write every stream to
        the store, then drop them from memory."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.versions in self.registry.listeners:
            self.registry.listeners.remove(self.versions)
        await self.versions.close()
        kept = await self.keeper.drain(map(to_stored, list(self.table.streams.values())))
        dropped = self.table.clear()
        await self.keeper.close()
        if kept:
            log.info("wrote %d open stream(s) to %s", kept, self.keeper.where)
        if dropped > kept and not self.keeper.write_through:
            log.info("closed %d open stream(s); their state is not kept", dropped - kept)

    def _count_expiry(self, stream: Stream) -> None:
        self.metrics.expired.labels(stream.model).inc()
        log.debug("stream %s of %s expired", stream.id, stream.model)

    async def _sweep(self) -> None:
        period = max(0.05, min(self.table.idle_s / 4.0, 5.0))
        while True:
            await asyncio.sleep(period)
            self.table.expire()
            self.versions.release_idle()

    # -- the operations every front uses --------------------------------------------------

    def model(self, name: str | None) -> StreamModel:
        """The stream model served as ``name`` (the default when None): 404 if no model has
        that name, 422 if it serves no streams."""
        served = self.registry.lookup(name)
        found = self.models.get(served.info.name)
        if found is None:
            why = self.unavailable.get(served.info.name, "its step graph is not loaded")
            raise InvalidInput(
                f"model: {served.info.name!r} serves no streams: {why}; streams: "
                f"{', '.join(self.models) or 'none'}",
                location="model",
            )
        return found

    async def open(self, name: str | None, stream_id: str | None = None) -> Stream:
        model = self.model(name)
        if self.keeper.shared and len(self.table) >= self.table.max_streams:
            # Streams held here are copies of the store's: the idlest makes room.
            idlest = self.table.least_recently_used()
            if idlest is not None:
                self.table.forget(idlest.id)
        try:
            self._check_model_limit(model.name)
            stream = self.table.open(
                model.name, model.session.zero_state(), model.session.state_bytes, stream_id
            )
        except Exception:
            self.metrics.refused.inc()
            raise
        stream.model_version, stream.sha256 = model.version, model.sha256
        self.versions.ended.pop(stream.id, None)
        try:
            stream.fence = await self.keeper.opened(to_stored(stream))
        except BaseException:
            self.table.forget(stream.id)
            raise
        self.metrics.opened.labels(model.name).inc()
        return stream

    def _check_model_limit(self, name: str) -> None:
        limit = self.settings.max_streams_per_model.get(name)
        if limit is None:
            return
        self.table.expire()
        if sum(1 for s in self.table.streams.values() if s.model == name) >= limit:
            raise StreamsFull(
                f"model: all {limit} stream slots of model {name!r} are in use "
                "(max_streams_per_model); close a stream or retry when an idle one expires",
                location="model",
                headers={"Retry-After": str(self.table.retry_after())},
            )

    async def get(self, stream_id: str, *, fresh: bool = False) -> Stream:
        """The open stream ``stream_id``: held here, or loaded from the store. ``fresh``:
        where replicas share the store, as the store has it now (another replica may have
        stepped it since this one did)."""
        if not STREAM_ID.fullmatch(stream_id):
            raise UnknownStream(
                f"stream_id: no stream {stream_id[:64]!r}: not a stream id of this service "
                "(POST /v1/streams answers with one)",
                location="stream_id",
            )
        if stream_id in self.versions.ended:
            raise StreamGone(self.versions.ended[stream_id], location="stream_id")
        held = self.table.streams.get(stream_id)
        if fresh and self.keeper.shared and (held is None or not held.busy):
            stored = await self._fetch(stream_id)
            if stored is None:
                self.table.forget(stream_id)
                raise UnknownStream(self.table.why_unknown(stream_id), location="stream_id")
            stream = self._adopt(stored, into=held)
            stream.fence = -1  # read whole, not under a lease: checked again at the next step
        else:
            try:
                stream = self.table.get(stream_id)
            except UnknownStream:
                if self.keeper.store is None:
                    raise
                stored = await self._fetch(stream_id)
                if stored is None:
                    raise
                stream = self._adopt(stored)
        self._check_age(stream)
        return stream

    async def close_stream(self, stream_id: str) -> Stream:
        stream = await self.get(stream_id)
        self.table.close(stream_id)
        await self.keeper.closed(stream_id)
        self.versions.release_idle()
        return stream

    async def _fetch(self, stream_id: str) -> StoredStream | None:
        """The store's copy of a stream; a corrupt one is removed there and answered 409
        for this stream only."""
        try:
            return await self.keeper.fetch(stream_id)
        except CorruptState:
            await self.keeper.closed(stream_id)
            self.table.forget(stream_id, "closed")
            raise

    def _adopt(self, stored: StoredStream, into: Stream | None = None) -> Stream:
        """A stored stream held here (``into`` refreshed, or a new entry), once checked
        against the model version served here (410 when gone, 409 when not its state:
        that stream is closed)."""
        model = self.versions.for_stored(stored.model, stored.version, stored.sha256)
        try:
            check_stored(
                stored,
                model.version if model else None,
                model.sha256 if model else "",
                model.session.state_shapes if model else {},
            )
        except CorruptState:
            self.table.forget(stored.id, "closed")
            raise
        assert model is not None  # check_stored refused a stream of no model served here
        stream = restore(stored, into, model.session.state_bytes)
        if into is None:
            self.table.add(stream)
        return stream

    def model_of(self, stream: Stream) -> StreamModel:
        """The step graph of the version ``stream`` opened with; 410 once it is gone."""
        model = self.versions.find(key_of(stream))
        if stream.id in self.versions.ended or model is None:
            raise StreamGone(
                self.versions.ended.get(stream.id)
                or f"stream_id: stream {stream.id!r} was opened on model {stream.model!r} "
                f"version {stream.model_version}, which is no longer loaded; open a new stream",
                location="stream_id",
            )
        return model

    def _check_age(self, stream: Stream) -> None:
        limit = self.settings.max_stream_duration_s
        if limit is not None and time.time() - stream.created > limit:
            self.table.forget(stream.id, "closed")
            raise StreamGone(
                f"stream_id: stream {stream.id!r} ended: it reached the maximum stream "
                f"duration of {limit:g} s (max_stream_duration_s); open a new one",
                location="stream_id",
            )

    async def step(
        self,
        stream_id: str,
        source: FramesInput | TensorInput,
        *,
        horizon: int = 1,
        return_tensor: bool = False,
    ) -> tuple[Stream, Prediction]:
        """Feed a stream its next frames; the ``horizon`` frames that follow everything it
        has seen, as ``/predict`` answers them."""
        with tracing.span("stream.state.load"):
            stream = await self.get(stream_id)
        model = self.model_of(stream)
        model.task.steps(horizon)
        size = len(source.data) if isinstance(source, TensorInput) else sum(map(len, source.frames))
        with tracing.span("decode"):
            if size <= INLINE_TENSOR_CHARS:  # a frame or a few: a thread hop costs more
                frames = decode_stream_frames(model.task.spec, source)
            else:
                frames = await anyio.to_thread.run_sync(
                    decode_stream_frames, model.task.spec, source
                )
        predicted, seconds = await self.step_arrays(stream, frames, horizon)
        return stream, await model.task.answer(predicted, seconds, return_tensor=return_tensor)

    async def step_arrays(
        self, stream: Stream, frames: NDArray[np.float32], horizon: int
    ) -> tuple[NDArray[np.float32], float]:
        """Checked frames (k, H, W, C) into ``stream``: its next ``horizon`` frames and the
        seconds in the model. Requests on one stream run one at a time, in arrival order."""
        model = self.model_of(stream)
        async with stream.lock:
            if self.table.streams.get(stream.id) is not stream:  # closed while waiting
                self.model_of(stream)  # 410 when its version went meanwhile
                raise UnknownStream(self.table.why_unknown(stream.id), location="stream_id")
            self._check_age(stream)
            # The lease, and the stored state when another replica stepped it last.
            with tracing.span("stream.state.load", store=self.keeper.kind):
                begun = await self.keeper.begin(stream.id, stream.fence)
            try:
                if begun.gone:
                    self.table.forget(stream.id)
                    raise UnknownStream(self.table.why_unknown(stream.id), location="stream_id")
                if begun.fresher is not None:  # another replica stepped it meanwhile
                    self._adopt(begun.fresher, into=stream)
                stream.touch()
                try:
                    result = await self._run(model, StepWork(frames, horizon, stream.state))
                finally:
                    stream.touch()
                after = to_stored(stream, result.state)
                after.frames_seen += len(frames)
                after.steps += len(frames) + horizon - 1
                with tracing.span("stream.state.store", store=self.keeper.kind):
                    fence = await self.keeper.commit(begun.lease, after)
            except BaseException:
                await self.keeper.abort(begun.lease)
                if begun.lease is not None:
                    stream.fence = -1  # read the store's state again before the next step
                raise
            # Only once the store has it (with ``step``): a request answered with an error
            # leaves its stream as it was, here and in the store.
            stream.state, stream.fence = result.state, fence or stream.fence
            stream.frames_seen, stream.steps = after.frames_seen, after.steps
            self._score(model, stream, frames, result.predicted)
        return result.predicted, result.seconds

    def _score(
        self,
        model: StreamModel,
        stream: Stream,
        frames: NDArray[np.float32],
        predicted: NDArray[np.float32],
    ) -> None:
        """Live accuracy: this request's first frame scores what the stream predicted for
        it last time; its first prediction waits for the next request's first frame."""
        scored = stream.accuracy.score(frames[0])
        if scored is not None:
            mse, copy = scored
            self.metrics.prediction_mse.labels(model.name, model.version).observe(mse)
            self.metrics.copy_last_mse.labels(model.name, model.version).observe(copy)
        stream.accuracy.expect(predicted[0], frames[-1])

    def rolls_out_from_state(self, name: str, horizon: int, asked: str | None) -> bool:
        """Whether ``/predict`` rolls this request out from state: when asked to (422 if
        the model serves no streams), or by default for a horizon > 1 where the model
        serves streams (``DEFAULT_ROLLOUT``)."""
        if asked == "state":
            self.model(name)
            return True
        if asked == "window":
            return False
        return DEFAULT_ROLLOUT == "state" and horizon > 1 and name in self.models

    async def predict(
        self,
        name: str,
        source: FramesInput | TensorInput,
        *,
        horizon: int,
        return_tensor: bool,
    ) -> Prediction:
        """``/predict`` rolled out from state: the T frames given, answered as ``/predict``."""
        model = self.model(name)
        model.task.steps(horizon)
        sequence = await anyio.to_thread.run_sync(model.task.decode, source)
        predicted, seconds = await self.rollout(name, sequence, horizon)
        return await model.task.answer(predicted, seconds, return_tensor=return_tensor)

    async def rollout(
        self, name: str | None, sequence: NDArray[np.float32], horizon: int
    ) -> tuple[NDArray[np.float32], float]:
        """``/predict``'s roll-out from state: the sequence (T, H, W, C) stepped from a zero
        state, then each prediction fed back as one more step (T + horizon - 1 steps)."""
        model = self.model(name)
        result = await self._run(model, StepWork(sequence, horizon, model.session.zero_state()))
        return result.predicted, result.seconds

    async def _run(self, model: StreamModel, work: StepWork) -> StepResult:
        timeout = self.settings.request_timeout_s
        job = model.batcher.submit(work, timeout)
        try:
            result = await model.batcher.wait(job, timeout)
        except BaseException:
            # A step that ran although its client left (or its deadline passed) is counted
            # as work done, but the stream keeps its state (step_arrays replaces it only on
            # success): a request answered with an error leaves its stream as it was.
            if job.future.done() and not job.future.cancelled() and not job.future.exception():
                self.metrics.steps.labels(model.name).inc(work.steps)
            raise
        self.metrics.steps.labels(model.name).inc(work.steps)
        return result
