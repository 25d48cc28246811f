"""The swap's last step: a retired version waits for the requests that may still hold it
and for its queue, and its memory goes back to the system."""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

from service.registry.loading import ServedModel


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
