"""The servers ``make bench-peers`` compares, each started on a loopback port from its
own venv, and the request and answer format each one speaks.

An *arm* is one server spoken to in one way: this project's server over JSON and over
binary tensors are two arms of one process. Every arm sends the same sequence and its
answer is decoded to an array, so the driver can check it against raw onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.floor import Path_, captured
from bench.peers.report import (
    BENTOML,
    FLOOR_BINARY,
    FLOOR_JSON,
    KSERVE,
    MLSERVER,
    PROJECT_BINARY,
    PROJECT_JSON,
)
from bench.server import REPO, free_port, serve
from bench.workload import oip_binary_request, oip_json_request
from convlstm_card import card_path, read_card

PEERS_DIR = Path(__file__).resolve().parent
RUNTIMES = PEERS_DIR / "runtimes"
VENVS = REPO / ".venv-peers"
PEERS = ("mlserver", "kserve", "bentoml")
# This project's server with the session every arm shares (2 intra-op threads, no
# spinning: its default) and nothing logged per request.
PROJECT_ENV = {
    "CONVLSTM_INTRA_OP_THREADS": "2",
    "CONVLSTM_ACCESS_LOG": "false",
    "CONVLSTM_LOG_LEVEL": "warning",
}


@dataclass(frozen=True)
class Request:
    """One request, encoded once: where it goes, its body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


Decode = Callable[[httpx.Response], NDArray[np.float32]]


@dataclass(frozen=True)
class Arm:
    """One server spoken to in one way; ``pid`` roots the process tree whose CPU counts."""

    name: str
    url: str
    pid: int
    requests: dict[str, Request]
    decode: Decode


@dataclass(frozen=True)
class ModelInput:
    """A model served by every arm and the one sequence each request carries."""

    name: str
    path: Path
    input_name: str
    output_name: str
    batch: NDArray[np.float32]


def model_input(path: Path, batch: NDArray[np.float32]) -> ModelInput:
    card = read_card(card_path(path))
    return ModelInput(card.name, path, card.inputs[0].name, card.outputs[0].name, batch)


JSON = {"content-type": "application/json"}


def v2_json(m: ModelInput) -> Request:
    return Request(f"/v2/models/{m.name}/infer", oip_json_request(m.input_name, m.batch), JSON)


def v2_binary(m: ModelInput) -> Request:
    body, headers = oip_binary_request(m.input_name, m.output_name, m.batch)
    return Request(f"/v2/models/{m.name}/infer", body, headers)


def bentoml_json(m: ModelInput) -> Request:
    return Request(f"/{m.name}", json.dumps({"frames": m.batch.tolist()}).encode(), JSON)


def decode_v2_json(r: httpx.Response) -> NDArray[np.float32]:
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def decode_v2_binary(r: httpx.Response) -> NDArray[np.float32]:
    n = int(r.headers.get("inference-header-content-length", len(r.content)))
    out = json.loads(r.content[:n])["outputs"][0]
    if "data" in out:
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    return np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])


def decode_bentoml(r: httpx.Response) -> NDArray[np.float32]:
    return np.asarray(r.json(), dtype=np.float32)


def tree_pids(root: int) -> list[int]:
    """``root`` and every process descended from it (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended during the scan
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [root]
    while todo:
        node = todo.pop()
        found.append(node)
        todo.extend(children.get(node, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process tree so far (workers, inference pools,
    supervisors: whatever the server runs as)."""
    from bench.floor import cpu_seconds

    total = 0.0
    for pid in tree_pids(root):
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue  # a process that ended between the scan and the read
    return total


def wait_ready(process: subprocess.Popen[bytes], url: str, within: float, log: Path) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not ready within {within} s:\n{log.read_text()[-3000:]}")


@contextmanager
def spawn(
    command: list[str], ready: str, port: int, tmp: Path, env: dict[str, str], cwd: Path = REPO
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A server process on ``port`` until ``ready`` (a path) answers 200."""
    log = tmp / f"{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(process, url + ready, 300, log)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def installed(peer: str) -> bool:
    return venv_python(peer).exists()


def mlserver_dir(tmp: Path, models: list[ModelInput], port: int) -> Path:
    """MLServer's settings and one model-settings.json per model, every port loopback."""
    root = tmp / "mlserver"
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
    }
    root.mkdir()
    (root / "settings.json").write_text(json.dumps(settings))
    for m in models:
        (root / m.name).mkdir()
        model_settings = {
            "name": m.name,
            "implementation": "mlserver_runtime.OnnxModel",
            "parameters": {"uri": str(m.path.resolve())},
        }
        (root / m.name / "model-settings.json").write_text(json.dumps(model_settings))
    return root


