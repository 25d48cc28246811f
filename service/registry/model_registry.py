"""The one owner of the served models' lifetimes: loads them (the default first), looks
them up by name and version for every protocol front, swaps versions while serving, and
drains them on shutdown.

A served model is a runner (session, scheduler, metrics) and the task adapter its card
chose. Loading one checks the file, its card and the task against each other and warms
the session up before the model counts as served.

Swapping without loss: a new version loads and warms up beside the old one (memory for
both meanwhile); then the tables that ``lookup`` reads are replaced in one step of the
event loop, so every request sees either the old version or the new one. The old one is
released only once every HTTP request that began before the switch has ended (a request
may hold it between its lookup and its queueing) and its queue is empty. A load that
fails changes nothing for that name: the old version keeps serving, and the error is
logged, counted and returned to the control call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import anyio

from service.config import Settings
from service.errors import (
    GpuUnavailable,
    ModelControlOff,
    ModelInUse,
    ModelLoadError,
    ModelNotLoaded,
    NotReady,
    UnknownModel,
)
from service.metrics import Metrics
from service.model_repository import ModelSource, scan, version_order
from service.registry.loading import FailedModel, ServedModel, load_model
from service.registry.swap import point_queue_gauge, release, unpublish_metrics
from service.registry.versions import (
    IndexEntry,
    PublishListener,
    default_version,
    poll,
    wanted_versions,
)

log = logging.getLogger("service.registry")


class ModelRegistry:
    """The served models by name and version, and whether the service takes new work."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # name -> the version a request naming no version gets; the default model first.
        self.models: dict[str, ServedModel] = {}
        # name -> version -> model: every version served.
        self.versions: dict[str, dict[str, ServedModel]] = {}
        # Names with no version served, and why.
        self.failed: dict[str, FailedModel] = {}
        path = settings.model_path
        self.default_name = path.name if path.is_dir() else path.stem
        self.ready = False
        self.not_ready_reason = "the model is loading"
        self.draining = False
        # The last failed load of each (name, version), while the name may still serve.
        self.load_errors: dict[tuple[str, str], str] = {}
        # Versions replaced or unloaded whose queue is still being drained (None once
        # stopped, until its memory is back).
        self.unloading: dict[tuple[str, str], ServedModel | None] = {}
        self._sources: dict[tuple[str, str], ModelSource] = {}
        # The directory as last scanned, and each failed name's files when it failed, so
        # that a poll retries a failed model only once its files change.
        self._known: dict[str, dict[str, ModelSource]] = {}
        self._failed_stamps: dict[str, tuple[ModelSource, ...]] = {}
        self._unloaded: set[str] = set()
        # Set when a load failed because ``require_gpu`` found no GPU provider: start-up
        # then stays up, not ready, instead of exiting (see ``load``).
        self.gpu_unavailable: str | None = None
        # HTTP requests being answered, by the epoch they began in; a swap starts a new
        # epoch and releases the old version once the earlier epochs are empty.
        self._epoch = 0
        self._requests: Counter[int] = Counter()
        self._control = asyncio.Lock()
        # Told before and when a model's default version changes (the streams).
        self.listeners: list[PublishListener] = []
        self._background: set[asyncio.Task[None]] = set()

    # -- requests ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests being answered, counted by the HTTP layer; a drain waits for them."""
        return sum(self._requests.values())

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        # ``registry.in_flight += 1`` as before epochs existed: counted in the current
        # epoch; a decrease ends the oldest requests first. ``request_began`` and
        # ``request_ended`` say precisely which request ended.
        delta = value - self.in_flight
        if delta > 0:
            self._requests[self._epoch] += delta
        for epoch in sorted(self._requests):
            if delta >= 0:
                break
            taken = min(-delta, self._requests[epoch])
            self._requests[epoch] -= taken
            delta += taken
            if self._requests[epoch] <= 0:
                del self._requests[epoch]

    def request_began(self) -> int:
        """Count a request in; the token to give ``request_ended``."""
        self._requests[self._epoch] += 1
        return self._epoch

    def request_ended(self, token: int) -> None:
        self._requests[token] -= 1
        if self._requests[token] <= 0:
            del self._requests[token]

    def _busy_before(self, epoch: int) -> bool:
        return any(e <= epoch for e in self._requests)

    # -- start-up and shutdown ----------------------------------------------------------

    async def load(self) -> None:
        """Load, start and publish every model the settings name, the default first.

        The default model failing stops start-up: those already started are stopped and
        the error raised. Another model failing is logged once (file and reason) and
        listed in ``failed``, unless ``exit_on_model_error`` makes it stop start-up too.
        With ``model_control=poll`` the directory is then watched.

        One exception: ``require_gpu`` with no GPU provider. A GPU that is missing stays
        missing when the process restarts, so exiting would only make a restart loop (a
        container restarted forever, a pod in CrashLoopBackOff). The process stays up
        instead, alive on ``/healthz`` and not ready on ``/readyz``, with the reason there
        and in the log, until it is stopped.
        """
        found = await anyio.to_thread.run_sync(self._scan)
        names = [self.default_name, *sorted(n for n in found if n != self.default_name)]
        for name in names:
            if name not in found or not found[name]:
                reason = f"{self.settings.model_path}: no numbered version with a model.onnx"
                log.error("cannot serve: %s", reason)
                await self.close()
                raise ModelLoadError(reason)
            problem = await self._sync(name, found[name])
            if problem is None:
                continue
            if self.gpu_unavailable is not None:
                log.error("not ready, and staying so until stopped: %s", problem)
                await self.close()
                self.not_ready_reason = problem
                return
            if name == self.default_name or self.settings.exit_on_model_error:
                log.error("cannot serve: %s", problem)
                await self.close()
                raise ModelLoadError(problem)
            log.error("model %s not served (skipped): %s", self._file_of(name), problem)
        self._known = found
        self.ready = True
        self.metrics.ready.set(1)
        if self.settings.model_control == "poll":
            self._spawn(self._poll())

    async def close(self) -> None:
        """Stop polling and every model's scheduler; whatever is still queued is refused."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for versions in self.versions.values():
            for model in versions.values():
                await model.runner.stop()
        for retired in self.unloading.values():
            if retired is not None:
                await retired.runner.stop()

    # -- look-up ------------------------------------------------------------------------

    @property
    def default(self) -> ServedModel | None:
        """The default model, once loaded."""
        return self.models.get(self.default_name)

    def lookup(self, name: str | None, version: str | None = None) -> ServedModel:
        """The model served as ``name`` (the default model when None), in ``version``
        (the one it serves by default when None)."""
        if not self.models:
            raise NotReady(f"not ready: {self.not_ready_reason}")
        model = self.models.get(name or self.default_name)
        if model is None:
            raise self.unknown(name)
        if version is None or version == "":
            return model
        served = self.versions.get(model.info.name, {})
        chosen = served.get(version)
        if chosen is None:
            raise UnknownModel(
                f"model_version: {model.info.name!r} has no version {version!r} served; "
                f"served: {', '.join(sorted(served, key=version_order))}",
                location="model_version",
            )
        return chosen

    def unknown(self, name: str | None) -> UnknownModel:
        failed = self.failed.get(name or "")
        if failed is not None:
            return UnknownModel(
                f"model: {name!r} failed to load and is not served ({failed.reason}); "
                f"served: {', '.join(self.models)}",
                location="model",
            )
        if name in self._unloaded:
            return UnknownModel(
                f"model: {name!r} was unloaded; served: {', '.join(self.models)}",
                location="model",
            )
        return UnknownModel(
            f"model: no model named {name!r}; served: {', '.join(self.models)}",
            location="model",
        )

    def version_state(self, name: str, version: str) -> str | None:
        """``READY``, ``UNLOADING`` or ``UNAVAILABLE`` for a version the repository knows
        of; None for one it does not."""
        for entry in self.index():
            if entry.name == name and entry.version == version:
                return entry.state
        return None

    @property
    def fully_ready(self) -> bool:
        """Ready, and with ``strict_readiness`` also no model failed to load."""
        return self.ready and not (self.settings.strict_readiness and self.failed)

    @property
    def readiness_problem(self) -> str:
        """Why ``fully_ready`` is false."""
        if not self.ready:
            return self.not_ready_reason
        names = ", ".join(self.failed)
        return f"strict readiness: model(s) failed to load: {names}"

    def begin_drain(self, reason: str) -> None:
        """Readiness off and new work refused; what is in flight carries on."""
        self.draining, self.ready, self.not_ready_reason = True, False, reason
        self.metrics.ready.set(0)

    # -- the repository -------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model and version the repository knows of, and its state."""
        rows: list[IndexEntry] = []
        names = sorted(set(self.versions) | set(self._known) | set(self.failed) | self._unloaded)
        for name in names:
            served = self.versions.get(name, {})
            for version in sorted(served, key=version_order):
                rows.append(IndexEntry(name, version, "READY", ""))
            if ready_only:
                continue
            for (n, version), _ in sorted(self.unloading.items()):
                if n == name and version not in served:
                    rows.append(IndexEntry(name, version, "UNLOADING", "being drained"))
            listed = {r.version for r in rows if r.name == name} | set(served)
            for row in (r for listener in self.listeners for r in listener.index_rows()):
                if row.name == name and row.version not in listed:
                    rows.append(row)
            for (n, version), reason in sorted(self.load_errors.items()):
                if n == name and version not in served:
                    rows.append(IndexEntry(name, version, "UNAVAILABLE", reason))
            if not served and not any(r.name == name for r in rows):
                failed = self.failed.get(name)
                reason = failed.reason if failed else "unloaded"
                rows.append(IndexEntry(name, "", "UNAVAILABLE", reason))
        return rows

    async def load_named(self, name: str) -> None:
        """The control call ``load``: serve ``name`` as the directory holds it now (a new
        or changed version loads beside the old one, then replaces it). Raises
        ``ModelNotLoaded`` with the reason when it cannot, leaving what served."""
        self._allow_control()
        async with self._control:
            found = await anyio.to_thread.run_sync(self._scan)
            self._known = found
            if not found.get(name):
                raise UnknownModel(
                    f"model: no model named {name!r} in the repository "
                    f"{self.settings.model_path.parent}; it has: {', '.join(sorted(found))}",
                    location="model",
                )
            self._unloaded.discard(name)
            problem = await self._sync(name, found[name])
        if problem is not None:
            raise ModelNotLoaded(f"failed to load {name!r}: {problem}", location="model")

    async def unload_named(self, name: str) -> None:
        """The control call ``unload``: stop serving every version of ``name``; each is
        released once its queue has drained."""
        self._allow_control()
        if name == self.default_name:
            raise ModelInUse(
                f"model: {name!r} is the default model (CONVLSTM_MODEL_PATH) and cannot be "
                "unloaded; load a new version of it instead",
                location="model",
            )
        async with self._control:
            if name not in self.versions and name not in self.failed:
                raise self.unknown(name)
            self.failed.pop(name, None)
            self._failed_stamps.pop(name, None)
            for key in [k for k in self.load_errors if k[0] == name]:
                del self.load_errors[key]
            self._unloaded.add(name)
            self._publish(name, {})

    async def rescan(self) -> None:
        """Bring the served models in line with the directory: with ``poll``, every name
        in it (new ones load, changed ones swap, vanished ones unload); with
        ``explicit``, only the names served now. ``none`` ignores it."""
        mode = self.settings.model_control
        if mode == "none" or not self.ready:
            log.info("rescan ignored (model_control=%s, ready=%s)", mode, self.ready)
            return
        async with self._control:
            found = await anyio.to_thread.run_sync(self._scan)
            self._known = found
            names = set(self.versions) | (set(found) - self._unloaded if mode == "poll" else set())
            for name in sorted(names):
                sources = found.get(name, {})
                if not sources:
                    if name == self.default_name:
                        log.error("the default model's files are gone; it keeps serving")
                    else:
                        log.info("model %s left the directory: unloading it", name)
                        self._publish(name, {})
                    continue
                stamps = tuple(sorted(sources.values(), key=lambda s: s.version))
                if self._failed_stamps.get(name) == stamps:
                    continue  # failed before, files unchanged: no retry, no log spam
                problem = await self._sync(name, sources, only_changes=True)
                if problem is not None:
                    self._failed_stamps[name] = stamps
                    log.error("model %s: rescan kept what served: %s", name, problem)

    def _allow_control(self) -> None:
        mode = self.settings.model_control
        if mode != "explicit":
            raise ModelControlOff(
                f"model control is {mode!r}: load and unload need "
                "CONVLSTM_MODEL_CONTROL=explicit"
                + ("; with poll the directory decides what serves" if mode == "poll" else "")
            )

    # -- loading and swapping -------------------------------------------------------------

    def _scan(self) -> dict[str, dict[str, ModelSource]]:
        return scan(self.settings.model_path, whole_directory=self.settings.serve_model_dir)

    def _file_of(self, name: str) -> str:
        failed = self.failed.get(name)
        return failed.file if failed else name

    async def _sync(
        self, name: str, sources: dict[str, ModelSource], only_changes: bool = False
    ) -> str | None:
        """Serve ``name``'s wanted versions from ``sources``: load those new or changed,
        keep those unchanged, then publish them all at once. None when done; the reason
        when a version failed, in which case nothing changes for ``name``."""
        try:
            wanted = wanted_versions(self.settings, name, sources)
        except ModelLoadError as err:
            return self._record_failure(name, "", str(next(iter(sources.values())).path), err)
        current = self.versions.get(name, {})
        new: dict[str, ServedModel] = {}
        loaded: list[ServedModel] = []
        for source in wanted:
            old = current.get(source.version)
            if old is not None and self._sources.get((name, source.version)) == source:
                new[source.version] = old
                continue
            try:
                model = await self._load_one(source)
            except Exception as err:
                if isinstance(err, GpuUnavailable):
                    self.gpu_unavailable = err.message
                for model in loaded:  # all or nothing: the name keeps what it had
                    await model.runner.stop()
                    model.runner.session.close()
                    self._unpublish_metrics(model)
                self._point_queue_gauge(name)
                return self._record_failure(name, source.version, str(source.path), err)
            loaded.append(model)
            new[source.version] = model
        if only_changes and not loaded and set(new) == set(current):
            return None
        chosen = new[default_version(self.settings, name, new)]
        for listener in self.listeners:
            await listener.prepare(name, chosen)
        for source in wanted:
            self._sources[(name, source.version)] = source
            self.load_errors.pop((name, source.version), None)
        self.failed.pop(name, None)
        self._failed_stamps.pop(name, None)
        self._publish(name, new)
        return None

    async def _load_one(self, source: ModelSource) -> ServedModel:
        start = time.perf_counter()
        model = await anyio.to_thread.run_sync(
            load_model,
            self.settings,
            self.metrics,
            source.path,
            source.name,
            # A flat file is served as its card says; a numbered directory as numbered.
            source.version if source.path.parent.name == source.version else None,
        )
        await model.runner.start()
        self.metrics.model_load_seconds.labels(source.name).observe(time.perf_counter() - start)
        self.metrics.model_loads.labels(source.name, "loaded").inc()
        return model

    def _record_failure(self, name: str, version: str, file: str, err: Exception) -> str:
        # A ModelLoadError names the file; anything else (a warm-up run the graph
        # refuses) is named here.
        reason = err.message if isinstance(err, ModelLoadError) else f"{file}: {err!r}"
        self.metrics.model_loads.labels(name, "failed").inc()
        self.metrics.model_load_failures.labels(name).inc()
        self.load_errors[(name, version)] = reason
        if name not in self.versions:
            self.failed[name] = FailedModel(name, file, reason)
        return reason

    def _publish(self, name: str, new: dict[str, ServedModel]) -> None:
        """Make ``new`` what ``name`` serves, in one step (no await), then drain and
        release the versions it replaces, in the background."""
        current = self.versions.get(name, {})
        retired = [m for v, m in current.items() if new.get(v) is not m]
        if new:
            self.versions[name] = new
            self.models[name] = new[default_version(self.settings, name, new)]
        else:
            self.versions.pop(name, None)
            self.models.pop(name, None)
        self._point_queue_gauge(name)
        for listener in self.listeners:
            listener.publish(name, self.models.get(name))
        if retired:
            for model in retired:
                self.unloading[(name, model.info.version)] = model
            epoch, self._epoch = self._epoch, self._epoch + 1
            self._spawn(self._release(retired, epoch))

    async def _release(self, retired: list[ServedModel], epoch: int) -> None:
        """Wait for the requests that began before the switch and for the retired
        versions' queues, then stop them and let their sessions go. Waits at most
        ``shutdown_grace_s``; what is queued after that is refused."""
        await release(
            retired,
            busy=lambda: self._busy_before(epoch),
            grace_s=self.settings.shutdown_grace_s,
            metrics=self.metrics,
            versions=self.versions,
            unloading=self.unloading,
        )

    def _point_queue_gauge(self, name: str) -> None:
        point_queue_gauge(self.metrics, name, self.models.get(name))

    def _unpublish_metrics(self, model: ServedModel) -> None:
        unpublish_metrics(self.metrics, self.versions, model)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _poll(self) -> None:
        await poll(self.rescan, self.settings.repository_poll_s)
