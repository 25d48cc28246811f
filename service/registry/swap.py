"""The swap's last step: a retired version waits for the requests that may still hold it
and for its queue, then stops, and its memory goes back to the system; and the metrics
that follow what serves."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

import anyio

from service.metrics import Metrics
from service.registry.loading import ServedModel

log = logging.getLogger("service.registry")


async def wait_until_drained(
    retired: list[ServedModel], busy: Callable[[], bool], grace_s: float
) -> None:
    """Until ``busy()`` is false (no request that began before the switch is still
    being answered) and no retired version has work queued or running; ``grace_s`` at
    most."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (
        busy() or any(m.runner.scheduler.queued or m.runner.scheduler.running for m in retired)
    ):
        await asyncio.sleep(0.01)


def release_free_memory() -> None:
    """Hand the heap pages a released session freed back to the system. glibc keeps
    freed memory in its per-thread arenas for reuse, so without this the RSS after an
    unload stays where it was and repeated loads fragment it (bench/swap.py measures
    it). A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def release(
    retired: list[ServedModel],
    *,
    busy: Callable[[], bool],
    grace_s: float,
    metrics: Metrics,
    versions: dict[str, dict[str, ServedModel]],
    unloading: dict[tuple[str, str], ServedModel | None],
) -> None:
    """Wait (``wait_until_drained``), then stop each retired version and close its
    session; ``unloading`` lists it until its memory is handed back. ``versions`` is what
    serves now: a model's info metric stays while another entry has the same labels."""
    await wait_until_drained(retired, busy, grace_s)
    keys: list[tuple[str, str]] = []
    while retired:
        model = retired.pop()
        await model.runner.stop()
        # Its memory goes back now, by reference counting; the runner and scheduler
        # around it (small, and referring to each other) are left to the collector.
        model.runner.session.close()
        unpublish_metrics(metrics, versions, model)
        metrics.model_loads.labels(model.info.name, "unloaded").inc()
        key = (model.info.name, model.info.version)
        if unloading.get(key) is model:
            # Listed as unloading until its memory is handed back, but no longer held.
            unloading[key] = None
            keys.append(key)
        del model
    await anyio.to_thread.run_sync(release_free_memory)
    for key in keys:
        if key in unloading and unloading[key] is None:
            del unloading[key]
        log.info("model %s %s unloaded", *key)


def point_queue_gauge(metrics: Metrics, name: str, served: ServedModel | None) -> None:
    """The queue gauge follows the version a request naming none gets (``served``)."""
    gauge = metrics.queue_depth
    if served is None:
        try:
            gauge.remove(name)
        except KeyError:
            pass
        return
    scheduler = served.runner.scheduler
    gauge.labels(name).set_function(lambda: scheduler.queued)


def unpublish_metrics(
    metrics: Metrics, versions: dict[str, dict[str, ServedModel]], model: ServedModel
) -> None:
    """Drop ``model``'s info metric unless a version still served has the same labels."""
    info = model.info
    labels = (info.name, info.version, info.sha256, info.provider)
    still = any(
        (m.info.name, m.info.version, m.info.sha256, m.info.provider) == labels
        for served in versions.values()
        for m in served.values()
    )
    if not still:
        try:
            metrics.model_info.remove(*labels)
        except KeyError:
            pass