def start_peer(
    stack: ExitStack, peer: str, models: list[ModelInput], tmp: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {"PYTHONPATH": str(RUNTIMES)}
    bin_dir = VENVS / peer / "bin"
    if peer == "mlserver":
        command = [str(bin_dir / "mlserver"), "start", str(mlserver_dir(tmp, models, port))]
        return stack.enter_context(spawn(command, "/v2/health/ready", port, tmp, env))
    if peer == "kserve":
        script = str(RUNTIMES / "kserve_runtime.py")
        command = [str(bin_dir / "python"), script, str(port)] + [str(m.path) for m in models]
        return stack.enter_context(spawn(command, "/v2/health/ready", port, tmp, env))
    if peer == "bentoml":
        env |= {
            "PEER_MODELS": ":".join(str(m.path.resolve()) for m in models),
            "BENTOML_DO_NOT_TRACK": "True",
        }
        command = [str(bin_dir / "bentoml"), "serve", "bentoml_service:Peers"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        return stack.enter_context(spawn(command, "/readyz", port, tmp, env, cwd=RUNTIMES))
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def peer_version(peer: str) -> str:
    """The peer's version as its venv reports it."""
    out = subprocess.run(
        [
            str(venv_python(peer)),
            "-c",
            f"import importlib.metadata as m; print(m.version({peer!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


PEER_LABELS = {"mlserver": "MLServer", "kserve": "KServe", "bentoml": "BentoML"}


def start_arms(
    stack: ExitStack, models: list[ModelInput], peers: list[str], tmp: Path, floor: bool
) -> list[Arm]:
    """Start every server, one after another, and return its arms. The first model in
    ``models`` is the one the bare floor answers for (it needs the project's responses)."""
    default = models[-1].path  # the project serves every carded model beside its default
    server = stack.enter_context(serve(default, env=PROJECT_ENV))
    pid = server.process.pid
    arms = [
        Arm(PROJECT_JSON, server.url, pid, _each(models, v2_json), decode_v2_json),
        Arm(
            PROJECT_BINARY,
            server.url,
            pid,
            _each(models, v2_binary),
            decode_v2_binary,
        ),
    ]
    if floor:
        arms += _floor_arms(stack, server.url, models[0], tmp)
    for peer in peers:
        process, url = start_peer(stack, peer, models, tmp)
        if peer == "bentoml":
            arms.append(Arm(BENTOML, url, process.pid, _each(models, bentoml_json), decode_bentoml))
        else:
            label = MLSERVER if peer == "mlserver" else KSERVE
            arms.append(Arm(label, url, process.pid, _each(models, v2_json), decode_v2_json))
    return arms


def _each(models: list[ModelInput], build: Callable[[ModelInput], Request]) -> dict[str, Request]:
    return {m.name: build(m) for m in models}


def _floor_arms(stack: ExitStack, project_url: str, m: ModelInput, tmp: Path) -> list[Arm]:
    """The bare ASGI endpoint of ``bench.floor``, answering the project's own bytes for
    both request forms of one model: what HTTP alone costs on the same uvicorn."""
    requests = {"json": v2_json(m), "binary": v2_binary(m)}
    paths = [Path_(k, r.path, r.body, r.headers) for k, r in requests.items()]
    responses = tmp / "floor-responses.json"
    responses.write_text(json.dumps(captured(project_url, paths)))
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--serve-floor", str(port)]
    command += ["--responses", str(responses)]
    process, url = stack.enter_context(spawn(command, "/", port, tmp, {}))
    return [
        Arm(FLOOR_JSON, url, process.pid, {m.name: requests["json"]}, decode_v2_json),
        Arm(
            FLOOR_BINARY,
            url,
            process.pid,
            {m.name: requests["binary"]},
            decode_v2_binary,
        ),
    ]


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bench-peers-")
