"""The model repository, in process: the directory's two layouts, versions chosen per
request, load and unload through the Open Inference Protocol's repository extension, a
bad version that never replaces a serving one, and polling. Real onnxruntime sessions of
the committed ``cnn_lstm`` graph (fast to load), copied into a temporary repository."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import weakref
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from convlstm_card import card_path, sha256_of
from service.config import Settings
from service.model_repository import scan, version_order
from tests.service.conftest import REPO, asgi_client, running_app
from tests.service.test_server import value

pytestmark = pytest.mark.anyio
CNN = REPO / "models" / "cnn_lstm.onnx"
FLAT = "cnn_lstm"
SEQ = "seq"
INPUT = np.zeros((1, 15, 40, 40, 3), np.uint8)


def add_version(root: Path, name: str, version: int, *, broken: str | None = None) -> Path:
    """``root/name/version/model.onnx`` and its card: a copy of the committed cnn_lstm, or
    with ``broken="sha256"`` a card for another file, ``broken="graph"`` bytes no
    onnxruntime reads under a card that matches them."""
    directory = root / name / str(version)
    directory.mkdir(parents=True)
    graph = directory / "model.onnx"
    card = json.loads(card_path(CNN).read_text())
    if broken == "graph":
        graph.write_bytes(b"not an onnx graph" * 10)
        card["sha256"] = sha256_of(graph)
    else:
        shutil.copy(CNN, graph)
    if broken == "sha256":
        card["sha256"] = "0" * 64
    card_path(graph).write_text(json.dumps(card))
    return graph


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A flat carded file (the default model) and one numbered version of ``seq``."""
    shutil.copy(CNN, tmp_path / f"{FLAT}.onnx")
    shutil.copy(card_path(CNN), tmp_path / f"{FLAT}.json")
    add_version(tmp_path, SEQ, 1)
    return tmp_path


def settings(repo: Path, **fields: Any) -> Settings:
    fields.setdefault("model_control", "explicit")
    return Settings(model_path=repo / f"{FLAT}.onnx", warmup_runs=0, **fields)


@asynccontextmanager
async def serving(s: Settings) -> Any:
    async with running_app(s) as app, asgi_client(app) as client:
        yield app, client


def infer_body() -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "frames",
                "shape": list(INPUT.shape),
                "datatype": "UINT8",
                "data": INPUT.reshape(-1).tolist(),
            }
        ]
    }


