"""KServe's own gRPC client (``kserve.InferenceGRPCClient``, unchanged) against the real
server process on loopback: health, inference with raw and typed contents equal to the
HTTP answer, a sequence fed a frame at a time equal to the windowed answer, and the
status codes of bad calls. KServe cannot share this project's venv, so the client runs
in the KServe venv (``make kserve-env``) through ``tests/service/kserve_grpc.py``."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server
from tests.service.test_kserve_types import KSERVE_PYTHON

KEY = "kserve-grpc-key"
DRIVER = Path(__file__).with_name("kserve_grpc.py")
SHAPE = [2, 15, 40, 40, 3]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    if not KSERVE_PYTHON.exists():
        pytest.skip(f"no KServe venv at {KSERVE_PYTHON.parent.parent}: `make kserve-env` builds it")
    env = {
        "CONVLSTM_API_KEY": KEY,
        "CONVLSTM_SERVE_MODEL_DIR": "false",
        "CONVLSTM_WARMUP_RUNS": "0",
    }
    with run_server(COMMITTED_MODEL, env=env) as running:
        yield running


def drive(server: RunningServer, x: np.ndarray) -> dict[str, Any]:
    given = {
        "address": server.grpc_address,
        "key": KEY,
        "model": "convlstm",
        "frames": base64.b64encode(x.astype("<f4").tobytes()).decode(),
        "shape": list(x.shape),
    }
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(DRIVER)],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def decoded(text: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4").reshape(shape)


def test_kserve_grpc_client_against_the_server(server: RunningServer) -> None:
    x = np.random.default_rng(7).random(SHAPE, dtype=np.float32)
    got = drive(server, x)
    assert got["live"] and got["ready"] and got["model_ready"]

    with httpx.Client(base_url=server.url, timeout=120, headers={"X-API-Key": KEY}) as http:

        def over_http(frames: np.ndarray) -> np.ndarray:
            body = {"inputs": [{"name": "frames", "shape": list(frames.shape), "datatype": "FP32",
                                "data": frames.reshape(-1).tolist()}]}  # fmt: skip
            answer = http.post("/v2/models/convlstm/infer", json=body)
            assert answer.status_code == 200, answer.text
            out = answer.json()["outputs"][0]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])

        expected = over_http(x)
        bad_shape = http.post(
            "/v2/models/convlstm/infer",
            json={
                "inputs": [
                    {
                        "name": "frames",
                        "shape": [2, 3, 40, 40, 3],
                        "datatype": "FP32",
                        "data": x[:, :3].reshape(-1).tolist(),
                    }
                ]
            },  # fmt: skip
        ).json()["error"]
    np.testing.assert_allclose(decoded(got["raw"], [2, 40, 40, 3]), expected, atol=1e-6)
    np.testing.assert_allclose(decoded(got["typed"], [2, 40, 40, 3]), expected, atol=1e-6)
    # 15 single-frame steps of one sequence end where the windowed answer does.
    np.testing.assert_allclose(
        decoded(got["sequence_last"], [1, 40, 40, 3]), expected[:1], atol=1e-5
    )

    errors = got["errors"]
    assert errors["no_key"][0] == "UNAUTHENTICATED"
    assert errors["unknown_model"][0] == "NOT_FOUND" and "nope" in errors["unknown_model"][1]
    assert errors["bad_shape"] == ["INVALID_ARGUMENT", bad_shape]  # HTTP's very message
    assert errors["ended_sequence"][0] == "NOT_FOUND"
