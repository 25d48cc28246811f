"""Which step graph serves each model's streams while the registry swaps versions.

New streams open on the version a request naming none gets. A stream stays on the
version it opened with: when a load or a swap replaces that version while this server
holds streams of it, its step graph (not its window graph: the registry releases that as
for any swap) stays loaded for them, not offered to new streams, until the last of them
closes or expires. At most ``stream_retained_versions`` versions are kept so, in all;
past that the version retained longest is released and its streams answer 410 saying so.
An unload of the model ends its streams at once (410). The registry calls ``prepare``
before it publishes a model's new default version and ``published`` in the same step of
the event loop as the switch (``service.registry.versions.PublishListener``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from service.config import Settings
from service.errors import ModelLoadError
from service.registry import IndexEntry, ServedModel
from service.streams.batcher import StepBatcher
from service.streams.metrics import StreamMetrics
from service.streams.session import StepSession
from service.streams.table import REMEMBERED_IDS, Stream, StreamTable
from service.tasks.next_frame import NextFrameTask

log = logging.getLogger(__name__)

VersionKey = tuple[str, str, str]
"""A model's name, version and file sha256: the step graph a stream's state belongs to."""


@dataclass(frozen=True)
class StreamModel:
    """A served model that serves streams: its step graph, batcher and frame task."""

    name: str
    version: str
    sha256: str
    session: StepSession
    batcher: StepBatcher
    task: NextFrameTask

    @property
    def key(self) -> VersionKey:
        return (self.name, self.version, self.sha256)


def model_file(served: ServedModel) -> Path:
    """The ONNX file a served model was loaded from (its card names the step graph
    relative to it), in the flat layout and in a repository's NAME/VERSION/ alike."""
    return served.runner.session.path


def why_no_streams(model: ServedModel) -> str | None:
    """Why ``model`` cannot serve streams, or None when its card says it can."""
    card = model.info.card
    if not isinstance(model.task, NextFrameTask):
        return f"it is a {card.task} model, not a next-frame model"
    if card.stream is None:
        return (
            "it has no ConvLSTM state to keep: its card names no step graph (streams serve "
            "ConvLSTM stacks exported with one; python -m model_export step-graph)"
        )
    if not model.task.feeds_back:
        return "its predicted frame is not its input frame's size"
    return None


def key_of(stream: Stream) -> VersionKey:
    return (stream.model, stream.model_version, stream.sha256)