async def infer(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.post(path, json=infer_body())


async def index(client: httpx.AsyncClient, **body: Any) -> list[dict[str, str]]:
    r = await client.post("/v2/repository/index", json=body or None)
    assert r.status_code == 200, r.text
    rows: list[dict[str, str]] = r.json()
    return rows


async def drained(client: httpx.AsyncClient, within: float = 20.0) -> list[dict[str, str]]:
    """The index once no version is being drained any more."""
    async with asyncio.timeout(within):
        while True:
            rows = await index(client)
            if not any(row["state"] == "UNLOADING" for row in rows):
                return rows
            await asyncio.sleep(0.02)


def metric(app: FastAPI, name: str, **labels: str) -> float:
    from prometheus_client import generate_latest

    text = generate_latest(app.state.registry.metrics.registry).decode()
    return value(text, name, **labels) or 0.0


def test_scan_reads_flat_files_and_numbered_versions(tmp_path: Path) -> None:
    shutil.copy(CNN, tmp_path / "a.onnx")
    shutil.copy(card_path(CNN), tmp_path / "a.json")
    for v in (1, 2, 10):
        add_version(tmp_path, SEQ, v)
    (tmp_path / SEQ / "0").mkdir()  # Triton's versions start at 1
    (tmp_path / SEQ / "latest").mkdir()
    (tmp_path / SEQ / "3").mkdir()  # no model.onnx: not a version
    shutil.copy(CNN, tmp_path / f"{SEQ}.onnx")  # the directory of that name wins
    shutil.copy(card_path(CNN), tmp_path / f"{SEQ}.json")
    (tmp_path / "bare.onnx").write_bytes(b"")  # no card: not served unless the default
    found = scan(tmp_path / "a.onnx", whole_directory=True)
    assert {n: sorted(v, key=version_order) for n, v in found.items()} == {
        "a": ["1.0.0"],
        SEQ: ["1", "2", "10"],
    }
    assert max(found[SEQ], key=version_order) == "10"
    assert found[SEQ]["10"].path == tmp_path / SEQ / "10" / "model.onnx"
    # A model directory can be the default model itself.
    assert list(scan(tmp_path / SEQ, whole_directory=False)) == [SEQ]


async def test_load_swaps_to_the_new_version_and_releases_the_old(repo: Path) -> None:
    async with serving(settings(repo)) as (app, client):
        assert await index(client) == [
            {"name": FLAT, "version": "1.0.0", "state": "READY", "reason": ""},
            {"name": SEQ, "version": "1", "state": "READY", "reason": ""},
        ]
        sessions = app.state.registry.models[SEQ].runner.session.graph.onnx_sessions
        old = [weakref.ref(s) for s in sessions]
        del sessions
        add_version(repo, SEQ, 2)
        r = await client.post(f"/v2/repository/models/{SEQ}/load", json={})
        assert r.status_code == 200, r.text
        # The new version answers at once; the old one is released once drained.
        answer = await infer(client, f"/v2/models/{SEQ}/infer")
        assert answer.json()["model_version"] == "2"
        rows = await drained(client)
        assert old and all(r() is None for r in old)  # its sessions and memory are gone
        assert [r for r in rows if r["name"] == SEQ] == [
            {"name": SEQ, "version": "2", "state": "READY", "reason": ""}
        ]
        assert (await client.get(f"/v2/models/{SEQ}/versions/2/ready")).status_code == 200
        gone = await client.get(f"/v2/models/{SEQ}/versions/1/ready")
        assert gone.status_code == 404 and "no version '1' served; served: 2" in gone.text
        assert metric(app, "convlstm_model_loads_total", model=SEQ, outcome="loaded") == 2
        assert metric(app, "convlstm_model_loads_total", model=SEQ, outcome="unloaded") == 1
        assert metric(app, "convlstm_model_load_duration_seconds_count", model=SEQ) == 2
        info = app.state.registry.models[SEQ].info
        served = {"model": SEQ, "version": "2", "sha256": info.sha256, "provider": info.provider}
        assert metric(app, "convlstm_model_info", **served) == 1
        assert metric(app, "convlstm_model_info", **{**served, "version": "1"}) == 0


@pytest.mark.parametrize(
    ("broken", "words"), [("sha256", "is for sha256 0000"), ("graph", "cannot be loaded")]
)
async def test_a_bad_version_never_replaces_a_serving_one(
    repo: Path, broken: str, words: str
) -> None:
    async with serving(settings(repo)) as (app, client):
        add_version(repo, SEQ, 2, broken=broken)
        r = await client.post(f"/v2/repository/models/{SEQ}/load", json={})
        assert r.status_code == 400 and words in r.json()["error"], r.text
        answer = await infer(client, f"/v2/models/{SEQ}/infer")
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        rows = [r for r in await index(client) if r["name"] == SEQ]
        assert [(r["version"], r["state"]) for r in rows] == [("1", "READY"), ("2", "UNAVAILABLE")]
        assert words in rows[1]["reason"]
        assert (await client.get(f"/v2/models/{SEQ}/versions/2/ready")).status_code == 503
        assert metric(app, "convlstm_model_loads_total", model=SEQ, outcome="failed") == 1
        assert metric(app, "convlstm_model_load_failures_total", model=SEQ) == 1
        # Fixed on disk, the same version loads.
        shutil.rmtree(repo / SEQ / "2")
        add_version(repo, SEQ, 2)
        assert (await client.post(f"/v2/repository/models/{SEQ}/load")).status_code == 200
        assert (await infer(client, f"/v2/models/{SEQ}/infer")).json()["model_version"] == "2"


async def test_unload_and_load_again(repo: Path) -> None:
    async with serving(settings(repo)) as (_, client):
        r = await client.post(f"/v2/repository/models/{SEQ}/unload", json={"parameters": {}})
        assert r.status_code == 200, r.text
        ready = await client.get(f"/v2/models/{SEQ}/ready")
        assert ready.status_code == 404 and "was unloaded" in ready.text
        assert {"name": SEQ, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in (
            await drained(client)
        )
        assert await index(client, ready=True) == [
            {"name": FLAT, "version": "1.0.0", "state": "READY", "reason": ""}
        ]
        assert (await client.post(f"/v2/repository/models/{SEQ}/load")).status_code == 200
        assert (await client.get(f"/v2/models/{SEQ}/versions/1/ready")).status_code == 200


async def test_control_calls_are_refused_with_reasons(repo: Path) -> None:
    async with serving(settings(repo, model_control="none")) as (_, client):
        assert len(await index(client)) == 2  # the index answers in every mode
        r = await client.post(f"/v2/repository/models/{SEQ}/load")
        assert r.status_code == 403 and "CONVLSTM_MODEL_CONTROL=explicit" in r.json()["error"]
    async with serving(settings(repo, api_key="k")) as (_, client):
        assert (await client.post("/v2/repository/index")).status_code == 401
        client.headers["X-API-Key"] = "k"
        unload_default = await client.post(f"/v2/repository/models/{FLAT}/unload")
        assert unload_default.status_code == 409
        assert "default model" in unload_default.json()["error"]
        unknown = await client.post("/v2/repository/models/unet/load")
        assert unknown.status_code == 404 and "no model named 'unet'" in unknown.text
        sent = await client.post(
            f"/v2/repository/models/{SEQ}/load", json={"parameters": {"config": "{}"}}
        )
        assert sent.status_code == 422 and "parameters.config" in sent.json()["error"]
        bad_body = await client.post("/v2/repository/index", content=b"{")
        assert bad_body.status_code == 422 and "Invalid JSON" in bad_body.json()["error"]
        assert (await client.post(f"/v2/repository/models/{SEQ}/load")).status_code == 200


async def test_requests_choose_a_version_under_policy_all_with_a_pin(repo: Path) -> None:
    add_version(repo, SEQ, 2)
    s = settings(repo, version_policy="all", pinned_versions={SEQ: "1"})
    async with serving(s) as (_, client):
        meta = (await client.get(f"/v2/models/{SEQ}")).json()
        assert meta["versions"] == ["1", "2"]  # the pinned default first
        assert (await infer(client, f"/v2/models/{SEQ}/infer")).json()["model_version"] == "1"
        two = await infer(client, f"/v2/models/{SEQ}/versions/2/infer")
        assert two.status_code == 200 and two.json()["model_version"] == "2"
        assert (await client.get(f"/v2/models/{SEQ}/versions/2")).json()["versions"][0] == "2"
        tensor = {"data": base64.b64encode(INPUT[0].tobytes()).decode(), "dtype": "uint8"}
        frames = {
            "tensor": {**tensor, "shape": list(INPUT.shape[1:])},
            "model": SEQ,
            "model_version": "2",
        }
        predicted = await client.post("/predict", json=frames)
        assert predicted.status_code == 200 and predicted.json()["model_version"] == "2"
        missing = await client.post("/predict", json={**frames, "model_version": "7"})
        assert missing.status_code == 404
        assert missing.json()["error"]["location"] == "model_version"
        assert "served: 1, 2" in missing.json()["error"]["message"]


@pytest.fixture
def quick_poll(repo: Path) -> Iterator[Settings]:
    yield settings(repo, model_control="poll", repository_poll_s=0.05)


async def test_poll_follows_the_directory(repo: Path, quick_poll: Settings) -> None:
    async with serving(quick_poll) as (app, client):
        refused = await client.post(f"/v2/repository/models/{SEQ}/load")
        assert refused.status_code == 403 and "the directory decides" in refused.text

        async def until(check: Any, within: float = 20.0) -> list[dict[str, str]]:
            async with asyncio.timeout(within):
                while not check(rows := await drained(client)):
                    await asyncio.sleep(0.05)
            return rows

        add_version(repo, SEQ, 2)
        await until(
            lambda rows: (
                {"name": SEQ, "version": "2", "state": "READY", "reason": ""} in rows
                and all(r["version"] != "1" for r in rows)
            )
        )
        add_version(repo, "other", 1)
        await until(lambda rows: any(r["name"] == "other" for r in rows))
        add_version(repo, SEQ, 3, broken="sha256")
        await until(lambda rows: any(r["version"] == "3" for r in rows))
        await asyncio.sleep(0.3)  # several polls: a failed version is not retried
        assert metric(app, "convlstm_model_loads_total", model=SEQ, outcome="failed") == 1
        assert metric(app, "convlstm_model_load_failures_total", model=SEQ) == 1
        assert (await infer(client, f"/v2/models/{SEQ}/infer")).json()["model_version"] == "2"
        shutil.rmtree(repo / "other")
        await until(lambda rows: all(r["name"] != "other" for r in rows))
        assert (await client.get("/v2/models/other/ready")).status_code == 404


def test_repository_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLSTM_MODEL_CONTROL", "poll")
    monkeypatch.setenv("CONVLSTM_PINNED_VERSIONS", '{"convlstm": "2"}')
    s = Settings()
    assert (s.model_control, s.pinned_versions, s.version_policy) == (
        "poll",
        {"convlstm": "2"},
        "latest",
    )
    monkeypatch.setenv("CONVLSTM_MODEL_CONTROL", "always")
    with pytest.raises(ValueError, match="model_control"):
        Settings()


def test_requests_are_counted_by_epoch() -> None:
    """A swap waits only for the requests that began before it; the old ``in_flight``
    arithmetic still counts."""
    from service.metrics import Metrics
    from service.registry import ModelRegistry

    registry = ModelRegistry(Settings(), Metrics())
    before = registry.request_began()
    registry._epoch += 1  # what a swap does
    after = registry.request_began()
    assert registry.in_flight == 2 and registry._busy_before(before)
    registry.request_ended(before)
    assert not registry._busy_before(before) and registry.in_flight == 1
    registry.in_flight += 2
    registry.in_flight -= 3
    assert registry.in_flight == 0 and not registry._busy_before(after)


async def test_a_failed_load_under_policy_all_changes_no_version(repo: Path) -> None:
    """Version 1 rewritten and a broken version 2 added: the load fails as a whole, so
    the old version 1 keeps serving; once 2 is fixed, the same load brings both."""
    async with serving(settings(repo, version_policy="all")) as (app, client):
        registry = app.state.registry
        first = registry.versions[SEQ]["1"]
        shutil.rmtree(repo / SEQ / "1")
        add_version(repo, SEQ, 1)  # the same graph, rewritten: a new stamp
        add_version(repo, SEQ, 2, broken="graph")
        assert (await client.post(f"/v2/repository/models/{SEQ}/load")).status_code == 400
        assert registry.versions[SEQ] == {"1": first}
        shutil.rmtree(repo / SEQ / "2")
        add_version(repo, SEQ, 2)
        assert (await client.post(f"/v2/repository/models/{SEQ}/load")).status_code == 200
        assert set(registry.versions[SEQ]) == {"1", "2"}
        assert registry.versions[SEQ]["1"] is not first  # reloaded: its file changed
        assert [r["version"] for r in await drained(client) if r["name"] == SEQ] == ["1", "2"]
