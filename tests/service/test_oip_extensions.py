"""Triton's model configuration, statistics, repository and sequence extensions and the
raw binary body, over REST and gRPC, against one real server process on loopback, spoken
to by Triton's own clients (``tritonclient.http`` and ``tritonclient.grpc``, unchanged):
both protocols give the same answers from the one data plane, and everything is behind
the API key."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.config import Settings
from tests.service.conftest import REPO, RunningServer, asgi_client, run_server, running_app
from tests.service.test_repository import CNN, SEQ, add_version
from tests.service.test_server import value

KEY = "extensions-test-key"
HEADERS = {"x-api-key": KEY}  # lower case: gRPC metadata keys are
DEFAULT = "convlstm"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed ConvLSTM (with its step graph: it serves streams) as a flat file,
    and ``seq/1`` (a copy of the CNN-LSTM, no streams) beside it."""
    root = tmp_path_factory.mktemp("extensions")
    for suffix in (".onnx", ".json", ".step.onnx", ".plain.onnx"):
        shutil.copy(REPO / "models" / f"{DEFAULT}{suffix}", root / f"{DEFAULT}{suffix}")
    add_version(root, SEQ, 1)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    env = {
        "CONVLSTM_API_KEY": KEY,
        "CONVLSTM_MODEL_CONTROL": "explicit",
        "CONVLSTM_WARMUP_RUNS": "0",
    }
    with run_server(repository / f"{DEFAULT}.onnx", env=env) as running:
        assert running.grpc_address is not None
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers=HEADERS) as c:
        yield c


@pytest.fixture(scope="module")
def tc_grpc(server: RunningServer) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(str(server.grpc_address)) as c:
        yield c


@pytest.fixture(scope="module")
def tc_http(server: RunningServer) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 15, 40, 40, 3), dtype=np.float32)


