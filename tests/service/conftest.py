"""Fixtures for the service, in two rings: the app in this process (``create_app`` over
httpx's ASGI transport, lifespan and all) for routes and errors, and the real server
process for start-up, drain, load and everything that needs a socket. Both serve real
models: the committed ones, and a tiny real tf2onnx export."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bench.server import Server, free_port, serve
from service.app import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "models" / "convlstm.onnx"
TINY_FRAMES = 4


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-frame, one-layer ConvLSTM, exported by the project's own tf2onnx path
    (with its parity check and card), so the service is tested on a real export."""
    from model_export.export.frame_models import export
    from model_export.frames.model import build_convlstm

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
        env={**os.environ, "CONVLSTM_GRPC_PORT": "0", **(env or {})},
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


# -- in process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """``create_app(settings)`` with its lifespan run: the models loaded, then drained."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """A client that calls ``app`` in this process. Unexpected errors are answered as the
    server would answer them (500), not raised into the test."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=60)


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    """The committed models, as the real server serves them, without warm-up runs."""
    return Settings(model_path=COMMITTED_MODEL, warmup_runs=0)


@pytest.fixture(scope="module")
async def app(app_settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(app_settings) as running:
        yield running


@pytest.fixture
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as client:
        yield client
