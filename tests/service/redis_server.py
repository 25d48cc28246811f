"""Debian's ``redis-server`` for the stream-store tests: started on a free loopback port in
a temporary directory, nothing written to disk, stopped by its pid. Installed by
``make stream-tools`` (``make test`` depends on it); where it is missing the tests skip,
unless ``REQUIRE_REDIS=1`` (as ``.ci/run`` sets) makes that a failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.server import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis() -> None:
    """Skip (or fail, under ``REQUIRE_REDIS=1``) where Debian's redis-server is missing."""
    if Path(REDIS_SERVER).is_file():
        return
    why = "redis-server is not installed (make stream-tools installs Debian's)"
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class RedisServer:
    """A running (or stopped) redis-server on ``port``."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.02)

    def answers(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, stopped on exit."""
    require_redis()
    server = RedisServer(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
