"""The client distribution alone: a new venv holding only ``pip install clients/python``
(and what it pulls in: httpx, NumPy, Pillow) runs ``convlstm-predict`` and
``NextFrameClient`` against the real server on loopback. Run from a folder outside the
repository, so nothing of the server's packages can be imported by accident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import COMMITTED_MODEL, REPO, run_server

CLIENT = REPO / "clients" / "python"
# pip's messages when the package index cannot be reached (an offline machine).
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the client package installed (wheels from pip's cache when it has
    them); its bin/ folder."""
    root = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(CLIENT)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and any(marker in result.stderr for marker in OFFLINE):
        pytest.skip(f"pip cannot reach the package index: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr
    return bin_dir


def run_in(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CONVLSTM_"))}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_venv_holds_the_client_and_nothing_of_the_server(
    client_venv: Path, tmp_path: Path
) -> None:
    code = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
        "('convlstm_client', 'httpx', 'numpy', 'PIL', 'service', 'convlstm_card', "
        "'model_export', 'fastapi', 'onnxruntime', 'pydantic')}))"
    )
    result = run_in(client_venv, tmp_path, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert {m for m, present in found.items() if present} == {
        "convlstm_client",
        "httpx",
        "numpy",
        "PIL",
    }
    assert (client_venv / "convlstm-predict").exists()
    assert sys.prefix not in str(client_venv)


def test_convlstm_predict_and_the_client_against_a_live_server(
    client_venv: Path, tmp_path: Path
) -> None:
    frames = np.zeros((15, 40, 40, 3), dtype=np.uint8)
    for t in range(15):
        frames[t, 15:25, 2 + 2 * t : 12 + 2 * t] = (255, 153, 51)
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"frame_{i:02d}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
    np.save(tmp_path / "frames.npy", frames)

    with run_server(COMMITTED_MODEL) as server:
        out = tmp_path / "predictions"
        cli = run_in(
            client_venv,
            tmp_path,
            "convlstm-predict",
            *paths,
            "--url",
            server.url,
            "--horizon",
            "2",
            "--out",
            str(out),
        )
        assert cli.returncode == 0, cli.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            "pred_01.png",
            "pred_02.png",
            "sequence.gif",
        ]
        assert Image.open(out / "pred_01.png").size == (40, 40)

        code = (
            "import json, sys, numpy as np; from convlstm_client import NextFrameClient; "
            "c = NextFrameClient(sys.argv[1]); r = c.ready(); "
            "p = c.predict(np.load('frames.npy'), horizon=3); "
            "print(json.dumps({'model': r.model, 'shape': list(p.frames.shape), "
            "'dtype': str(p.frames.dtype), 'low': float(p.frames.min()), "
            "'high': float(p.frames.max())}))"
        )
        api = run_in(client_venv, tmp_path, "python", "-c", code, server.url)
        assert api.returncode == 0, api.stderr
        answer = json.loads(api.stdout)
        refused = run_in(
            client_venv,
            tmp_path,
            "convlstm-predict",
            *paths,
            "--url",
            server.url,
            "--horizon",
            "99",
        )
    assert answer == {
        "model": "convlstm",
        "shape": [3, 40, 40, 3],
        "dtype": "float32",
        "low": answer["low"],
        "high": answer["high"],
    }
    assert 0.0 <= answer["low"] <= answer["high"] <= 1.0
    # The server's refusal comes through the client's own error type, exit status 1.
    assert refused.returncode == 1
    assert "HTTP 422" in refused.stderr
