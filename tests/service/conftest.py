"""Fixtures for the service: a tiny real tf2onnx export, and the real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, process: subprocess.Popen[str], url: str, log: IO[str]) -> None:
        self.process = process
        self.url = url
        self._log = log

    def output(self) -> str:
        """Everything the server has logged so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def run_server(
    model: Path, *args: str, env: dict[str, str] | None = None, ready_within: float = 60.0
) -> Iterator[RunningServer]:
    """``python -m service`` on a free loopback port, until /readyz answers 200."""
    port = free_port()
    # A file, not a pipe: nobody reads a pipe while the server runs, and a full one
    # would block the server's logging.
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--model", str(model), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited with {process.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready within {ready_within} s")
            time.sleep(0.2)
        yield RunningServer(process, url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


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
