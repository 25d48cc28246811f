"""The images built for real and run through docker-compose.yml with podman.

`make compose-test` builds the train and runtime-cpu stages (tests/containers/build.sh)
and runs this module with COMPOSE_TEST=1; elsewhere (a plain `pytest`) it skips, saying
so. With COMPOSE_TEST=1 nothing skips: a missing podman or image fails.

The compose file runs with deploy/compose/cpu.yml (the default service on the CPU image,
without the GPU reservation) through podman-compose (the dev extra pins it), on a
loopback port. Podman runs health checks from systemd timers; on a host without systemd
the test runs `podman healthcheck run` itself, which runs the container's own check
and records its result, the same as a timer would.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.server import free_port, serve
from tests.test_containers import healthcheck_command, parse_dockerfile

pytestmark = pytest.mark.skipif(
    os.environ.get("COMPOSE_TEST") != "1",
    reason="builds and runs the images with podman: `make compose-test` runs these",
)

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/convlstm-serve:cpu"
PROJECT = "convlstm-serve-test"  # not the compose file's own name: leaves a real one alone
CPU_OVERRIDE = REPO / "deploy" / "compose" / "cpu.yml"
OWN_MODEL_OVERRIDE = REPO / "deploy" / "compose" / "own-model.yml"
REQUEST = json.loads((REPO / "examples" / "request.json").read_text())
HEALTHY_WITHIN_S = 120.0
UID = "10001"


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {out.returncode}\n{out.stderr}")
    return out.stdout.strip()


def podman_compose() -> str:
    beside_python = Path(sys.executable).parent / "podman-compose"
    found = str(beside_python) if beside_python.exists() else shutil.which("podman-compose")
    assert found, "no podman-compose (the dev extra installs it)"
    return found


@dataclass
class Deployment:
    """One `podman-compose up` of the compose file with overrides, on a loopback port."""

    overrides: list[Path]
    env: dict[str, str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        files = [a for f in [REPO / "docker-compose.yml", *self.overrides] for a in ("-f", str(f))]
        return subprocess.run(
            [podman_compose(), *files, "-p", PROJECT, *args],
            cwd=REPO,
            env={**os.environ, **self.env, "CONVLSTM_PUBLISHED_PORT": f"127.0.0.1:{self.port}"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def container(self) -> str:
        names = podman(
            "ps", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "{{.Names}}"
        ).split()
        assert len(names) == 1, names
        return names[0]


def health_check_passes(container: str) -> bool:
    return (
        subprocess.run(
            ["podman", "healthcheck", "run", container], capture_output=True, timeout=30
        ).returncode
        == 0
    )


def wait_healthy(container: str, within: float = HEALTHY_WITHIN_S) -> float:
    """Seconds until the container's own health check passes and podman records it
    healthy; fails when the container stops or ``within`` runs out."""
    start = time.monotonic()
    while not health_check_passes(container):
        state = podman("inspect", "--format", "{{.State.Status}}", container)
        assert state == "running", f"{container} is {state}:\n{podman('logs', container)}"
        assert time.monotonic() - start < within, podman("logs", container)
        time.sleep(0.5)
    seconds = time.monotonic() - start
    assert podman("inspect", "--format", "{{.State.Health.Status}}", container) == "healthy"
    return seconds


def report(line: str) -> None:
    """A measured figure; `make compose-test` runs pytest with -s, so it is shown."""
    print(f"\ncompose-test: {line}", flush=True)


@contextmanager
def deployed(overrides: list[Path], env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """`up -d` (no build: build.sh built the image), healthy, then `down` whatever happened."""
    deployment = Deployment(overrides, env or {}, free_port())
    deployment.compose("down", "-t", "5")  # a leftover from an interrupted run
    started = time.monotonic()
    up = deployment.compose("up", "-d", "--no-build")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        seconds = wait_healthy(deployment.container)
        report(
            f"start -> healthy {seconds:.1f} s after `up` returned "
            f"({time.monotonic() - started:.1f} s from `up`), overrides "
            f"{[o.name for o in overrides]}"
        )
        yield deployment
    finally:
        deployment.compose("down")


def predicted_tensor(response: httpx.Response) -> np.ndarray[Any, Any]:
    assert response.status_code == 200, response.text
    tensor = response.json()["tensor"]
    data = np.frombuffer(base64.b64decode(tensor["data"]), dtype=np.dtype(tensor["dtype"]))
    return data.reshape(tensor["shape"])


# -- the image alone -------------------------------------------------------------------------


def test_image_keeps_its_health_check_user_and_entrypoint() -> None:
    (image,) = json.loads(podman("image", "inspect", IMAGE))
    # An OCI-format build drops HEALTHCHECK: this is what `--format docker` keeps. Podman
    # shows it beside the OCI config, Docker inside its own config.
    health = image.get("Healthcheck") or image["Config"].get("Healthcheck") or {}
    stage = parse_dockerfile((REPO / "Dockerfile").read_text())["runtime-cpu"]
    assert health.get("Test") == ["CMD", *healthcheck_command(stage.one("HEALTHCHECK"))], image
    assert image["Config"]["User"].split(":")[0] == UID
    assert image["Config"]["Entrypoint"] == ["python", "-m", "service"]
    report(f"{IMAGE} {image['Size'] / 1e6:.0f} MB")


def test_image_health_check_turns_healthy_and_stop_exits_0(tmp_path: Path) -> None:
    """The image's own HEALTHCHECK, without compose: read-only root, as the image says."""
    name = f"{PROJECT}-image"
    podman("rm", "--force", "--ignore", name)
    podman("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", IMAGE)
    try:
        seconds = wait_healthy(name)
        report(f"image alone: start -> healthy {seconds:.1f} s")
        assert podman("stop", "-t", "40", name) == name
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name) == "0"
    finally:
        podman("rm", "--force", "--ignore", name)