class StreamVersions:
    """The step graph each model's new streams get (``current``), those kept for the
    streams of replaced versions (``retained``, oldest first), and the streams ended by
    an unload or by the bound (``ended``: their 410 message)."""

    def __init__(self, settings: Settings, table: StreamTable, metrics: StreamMetrics) -> None:
        self.settings = settings
        self.table = table
        self.metrics = metrics
        self.current: dict[str, StreamModel] = {}
        self.unavailable: dict[str, str] = {}
        self.retained: OrderedDict[VersionKey, StreamModel] = OrderedDict()
        self.ended: OrderedDict[str, str] = OrderedDict()
        # name -> the step graph loaded for the version about to be published, or why none.
        self._prepared: dict[str, StreamModel | str] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    # -- look-up ------------------------------------------------------------------------

    def find(self, key: VersionKey) -> StreamModel | None:
        """The step graph of that model version, current or retained; None when gone."""
        current = self.current.get(key[0])
        if current is not None and current.key == key:
            return current
        return self.retained.get(key)

    def for_stored(self, name: str, version: str, sha256: str) -> StreamModel | None:
        """The step graph a stored stream of ``name`` is checked against: its own version
        where it is still loaded, else the current one (which then refuses it)."""
        return self.find((name, version, sha256)) or self.current.get(name)

    def all(self) -> list[StreamModel]:
        return [*self.current.values(), *self.retained.values()]

    def streams_of(self, key: VersionKey) -> list[Stream]:
        return [s for s in self.table.streams.values() if key_of(s) == key]

    def index_rows(self) -> list[IndexEntry]:
        """A row for each retained version, for the repository index."""
        rows = []
        for key, model in self.retained.items():
            newer = self.current.get(key[0])
            now = f"new streams use version {newer.version}" if newer else "new streams refused"
            held = len(self.streams_of(key))
            rows.append(
                IndexEntry(
                    model.name,
                    model.version,
                    "UNLOADING",
                    f"step graph kept for {held} open stream(s); {now}",
                )
            )
        return rows

    # -- loading and swapping -----------------------------------------------------------

    async def load(self, name: str, served: ServedModel) -> StreamModel | str:
        """``served``'s step graph, loaded, warmed up and batching; or why it serves no
        streams (logged; the model still serves everything else)."""
        reason = why_no_streams(served)
        path = model_file(served)
        spec = served.info.card.stream
        if reason is not None or spec is None:
            return reason or "its card names no step graph"
        assert isinstance(served.task, NextFrameTask)  # why_no_streams checked it
        try:
            session = await anyio.to_thread.run_sync(StepSession, path, spec, self.settings)
            await anyio.to_thread.run_sync(session.warm_up, self.settings.warmup_runs)
        except Exception as err:  # a step graph the warm-up refuses, too
            why = err.message if isinstance(err, ModelLoadError) else repr(err)
            log.error("model %s serves no streams: %s", name, why)
            return f"its step graph cannot be used ({why})"
        info = served.info
        batcher = StepBatcher(
            session.run,
            max_queue=self.settings.max_queue,
            max_batch=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
            cohort_wait=self.settings.batch_cohort_wait,
            on_batch=self._observe(name),
            span_attributes={
                "convlstm.model": name,
                "convlstm.model_version": info.version,
                "convlstm.provider": session.provider,
                "convlstm.graph": "step",
            },
        )
        batcher.start()
        log.info(
            "model %s %s serves streams: step graph %s, %d state bytes per stream",
            name,
            info.version,
            session.path.name,
            session.state_bytes,
        )
        return StreamModel(name, info.version, info.sha256, session, batcher, served.task)

    async def prepare(self, name: str, served: ServedModel) -> None:
        """Load the step graph of ``served``, the version ``name`` is about to serve by
        default, unless its streams run it already (current, or retained: a swap back)."""
        key = (name, served.info.version, served.info.sha256)
        ready = self.find(key)
        self._prepared[name] = ready if ready is not None else await self.load(name, served)

    def publish(self, name: str, served: ServedModel | None) -> None:
        """The registry switched ``name`` to ``served`` (None: unloaded). No await: this
        runs in the same step of the event loop as the registry's switch."""
        old = self.current.pop(name, None)
        staged = self._prepared.pop(name, None)
        if served is None:
            self.unavailable.pop(name, None)
            for key in [k for k in self.retained if k[0] == name]:
                self._end(self.retained.pop(key), self._unloaded_message)
            if old is not None:
                self._end(old, self._unloaded_message)
            return
        key = (name, served.info.version, served.info.sha256)
        if old is not None and old.key == key:
            staged = old  # the same version stays
        if isinstance(staged, StreamModel):
            if staged.key in self.retained:  # swapped back to a version kept for streams
                del self.retained[staged.key]
            self.current[name] = staged
            self.unavailable.pop(name, None)
            self.metrics.open.labels(name).set_function(self._counter(name))
        elif isinstance(staged, str):
            self.unavailable[name] = staged
        if old is not None and self.current.get(name) is not old:
            self._retire(old)

    def _retire(self, model: StreamModel) -> None:
        """A replaced version: kept while this server holds streams of it, within the
        bound (the oldest released first), else stopped now."""
        if not self.streams_of(model.key):
            self._stop(model)
            return
        self.retained[model.key] = model
        log.info(
            "model %s %s replaced: its step graph stays for %d open stream(s)",
            *model.key[:2],
            len(self.streams_of(model.key)),
        )
        while len(self.retained) > self.settings.stream_retained_versions:
            _, oldest = self.retained.popitem(last=False)
            self._end(oldest, self._bound_message)

    def release_idle(self) -> None:
        """Stop each retained version whose last stream here closed or expired."""
        for key in [k for k in self.retained if not self.streams_of(k)]:
            self._stop(self.retained.pop(key))

    def _end(self, model: StreamModel, message: Callable[[Stream, StreamModel], str]) -> None:
        """End every stream of ``model`` held here (each answers 410 with ``message``
        from now on), then stop it."""
        for stream in self.streams_of(model.key):
            self.table.forget(stream.id, "closed")
            self.ended[stream.id] = message(stream, model)
            while len(self.ended) > REMEMBERED_IDS:
                self.ended.popitem(last=False)
        self._stop(model)

    def _counter(self, name: str) -> Callable[[], float]:
        return lambda: sum(1 for s in self.table.streams.values() if s.model == name)

    def _observe(self, name: str) -> Callable[[list[int]], None]:
        def observe(sizes: list[int]) -> None:
            for size in sizes:
                self.metrics.batch_size.labels(name).observe(size)

        return observe

    def _unloaded_message(self, stream: Stream, model: StreamModel) -> str:
        return (
            f"stream_id: stream {stream.id!r} ended: its model {model.name!r} (version "
            f"{model.version}) was unloaded; open a new stream on a served model"
        )

    def _bound_message(self, stream: Stream, model: StreamModel) -> str:
        limit = self.settings.stream_retained_versions
        return (
            f"stream_id: stream {stream.id!r} was opened on model {model.name!r} version "
            f"{model.version}, which was unloaded: newer versions replaced it and at most "
            f"{limit} replaced version(s) stay loaded for open streams "
            "(stream_retained_versions); open a new stream"
        )

    def _stop(self, model: StreamModel) -> None:
        """Stop ``model``'s batcher and let its step graph go, in the background."""

        async def stop() -> None:
            await model.batcher.stop()
            model.session.graph.close()
            log.info("model %s %s: step graph released", model.name, model.version)

        task = asyncio.ensure_future(stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every batcher (current and retained) and wait for those being stopped."""
        for model in self.all():
            await model.batcher.stop()
        await asyncio.gather(*self._stopping, return_exceptions=True)
