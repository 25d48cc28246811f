"""The registry's pieces alone, without a model: the version policy and the default
version (``versions.py``), the poll loop, and the wait before a retired version is
released (``swap.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.config import Settings
from service.errors import ModelLoadError
from service.model_repository import ModelSource
from service.registry.loading import ServedModel
from service.registry.swap import wait_until_drained
from service.registry.versions import default_version, poll, wanted_versions
from tests.service.conftest import COMMITTED_MODEL


def sources(*versions: str) -> dict[str, ModelSource]:
    return {
        v: ModelSource("m", v, Path(f"/models/m/{v}/model.onnx"), (0, 0, 0, 0)) for v in versions
    }


def settings(**fields: Any) -> Settings:
    return Settings(model_path=COMMITTED_MODEL, **fields)


def test_latest_serves_the_highest_version_by_number_not_by_text() -> None:
    wanted = wanted_versions(settings(), "m", sources("2", "10", "9"))
    assert [s.version for s in wanted] == ["10"]


def test_a_pin_picks_its_version_and_all_serves_every_one_in_order() -> None:
    pinned = settings(pinned_versions={"m": "2"})
    assert [s.version for s in wanted_versions(pinned, "m", sources("2", "10"))] == ["2"]
    every = settings(version_policy="all")
    assert [s.version for s in wanted_versions(every, "m", sources("10", "2", "9"))] == [
        "2",
        "9",
        "10",
    ]


def test_a_pin_to_a_missing_version_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match=r"pinned version '3' is not in the directory"):
        wanted_versions(settings(pinned_versions={"m": "3"}), "m", sources("1", "2"))


def test_the_default_version_is_the_pin_when_served_else_the_highest() -> None:
    served = {"1": "one", "2": "two", "10": "ten"}
    assert default_version(settings(), "m", served) == "10"
    assert default_version(settings(pinned_versions={"m": "2"}), "m", served) == "2"
    assert default_version(settings(pinned_versions={"m": "7"}), "m", served) == "10"


def retired_model(queued: int = 0, running: int = 0) -> ServedModel:
    scheduler = SimpleNamespace(queued=queued, running=running)
    return cast(ServedModel, SimpleNamespace(runner=SimpleNamespace(scheduler=scheduler)))


def test_release_waits_for_earlier_requests_and_the_queue() -> None:
    model = retired_model(queued=1)
    busy = [True]

    async def main() -> float:
        async def finish() -> None:
            await asyncio.sleep(0.05)
            busy[0] = False
            await asyncio.sleep(0.05)
            cast(Any, model).runner.scheduler.queued = 0

        start = time.monotonic()
        helper = asyncio.ensure_future(finish())
        await wait_until_drained([model], lambda: busy[0], grace_s=5.0)
        await helper
        return time.monotonic() - start

    waited = asyncio.run(main())
    assert 0.09 <= waited < 2.0


def test_release_gives_up_waiting_after_the_grace() -> None:
    start = time.monotonic()
    asyncio.run(wait_until_drained([retired_model(running=1)], lambda: True, grace_s=0.1))
    assert 0.09 <= time.monotonic() - start < 2.0


def test_the_poll_loop_rescans_and_survives_a_failed_rescan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def rescan() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("directory gone for a moment")

    async def main() -> None:
        task = asyncio.ensure_future(poll(rescan, 0.01))
        while calls < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    assert calls >= 3
    assert "rescan of the model directory failed" in caplog.text