# -- docker-compose.yml with the CPU override --------------------------------------------------


@pytest.fixture(scope="module")
def cpu() -> Iterator[Deployment]:
    with deployed([CPU_OVERRIDE]) as deployment:
        yield deployment


def test_compose_runs_the_server_as_uid_10001_on_a_read_only_root(cpu: Deployment) -> None:
    container = cpu.container
    # PID 1 is the server itself (exec-form ENTRYPOINT): its real and effective uid.
    status = podman("exec", container, "cat", "/proc/1/status")
    (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
    assert set(uids) == {UID}, uids
    assert podman("exec", container, "cat", "/proc/1/cmdline").split("\0")[:3] == [
        "python",
        "-m",
        "service",
    ]
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container) == "true"
    for place in ("/app/x", "/home/convlstm/x"):
        out = subprocess.run(
            ["podman", "exec", container, "touch", place], capture_output=True, text=True
        )
        assert out.returncode != 0 and "Read-only file system" in out.stderr, (place, out)
    podman("exec", container, "touch", "/tmp/x")  # the tmpfs the compose file gives
    limits = podman("exec", container, "cat", "/proc/1/limits")
    assert "Max open files" in limits


def test_compose_answers_like_the_server_outside_the_container(
    cpu: Deployment, tmp_path: Path
) -> None:
    """The same model file, taken out of the image, served here by the host's server."""
    podman("cp", f"{cpu.container}:/app/models/convlstm.onnx", str(tmp_path))
    podman("cp", f"{cpu.container}:/app/models/convlstm.json", str(tmp_path))
    request = {**REQUEST, "return_tensor": True}
    with httpx.Client(base_url=cpu.url, timeout=60) as client:
        ready = client.get("/readyz").json()
        assert {"convlstm", "cnn_lstm"} <= set(ready["models"]), ready
        in_container = client.post("/predict", json=request)
    assert ready["provider"] == "CPUExecutionProvider" and not ready["fallback"], ready
    with serve(tmp_path / "convlstm.onnx") as host, host.client() as client:
        outside = client.post("/predict", json=request)
    got, expected = predicted_tensor(in_container), predicted_tensor(outside)
    assert got.shape == expected.shape and got.shape[0] == REQUEST["horizon"]
    assert float(np.max(np.abs(got - expected))) <= 1e-5
    assert in_container.json()["frames"] == outside.json()["frames"]  # the same PNGs
    committed = (REPO / "models" / "convlstm.onnx").read_bytes()
    same = committed == (tmp_path / "convlstm.onnx").read_bytes()
    report(
        f"image's convlstm.onnx: bytes {'equal' if same else 'differ from'} the committed export's"
    )


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("convlstm_http_requests_in_flight")]
    return float(line.split()[-1])