def grpc_infer(tc: triton_grpc.InferenceServerClient, x: np.ndarray, model: str = DEFAULT) -> Any:
    tensor = triton_grpc.InferInput("frames", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tc.infer(model, [tensor], headers=HEADERS).as_numpy("next_frame")


def json_infer(http: httpx.Client, x: np.ndarray, model: str = DEFAULT) -> np.ndarray:
    body = {"inputs": [{"name": "frames", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip
    answer = http.post(f"/v2/models/{model}/infer", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_server_metadata_lists_the_extensions_served(
    http: httpx.Client, tc_grpc: triton_grpc.InferenceServerClient
) -> None:
    rest = http.get("/v2").json()["extensions"]
    for name in ("binary_tensor_data", "model_repository", "model_configuration", "statistics"):
        assert name in rest
    assert "sequence" in rest  # the ConvLSTM serves streams
    served = tc_grpc.get_server_metadata(headers=HEADERS, as_json=True)["extensions"]
    assert served == rest


def test_config_is_the_same_over_both_protocols(
    tc_http: triton_http.InferenceServerClient, tc_grpc: triton_grpc.InferenceServerClient
) -> None:
    rest = tc_http.get_model_config(DEFAULT, headers=HEADERS)
    assert rest["name"] == DEFAULT and rest["max_batch_size"] >= 1
    assert rest["input"] == [{"name": "frames", "data_type": "TYPE_FP32", "dims": [15, 40, 40, 3]}]
    assert rest["output"][0]["dims"] == [40, 40, 3]
    over_grpc = tc_grpc.get_model_config(DEFAULT, headers=HEADERS, as_json=True)["config"]
    assert over_grpc["input"][0]["dims"] == ["15", "40", "40", "3"]  # protobuf JSON: int64
    assert over_grpc["name"] == rest["name"] and over_grpc["platform"] == rest["platform"]
    assert tc_http.get_model_config(SEQ, "1", headers=HEADERS)["name"] == SEQ


def stats_of(tc: triton_http.InferenceServerClient, name: str) -> dict[str, Any]:
    (entry,) = tc.get_inference_statistics(name, headers=HEADERS)["model_stats"]
    return dict(entry)


def test_statistics_count_both_protocols_from_one_source(
    http: httpx.Client,
    tc_http: triton_http.InferenceServerClient,
    tc_grpc: triton_grpc.InferenceServerClient,
    server: RunningServer,
) -> None:
    before = stats_of(tc_http, SEQ)
    started_ms = time.time() * 1000
    json_infer(http, frames(2), SEQ)  # one request of two items
    grpc_infer(tc_grpc, frames(1), SEQ)
    # A client that leaves before its answer: the request fails (cancelled).
    with pytest.raises(httpx.TimeoutException):
        body = {"inputs": [{"name": "frames", "shape": [1, 15, 40, 40, 3], "datatype": "FP32",
                            "data": frames(1).reshape(-1).tolist()}]}  # fmt: skip
        http.post(f"/v2/models/{SEQ}/infer", json=body, timeout=httpx.Timeout(60, read=0.001))
    deadline = time.monotonic() + 30
    while (after := stats_of(tc_http, SEQ))["inference_stats"]["fail"]["count"] == before[
        "inference_stats"
    ]["fail"]["count"]:
        assert time.monotonic() < deadline, "the abandoned request was never counted"
        time.sleep(0.05)

    grown = after["inference_stats"]
    was = before["inference_stats"]
    assert grown["success"]["count"] - was["success"]["count"] == 2
    assert grown["fail"]["count"] - was["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 3
    # Every item that ran waited in the queue and was computed once.
    assert grown["queue"]["count"] == grown["compute_infer"]["count"] >= 3
    assert grown["compute_infer"]["ns"] > was["compute_infer"]["ns"]
    assert grown["success"]["ns"] > was["success"]["ns"]
    assert after["execution_count"] >= before["execution_count"] + 2
    assert sum(int(b["compute_infer"]["count"]) for b in after["batch_stats"]) == int(
        after["execution_count"]
    )
    assert int(after["last_inference"]) >= started_ms - 1000

    # gRPC reads the same object: the same counts (protobuf JSON writes uint64 as text).
    over_grpc = tc_grpc.get_inference_statistics(SEQ, headers=HEADERS, as_json=True)
    (entry,) = over_grpc["model_stats"]
    assert int(entry["inference_count"]) == after["inference_count"]
    assert int(entry["inference_stats"]["success"]["count"]) == grown["success"]["count"]
    assert int(entry["inference_stats"]["fail"]["count"]) == grown["fail"]["count"]

    every = http.get("/v2/models/stats").json()["model_stats"]
    assert sorted(e["name"] for e in every) == [DEFAULT, SEQ]
    assert http.get(f"/v2/models/{SEQ}/versions/1/stats").json()["model_stats"][0]["name"] == SEQ


def test_sequence_steps_are_counted(
    tc_grpc: triton_grpc.InferenceServerClient, tc_http: triton_http.InferenceServerClient
) -> None:
    before = stats_of(tc_http, DEFAULT)["inference_stats"]["success"]["count"]
    x = frames(1)[0, :2][None]  # two frames, one request on a new sequence
    tensor = triton_grpc.InferInput("frames", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    tc_grpc.infer(
        DEFAULT, [tensor], sequence_id=77, sequence_start=True, sequence_end=True, headers=HEADERS
    )
    assert stats_of(tc_http, DEFAULT)["inference_stats"]["success"]["count"] == before + 1


def test_unknown_model_or_version_in_config_and_stats(
    http: httpx.Client, tc_grpc: triton_grpc.InferenceServerClient
) -> None:
    for path in ("/v2/models/nope/stats", "/v2/models/nope/config", f"/v2/models/{SEQ}/versions/9/stats",
                 f"/v2/models/{SEQ}/versions/9/config"):  # fmt: skip
        answer = http.get(path)
        assert answer.status_code == 404, path
        assert "nope" in answer.json()["error"] or "9" in answer.json()["error"]
    with pytest.raises(InferenceServerException) as err:
        tc_grpc.get_inference_statistics("nope", headers=HEADERS)
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_everything_is_behind_the_api_key(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        for path in ("/v2/models/stats", f"/v2/models/{DEFAULT}/stats", f"/v2/models/{DEFAULT}/config",
                     f"/v2/models/{DEFAULT}/versions/1/config"):  # fmt: skip
            assert bare.get(path).status_code == 401, path
        raw = bare.post(
            f"/v2/models/{DEFAULT}/infer",
            content=frames(1).tobytes(),
            headers={"Inference-Header-Content-Length": "0"},
        )
        assert raw.status_code == 401
    with triton_grpc.InferenceServerClient(str(server.grpc_address)) as tc:
        calls: list[Callable[[], Any]] = [
            lambda: tc.get_inference_statistics(DEFAULT),
            lambda: tc.get_model_repository_index(),
            lambda: tc.unload_model(SEQ),
        ]
        for call in calls:
            with pytest.raises(InferenceServerException) as err:
                call()
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"


def test_raw_binary_body_equals_the_json_answer(http: httpx.Client) -> None:
    x = frames(2, seed=3)
    raw = http.post(
        f"/v2/models/{DEFAULT}/infer",
        content=x.tobytes(),
        headers={
            "Inference-Header-Content-Length": "0",
            "Content-Type": "application/octet-stream",
        },
    )
    assert raw.status_code == 200, raw.text
    out = raw.json()["outputs"][0]
    assert out["shape"] == [2, 40, 40, 3]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, json_infer(http, x), atol=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "0 bytes is not a whole number of 'frames' items"),
        (
            b"\0" * 1001,
            "1001 bytes is not a whole number of 'frames' items of shape [15, 40, 40, 3]",
        ),
    ],
)
def test_raw_binary_body_of_the_wrong_size(http: httpx.Client, body: bytes, message: str) -> None:
    answer = http.post(
        f"/v2/models/{DEFAULT}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert 400 <= answer.status_code < 500
    assert message in answer.json()["error"]


def test_repository_rpcs(
    tc_grpc: triton_grpc.InferenceServerClient, tc_http: triton_http.InferenceServerClient
) -> None:
    index = tc_grpc.get_model_repository_index(headers=HEADERS, as_json=True)["models"]
    assert {(m["name"], m.get("state")) for m in index} >= {(DEFAULT, "READY"), (SEQ, "READY")}
    assert tc_grpc.get_model_repository_index(headers=HEADERS, as_json=True) == {
        "models": [dict(m) for m in index]
    }
    tc_grpc.unload_model(SEQ, headers=HEADERS)
    assert not tc_http.is_model_ready(SEQ, headers=HEADERS)
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(tc_grpc, frames(1), SEQ)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    tc_grpc.load_model(SEQ, headers=HEADERS)
    assert tc_grpc.is_model_ready(SEQ, headers=HEADERS)
    # A model sent in the request is refused, with REST's message; the default model
    # cannot be unloaded.
    with pytest.raises(InferenceServerException) as err:
        tc_grpc.load_model(SEQ, config='{"max_batch_size": 2}', headers=HEADERS)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "parameters.config: a model sent in the request is not supported" in str(err.value)
    with pytest.raises(InferenceServerException) as err:
        tc_grpc.unload_model(DEFAULT, headers=HEADERS)
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    with pytest.raises(InferenceServerException) as err:
        tc_grpc.load_model("nope", headers=HEADERS)
    assert err.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.anyio
async def test_a_server_with_no_streams_omits_sequence() -> None:
    """Only a server whose models serve streams lists ``sequence`` (in process: the
    CNN-LSTM alone serves none)."""
    settings = Settings(model_path=CNN, warmup_runs=0, serve_model_dir=False)
    async with running_app(settings) as app, asgi_client(app) as client:
        extensions = (await client.get("/v2")).json()["extensions"]
    assert "sequence" not in extensions and "statistics" in extensions


def test_a_cancelled_grpc_call_fails_and_frees_its_queued_jobs(
    http: httpx.Client,
    tc_http: triton_http.InferenceServerClient,
    tc_grpc: triton_grpc.InferenceServerClient,
) -> None:
    """An explicit cancel (not a deadline): counted as a failed request at once, and the
    jobs it left in the queue are dropped when a worker reaches them, not run."""
    before = stats_of(tc_http, DEFAULT)["inference_stats"]["fail"]["count"]
    # Two calls of a full batch each (the default maximum, 8; the message limit admits no
    # more): the first runs, the second waits in the queue and is cancelled there.
    tensor = triton_grpc.InferInput("frames", [8, 15, 40, 40, 3], "FP32")
    tensor.set_data_from_numpy(frames(8))
    answered: list[Any] = []
    first = tc_grpc.async_infer(
        DEFAULT, [tensor], callback=lambda result, error: answered.append(error), headers=HEADERS
    )
    call = tc_grpc.async_infer(DEFAULT, [tensor], callback=lambda r, e: None, headers=HEADERS)
    deadline = time.monotonic() + 30
    while not value(http.get("/metrics").text, "convlstm_queue_depth", model=DEFAULT):
        assert time.monotonic() < deadline, "the call's jobs never queued"
        time.sleep(0.01)
    call.cancel()
    while stats_of(tc_http, DEFAULT)["inference_stats"]["fail"]["count"] == before:
        assert time.monotonic() < deadline, "the cancelled call was never counted"
        time.sleep(0.05)
    while not value(
        http.get("/metrics").text,
        "convlstm_dropped_requests_total",
        model=DEFAULT,
        reason="client_gone",
    ):
        assert time.monotonic() < deadline, "the cancelled call's queued jobs were run"
        time.sleep(0.05)
    assert value(http.get("/metrics").text, "convlstm_queue_depth", model=DEFAULT) == 0
    np.testing.assert_equal(grpc_infer(tc_grpc, frames(1)).shape, (1, 40, 40, 3))
    assert answered == [None]  # the first call was answered
    del first
