"""Fixtures for the service: a tiny real tf2onnx export, and the real server process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from bench.server import Server, free_port, serve

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "models" / "convlstm.onnx"
TINY_FRAMES = 4


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-frame, one-layer ConvLSTM, exported by the project's own tf2onnx path
    (with its parity check and card), so the service is tested on a real export."""
    from model_export.export import export
    from model_export.model import build_convlstm

    checkpoint = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    build_convlstm(frames=TINY_FRAMES, filters=(4,)).save(checkpoint)
    return export(checkpoint).onnx_path


# The same launcher as the benchmarks: the real process on a free loopback port.
RunningServer = Server


def run_server(
    model: Path, *args: str, env: dict[str, str] | None = None, ready_within: float = 60.0
) -> AbstractContextManager[RunningServer]:
    """``python -m service`` on a free loopback port, until /readyz answers 200."""
    return serve(model, *args, env=env, ready_within=ready_within)


def start_failure(model: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a server that is expected not to start; its exit code and output."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port()), "--model", str(model), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """The committed ConvLSTM served by the real process."""
    with run_server(COMMITTED_MODEL) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
