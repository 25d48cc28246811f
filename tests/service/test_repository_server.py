"""The model repository against the real server, spoken to by Triton's own client
(``tritonclient[http]``): the index, load, unload and per-version readiness; a swap
under a bounded closed-loop load that must drop nothing; and SIGHUP's rescan."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench.swap import ClosedLoop, request_for, wait_released
from tests.service.conftest import RunningServer, run_server
from tests.service.test_repository import CNN, SEQ, add_version

DEFAULT = "convlstm"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model in Triton's layout (``convlstm/1``), and ``seq/1`` beside it."""
    root = tmp_path_factory.mktemp("repository")
    add_version(root, DEFAULT, 1)
    add_version(root, SEQ, 1)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    env = {"CONVLSTM_MODEL_CONTROL": "explicit", "CONVLSTM_WARMUP_RUNS": "0"}
    with run_server(repository / DEFAULT, env=env) as running:
        yield running


@pytest.fixture
def tc(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


def eventually(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def infer_version(tc: triton.InferenceServerClient, name: str, version: str = "") -> str:
    x = np.zeros((1, 15, 40, 40, 3), np.uint8)
    inp = triton.InferInput("frames", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=True)
    answered: str = tc.infer(name, [inp], model_version=version).get_response()["model_version"]
    return answered


def test_index_load_unload_and_readiness_through_tritonclient(
    tc: triton.InferenceServerClient, server: RunningServer, repository: Path
) -> None:
    assert tc.get_model_repository_index() == [
        {"name": DEFAULT, "version": "1", "state": "READY", "reason": ""},
        {"name": SEQ, "version": "1", "state": "READY", "reason": ""},
    ]
    assert tc.is_model_ready(SEQ, "1") and not tc.is_model_ready(SEQ, "2")
    add_version(repository, SEQ, 2)
    tc.load_model(SEQ)
    assert tc.is_model_ready(SEQ, "2") and infer_version(tc, SEQ) == "2"
    assert infer_version(tc, SEQ, "2") == "2"
    eventually(lambda: not tc.is_model_ready(SEQ, "1"))

    add_version(repository, SEQ, 3, broken="sha256")
    with pytest.raises(InferenceServerException, match="is for sha256 0000"):
        tc.load_model(SEQ)
    assert tc.is_model_ready(SEQ, "2") and infer_version(tc, SEQ) == "2"
    assert not tc.is_model_ready(SEQ, "3")

    tc.unload_model(SEQ)
    eventually(lambda: not tc.is_model_ready(SEQ))
    with pytest.raises(InferenceServerException, match="default model"):
        tc.unload_model(DEFAULT)
    assert tc.is_model_ready(DEFAULT)
    with server.client() as client:
        metrics = client.get("/metrics").text
    assert f'convlstm_model_loads_total{{model="{SEQ}",outcome="failed"}} 1.0' in metrics


def test_a_swap_under_load_drops_nothing(
    tc: triton.InferenceServerClient, server: RunningServer, repository: Path
) -> None:
    """Eight clients (at most 1,000 requests) while the default model moves from
    version 1 to 2 and then 3, 40 answers before each swap and after the last: every
    answer is a 200, and each version answered some."""
    body, headers = request_for(CNN)
    load = ClosedLoop(server.url, DEFAULT, body, headers, concurrency=8, max_requests=1000)

    def forty_more() -> None:
        enough = len(load.answers) + 40
        eventually(lambda: len(load.answers) >= enough)

    with load.running(), server.client() as client:
        for version in (2, 3):
            forty_more()
            add_version(repository, DEFAULT, version)
            assert client.post(f"/v2/repository/models/{DEFAULT}/load").status_code == 200
            wait_released(client)
        forty_more()
    assert {a.status for a in load.answers} == {200} and load.transport_errors == 0
    assert {a.version for a in load.answers} == {"1", "2", "3"}
    assert tc.get_model_repository_index()[0] == {
        "name": DEFAULT,
        "version": "3",
        "state": "READY",
        "reason": "",
    }


def test_sighup_rescans_the_served_models(
    tc: triton.InferenceServerClient, server: RunningServer, repository: Path
) -> None:
    add_version(repository, DEFAULT, 4)
    assert not tc.is_model_ready(DEFAULT, "4")
    os.kill(server.process.pid, signal.SIGHUP)
    eventually(lambda: tc.is_model_ready(DEFAULT, "4"))
    assert infer_version(tc, DEFAULT) == "4"
    assert server.process.poll() is None
