"""The real server on the simulated device: the serving path against a fast accelerator
whose speed and cost of a change of shape are known, on every CPU run.

The bounds are looser than ``make bench``'s targets (``bench/sim.py``): this machine is
shared and small. What they must show holds by a wide margin: the server keeps the
device busy, and sessions per batch bucket remove the collapse a change of batch size
causes on one session.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import wrk
from bench.load import LoadResult, closed_loop
from bench.workload import oip_binary_request
from tests.service.conftest import COMMITTED_MODEL, run_server, start_failure

BATCH_MS, ITEM_MS, MAX_BATCH, CLIENTS = 80.0, 2.0, 8, 8
IDEAL_RPS = CLIENTS / ((BATCH_MS + ITEM_MS * MAX_BATCH) / 1000.0)  # 83.3
SECONDS = 4.0


def env(change_ms: float, pad: str = "auto") -> dict[str, str]:
    return {
        "CONVLSTM_PROVIDER": "simulated",
        "CONVLSTM_SIMULATED_BATCH_MS": str(BATCH_MS),
        "CONVLSTM_SIMULATED_ITEM_MS": str(ITEM_MS),
        "CONVLSTM_SIMULATED_SHAPE_CHANGE_MS": str(change_ms),
        "CONVLSTM_MAX_BATCH_SIZE": str(MAX_BATCH),
        "CONVLSTM_PAD_BATCHES": pad,
        "CONVLSTM_SERVE_MODEL_DIR": "false",
        "CONVLSTM_ACCESS_LOG": "false",
    }


def load(url: str, clients: int) -> LoadResult:
    x = np.zeros((1, 15, 40, 40, 3), np.float32)
    body, headers = oip_binary_request("frames", "next_frame", x)
    path = "/v2/models/convlstm/infer"
    if wrk.available():
        return wrk.run(url, body, headers, connections=clients, seconds=SECONDS, path=path)
    return closed_loop(
        url,
        body,
        concurrency=clients,
        max_requests=2000,
        max_seconds=SECONDS,
        path=path,
        headers=headers,
    )


@pytest.fixture(scope="module")
def with_buckets() -> dict[str, object]:
    """The bucketed server under a 300 ms change cost: readiness, log, and its rates."""
    with run_server(COMMITTED_MODEL, env=env(300.0), ready_within=120) as server:
        ready = server.client().get("/readyz").json()
        one = load(server.url, 1)
        many = load(server.url, CLIENTS)
        return {"ready": ready, "log": server.output(), "one": one, "many": many}


def test_readiness_and_the_log_say_the_device_is_simulated(with_buckets: dict[str, object]) -> None:
    ready = with_buckets["ready"]
    assert isinstance(ready, dict)
    assert ready["provider"] == "simulated" and ready["requested_provider"] == "simulated"
    assert ready["served"][0]["batch_buckets"] == [1, 2, 4, 8]
    assert "answers are not predictions" in str(with_buckets["log"])


def test_the_server_keeps_the_simulated_device_busy(with_buckets: dict[str, object]) -> None:
    one, many = with_buckets["one"], with_buckets["many"]
    assert isinstance(one, LoadResult) and isinstance(many, LoadResult)
    assert one.ok > 0 and many.ok > 0 and not many.transport_errors
    assert one.percentile(50) <= BATCH_MS + ITEM_MS + 40.0
    assert many.throughput >= 0.5 * IDEAL_RPS, many.summary()


def test_one_session_collapses_where_buckets_do_not() -> None:
    # 12 clients over a max batch of 8, with no wait for the cohort, run as batches of
    # 8 and 4 in turn: every run changes the batch size, which costs one session 300 ms
    # under its lock each time, and costs a session per bucket nothing.
    rates = {}
    for pad in ("auto", "off"):
        settings = {**env(300.0, pad=pad), "CONVLSTM_BATCH_COHORT_WAIT": "0"}
        with run_server(COMMITTED_MODEL, env=settings, ready_within=120) as server:
            buckets = server.client().get("/readyz").json()["served"][0]["batch_buckets"]
            assert buckets == ([] if pad == "off" else [1, 2, 4, 8])
            rates[pad] = load(server.url, 12)
    assert rates["off"].throughput <= 0.5 * rates["auto"].throughput, (
        rates["off"].summary(),
        rates["auto"].summary(),
    )


def test_a_simulated_device_is_refused_where_the_image_forbids_it() -> None:
    code, out = start_failure(
        COMMITTED_MODEL, env={**env(0.0), "CONVLSTM_SIMULATED_ALLOWED": "false"}
    )
    assert code != 0
    assert "CONVLSTM_SIMULATED_ALLOWED" in out
