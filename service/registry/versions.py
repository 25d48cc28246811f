"""Versions: which of a name's versions the policy serves, which one a request naming
none gets, the rows of the repository index, and the poll loop that rescans the
directory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from service.config import Settings
from service.errors import ModelLoadError
from service.model_repository import ModelSource, version_order
from service.registry.loading import ServedModel

log = logging.getLogger("service.registry")

T = TypeVar("T")


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index, as Triton's repository extension answers it."""

    name: str
    version: str
    state: str
    """``READY``, ``UNLOADING`` or ``UNAVAILABLE``."""
    reason: str


class PublishListener(Protocol):
    """What follows the version a model serves by default (the streams'
    ``StreamVersions``): told before and when the registry switches it."""

    async def prepare(self, name: str, served: ServedModel) -> None:
        """``served`` is about to become ``name``'s default version: load what it needs.
        Must not raise; a failure is the listener's to report."""

    def publish(self, name: str, served: ServedModel | None) -> None:
        """``name`` now serves ``served`` by default (None: unloaded). Called in the same
        step of the event loop as the switch; must not await or raise."""

    def index_rows(self) -> list[IndexEntry]:
        """Versions no longer served that the listener still holds, for the index."""


def wanted_versions(
    settings: Settings, name: str, sources: dict[str, ModelSource]
) -> list[ModelSource]:
    """The versions the policy serves; ``ModelLoadError`` if a pin names none."""
    pin = settings.pinned_versions.get(name)
    if pin is not None and pin not in sources:
        have = ", ".join(sorted(sources, key=version_order))
        raise ModelLoadError(f"{name}: pinned version {pin!r} is not in the directory ({have})")
    if settings.version_policy == "all":
        return [sources[v] for v in sorted(sources, key=version_order)]
    chosen = pin or max(sources, key=version_order)
    return [sources[chosen]]


def default_version(settings: Settings, name: str, served: dict[str, T]) -> str:
    """The version a request naming none gets: the pinned one when served, else the
    highest."""
    pin = settings.pinned_versions.get(name)
    return pin if pin is not None and pin in served else max(served, key=version_order)


async def poll(rescan: Callable[[], Awaitable[None]], interval_s: float) -> None:
    """``model_control=poll``: rescan every ``interval_s``. Plain mtime polling, as
    Triton's ``--repository-poll-secs``: it works on every filesystem (network and
    container volumes included, where change notifications may never come) and costs
    one ``stat`` per file per interval."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await rescan()
        except Exception:
            log.exception("rescan of the model directory failed")
