"""Start-up: a real tiny tf2onnx export served end to end, and each start-up fault
giving one clear line and a non-zero exit; except a required GPU that is missing, which
leaves the server up and not ready."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from tests.service.conftest import (
    COMMITTED_MODEL,
    TINY_FRAMES,
    asgi_client,
    run_server,
    running_app,
    start_failure,
)

pytestmark = pytest.mark.slow


def test_serves_a_fresh_export_with_its_own_shape(tiny_model: Path) -> None:
    with run_server(tiny_model) as server, server.client() as client:
        ready = client.get("/readyz").json()
        assert (ready["model"], ready["input_shape"]) == ("tiny", ["N", TINY_FRAMES, 40, 40, 3])
        x = np.random.default_rng(0).integers(0, 256, (TINY_FRAMES, 40, 40, 3), dtype=np.uint8)
        tensor = {"data": base64.b64encode(x.tobytes()).decode(), "dtype": "uint8"}
        r = client.post("/predict", json={"tensor": {**tensor, "shape": list(x.shape)}})
        assert r.status_code == 200, r.text
        r = client.post("/predict", json={"tensor": {**tensor, "shape": [15, 40, 40, 3]}})
        assert r.status_code == 422
        assert f"expected [{TINY_FRAMES}, 40, 40, 3]" in r.json()["error"]["message"]


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "cannot serve:" in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def test_missing_model_file(tmp_path: Path) -> None:
    code, out = start_failure(tmp_path / "absent.onnx")
    assert code != 0
    assert "absent.onnx does not exist" in one_error_line(out)


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(COMMITTED_MODEL.read_bytes()[:5000])
    code, out = start_failure(bad)
    assert code != 0
    assert "corrupt.onnx cannot be loaded" in one_error_line(out)


def test_card_for_another_file(tmp_path: Path) -> None:
    model = tmp_path / "convlstm.onnx"
    shutil.copy(COMMITTED_MODEL, model)
    card = json.loads(COMMITTED_MODEL.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    model.with_suffix(".json").write_text(json.dumps(card))
    code, out = start_failure(model)
    assert code != 0
    assert "is for sha256 0000" in one_error_line(out)


def test_card_with_another_input_shape(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    shutil.copy(tiny_model, model)
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    card["inputs"][0]["shape"] = ["N", 15, 40, 40, 3]
    model.with_suffix(".json").write_text(json.dumps(card))
    code, out = start_failure(model)
    assert code != 0
    line = one_error_line(out)
    assert "states input shape ['N', 15, 40, 40, 3]" in line
    assert f"takes ['N', {TINY_FRAMES}, 40, 40, 3]" in line


@pytest.mark.anyio
async def test_required_gpu_missing_stays_up_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    """A GPU that is missing stays missing on a restart: the process stays alive and not
    ready with the reason, instead of exiting into a restart loop."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the refusal needs a machine without")
    settings = Settings(model_path=COMMITTED_MODEL, require_gpu=True, warmup_runs=0)
    with caplog.at_level(logging.ERROR, logger="service.registry"):
        async with running_app(settings) as app, asgi_client(app) as client:
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
            predict = await client.post("/v2/models/convlstm/infer", json={"inputs": []})
    assert alive.status_code == 200
    assert ready.status_code == 503
    message = ready.json()["error"]["message"]
    assert "a GPU provider is required but CPUExecutionProvider is in use" in message
    assert "no GPU provider is installed" in message
    assert predict.status_code == 503, predict.text
    lines = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_setting_is_refused_before_start() -> None:
    code, out = start_failure(COMMITTED_MODEL, env={"CONVLSTM_MAX_HORIZON": "zero"})
    assert code == 2
    assert "invalid setting max_horizon" in out
