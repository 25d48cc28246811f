"""Debian's ``redis-server`` and ``nginx`` for the stream tests: each started on a free
loopback port in a temporary directory (Redis writing nothing to disk, nginx with the
project's own ``deploy/nginx/nginx.conf``), stopped by its pid. Installed by
``make stream-tools`` (``make test`` depends on it); where one is missing its tests skip,
unless ``REQUIRE_STREAM_TOOLS=1`` (as ``.ci/run`` sets) makes that a failure."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from bench.redis_server import REDIS_SERVER, RedisServer, running_redis
from bench.server import free_port

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EDGE_CONFIG = REPO / "deploy" / "nginx" / "nginx.conf"
FRAMES_PER_STREAM = 20


def require(program: str) -> None:
    """Skip (or fail, under ``REQUIRE_STREAM_TOOLS=1``) where ``program`` is missing."""
    if Path(program).is_file():
        return
    why = f"{Path(program).name} is not installed (make stream-tools installs Debian's)"
    if os.environ.get("REQUIRE_STREAM_TOOLS") == "1":
        pytest.fail(why)
    pytest.skip(why)


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, stopped on exit."""
    require(REDIS_SERVER)
    with running_redis(directory) as server:
        yield server


def edge_config(directory: Path, replicas: list[str], port: int) -> Path:
    """The project's nginx.conf in ``directory``, in front of ``replicas`` (host:port),
    listening on loopback ``port``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(EDGE_CONFIG.read_text())
    servers = "".join(f"server {r} max_fails=1 fail_timeout=5s;\n" for r in replicas)
    (directory / "upstreams.conf").write_text(servers)
    (directory / "listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
    return conf


def check_edge_config(directory: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the project's config, as written by ``edge_config``."""
    require(NGINX)
    conf = edge_config(directory, ["127.0.0.1:1", "127.0.0.1:2"], free_port())
    return subprocess.run(
        [NGINX, "-t", "-p", str(directory), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextmanager
def nginx_edge(directory: Path, replicas: list[str]) -> Iterator[str]:
    """Debian's nginx with the project's config in front of ``replicas``, on a free
    loopback port; its URL. Stopped (SIGQUIT, then SIGKILL) by its pid."""
    require(NGINX)
    port = free_port()
    conf = edge_config(directory, replicas, port)
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "nginx.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(directory / 'nginx.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.02)
        yield url
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- a stream's frames and steps over HTTP, for the real-process tests -----------------


def frames_of(stream: int, frames: int = FRAMES_PER_STREAM) -> NDArray[np.float32]:
    """A stream's frames (frames, 40, 40, 3) in [0, 1]: a square moving on its own path."""
    out = np.zeros((frames, 40, 40, 3), np.float32)
    for t in range(frames):
        y, x = (3 * t + 5 * stream) % 32, (2 * t + 7 * stream) % 32
        out[t, y : y + 8, x : x + 8, stream % 3] = 1.0
    return out


def step(client: httpx.Client, stream_id: str, frame: NDArray[np.float32]) -> httpx.Response:
    tensor = {
        "data": base64.b64encode(frame.tobytes()).decode(),
        "dtype": "float32",
        "shape": [1, *frame.shape],
    }
    for _ in range(3):
        r = client.post(f"/v1/streams/{stream_id}", json={"tensor": tensor, "return_tensor": True})
        if r.status_code != 409 or r.json()["error"]["type"] != "stream_lease_lost":
            break
    return r


def prediction(r: httpx.Response) -> NDArray[np.float32]:
    assert r.status_code == 200, r.text
    t = r.json()["tensor"]
    frames: NDArray[np.float32] = np.frombuffer(base64.b64decode(t["data"]), "<f4")
    first: NDArray[np.float32] = frames.reshape(t["shape"])[0]
    return first