def test_compose_down_answers_requests_in_flight_and_exits_0(cpu: Deployment) -> None:
    """Three clients keep /predict busy while `down` stops the service: every
    request the server took is answered 200; later ones are refused (503 while it drains,
    or no connection once it has gone), never cut off; the process exits 0."""
    container = cpu.container
    # Started before `down`, which removes the container: its exit status and its log.
    waiter = subprocess.Popen(["podman", "wait", container], stdout=subprocess.PIPE, text=True)
    logs = subprocess.Popen(
        ["podman", "logs", "-f", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stop = threading.Event()
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=busy_client, args=(cpu.url, outcomes, stop)) for _ in range(3)
    ]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while in_flight(cpu.url) < 2:
            assert time.monotonic() < deadline, "the clients never had two requests in flight"
            time.sleep(0.05)
        down = cpu.compose("down")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        exit_status = waiter.communicate(timeout=60)[0].strip()
        log = logs.communicate(timeout=60)[0]
    finally:
        stop.set()
        for process in (waiter, logs):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "200" in outcomes, outcomes
    assert set(outcomes) <= {"200", "503", "refused"}, outcomes
    drained = [line for line in log.splitlines() if "draining" in line]
    assert drained and "draining 0 " not in drained[0], log[-2000:]
    assert exit_status == "0", (exit_status, log[-2000:])
    report(f"down with requests in flight: {drained[0].strip()}; outcomes {sorted(set(outcomes))}")


# -- a user's own model, mounted as a volume ---------------------------------------------------


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A small Keras ConvLSTM exported with `model_export export --keras` (the "serve your
    own model" steps), in a directory the container's uid can read."""
    import keras

    from model_export.__main__ import main
    from tests.test_export_any import sequential_convlstm2d

    tmp = tmp_path_factory.mktemp("own")
    keras.utils.set_random_seed(3)
    model = sequential_convlstm2d()
    model.save(tmp / "mine.keras")
    models = tmp / "models"
    args = ["export", "--keras", str(tmp / "mine.keras"), "--name", "mine"]
    assert main([*args, "--models", str(models)]) == 0
    for path in [models, *models.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return models, model


def test_compose_serves_a_model_directory_mounted_as_a_volume(
    own_model: tuple[Path, Any],
) -> None:
    models, model = own_model
    env = {"CONVLSTM_OWN_MODELS": str(models), "CONVLSTM_OWN_MODEL": "mine"}
    with deployed([CPU_OVERRIDE, OWN_MODEL_OVERRIDE], env) as deployment:
        with httpx.Client(base_url=deployment.url, timeout=60) as client:
            ready = client.get("/readyz").json()
            assert ready["model"] == "mine" and ready["models"] == ["mine"], ready
            x = np.random.default_rng(5).random((1, *model.input_shape[1:]), dtype=np.float32)
            tensor = {
                "data": base64.b64encode(x[0].tobytes()).decode(),
                "dtype": "float32",
                "shape": list(x.shape[1:]),
            }
            r = client.post("/predict", json={"tensor": tensor, "return_tensor": True})
        mounts = podman("inspect", "--format", "{{json .Mounts}}", deployment.container)
    got = predicted_tensor(r)[0]
    expected = model.predict(x, verbose=0)[0]
    assert float(np.max(np.abs(got - expected))) <= 1e-4
    (mount,) = [m for m in json.loads(mounts) if m["Destination"] == "/models"]
    assert mount["Source"] == str(models) and not mount["RW"], mount


def busy_client(url: str, outcomes: list[str], stop: threading.Event) -> None:
    """One client keeping /predict busy until ``stop``, a refusal (503, or the connection
    refused) or 400 answers, each outcome appended: a status code, ``refused``, or the
    error of a request cut off mid-way (which a drain must never do). REQUEST is small
    enough that a queued request meets no deadline (504) on a busy 2-core host."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set() and len(outcomes) < 400:
            try:
                r = http.post("/predict", json=REQUEST)
            except httpx.ConnectError:
                outcomes.append("refused")
                return
            except httpx.TransportError as err:  # cut off mid-request
                outcomes.append(f"{type(err).__name__}: {err}")
                return
            outcomes.append(str(r.status_code))
            if r.status_code == 503:
                return
