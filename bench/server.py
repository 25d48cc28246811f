"""Start the real server as a child process on a loopback port, and watch it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    ready_seconds: float
    log: IO[str]
    grpc_address: str | None = None
    """``127.0.0.1:PORT`` of its gRPC server, None when ``CONVLSTM_GRPC_PORT=0``."""

    @property
    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def output(self) -> str:
        """Everything the server has logged so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def serve(
    model: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_within: float = 120.0,
    python: str = sys.executable,
) -> Iterator[Server]:
    """``python -m service`` on a free loopback port until /readyz answers 200; the
    seconds that took. ``args`` are more command-line flags, ``env`` more variables. Its
    gRPC server listens on another free port (``grpc_address``), unless ``env`` sets
    ``CONVLSTM_GRPC_PORT``: never on the default 8001, which servers side by side (and
    other programs) would contend for."""
    port = free_port()
    env = {"CONVLSTM_GRPC_PORT": str(free_port()), **(env or {})}
    grpc_port = int(env["CONVLSTM_GRPC_PORT"])
    # A file, not a pipe: nobody reads a pipe while the server runs, and a full one
    # would block the server's logging.
    log = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "service", "--port", str(port), "--model", str(model), *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - start > ready_within:
                raise RuntimeError(f"server not ready within {ready_within} s")
            time.sleep(0.02)
        grpc_address = f"127.0.0.1:{grpc_port}" if grpc_port else None
        yield Server(process, url, time.perf_counter() - start, log, grpc_address)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
