"""The GPU image (the Dockerfile's `runtime` stage on GPU_BASE=pip) built and run for real
with podman, on a machine without a GPU.

`make gpu-image-test` builds it (tests/containers/build.sh gpu) and runs this module with
GPU_IMAGE_TEST=1; elsewhere it skips, saying so. It is not in `make test` or CI's
`make compose-test`: its wheels are 1.6 GB and its build takes minutes (Makefile,
`test-all`).

What a GPU host would add (the CUDA provider really running) cannot happen here; what can,
is checked: the CUDA provider is installed and every library it links resolves, and the
container without a GPU starts, falls back to the CPU and says why, or with
CONVLSTM_REQUIRE_GPU=1 stays up and not ready, saying why, without restarting.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from tests.containers.test_compose import REQUEST, UID, busy_client, podman, wait_healthy
from tests.test_containers import healthcheck_command, parse_dockerfile

pytestmark = pytest.mark.skipif(
    os.environ.get("GPU_IMAGE_TEST") != "1",
    reason="builds and runs the 1.6 GB GPU image with podman: `make gpu-image-test` runs these",
)

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/convlstm-serve:gpu"
CPU_IMAGE = "localhost/convlstm-serve:cpu"
NAME = "convlstm-serve-gpu-test"
# The image's site-packages and the NVIDIA wheels' library folders in it, as the image's
# own Python finds them.
LIBRARY_DIRS = (
    "import glob, nvidia, onnxruntime, os;"
    "print(os.path.dirname(onnxruntime.__file__));"
    "print(':'.join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], '*', 'lib')))))"
)


def report(line: str) -> None:
    """A measured figure; `make gpu-image-test` runs pytest with -s, so it is shown."""
    print(f"\ngpu-image-test: {line}", flush=True)


def in_image(*command: str, entrypoint: str = "python", user: str = UID) -> str:
    """``command`` in a throw-away container of the image, with no network."""
    return podman(
        "run", "--rm", "--network", "none", "--user", user, "--entrypoint", entrypoint, IMAGE,
        *command,
    )  # fmt: skip


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        out = subprocess.run(
            ["podman", "logs", self.name], capture_output=True, text=True, timeout=30
        )
        return out.stdout + out.stderr


@contextmanager
def running(env: dict[str, str] | None = None) -> Iterator[Container]:
    """The image as a deployment runs it: read-only root, a tmpfs /tmp, the restart
    policy of docker-compose.yml, a loopback port; removed whatever happened."""
    container = Container(NAME, free_port())
    podman("rm", "--force", "--ignore", container.name)
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    podman(
        "run", "-d", "--name", container.name, "--read-only", "--tmpfs", "/tmp",
        "--restart", "unless-stopped", "-p", f"127.0.0.1:{container.port}:8000", *flags, IMAGE,
    )  # fmt: skip
    try:
        yield container
    finally:
        podman("rm", "--force", "--ignore", "-t", "5", container.name)


# -- the image itself ------------------------------------------------------------------------


def test_image_keeps_its_health_check_user_and_entrypoint() -> None:
    (image,) = json.loads(podman("image", "inspect", IMAGE))
    health = image.get("Healthcheck") or image["Config"].get("Healthcheck") or {}
    stage = parse_dockerfile((REPO / "Dockerfile").read_text())["runtime"]
    assert health.get("Test") == ["CMD", *healthcheck_command(stage.one("HEALTHCHECK"))], image
    assert image["Config"]["User"].split(":")[0] == UID
    assert image["Config"]["Entrypoint"] == ["python", "-m", "service"]
    sizes = {
        tag: json.loads(podman("image", "inspect", tag))[0]["Size"] for tag in (IMAGE, CPU_IMAGE)
    }
    report(
        f"{IMAGE} {sizes[IMAGE] / 1e6:.0f} MB; {CPU_IMAGE} "
        f"{sizes[CPU_IMAGE] / 1e6:.0f} MB (the same base and server)"
    )


def test_cuda_provider_is_installed() -> None:
    providers = in_image("-c", "import onnxruntime as o; print(o.get_available_providers())")
    assert "CUDAExecutionProvider" in providers, providers
    built_for = in_image(
        "-c", "from onnxruntime.capi import build_and_package_info as b; print(b.cuda_version)"
    )
    assert built_for.split(".")[0] == "13", built_for


def test_cuda_provider_resolves_every_library_it_links() -> None:
    """``ldd`` on the CUDA provider and on every NVIDIA library beside it, with the
    wheels' lib folders on the path: nothing missing but the driver's libcuda.so.1,
    which the NVIDIA Container Toolkit mounts on a GPU host."""
    ort_dir, lib_dirs = in_image("-c", LIBRARY_DIRS).splitlines()
    script = (
        f"export LD_LIBRARY_PATH={lib_dirs}; "
        f"for f in {ort_dir}/capi/libonnxruntime_providers_cuda.so "
        + " ".join(f"{d}/*.so*" for d in lib_dirs.split(":"))
        + '; do echo "== $f"; ldd "$f"; done'
    )
    out = in_image("-c", script, entrypoint="sh")
    libraries = [line for line in out.splitlines() if line.startswith("== ")]
    missing = [line.strip() for line in out.splitlines() if "not found" in line]
    assert any("libonnxruntime_providers_cuda.so" in line for line in libraries), out
    assert {"libcublasLt.so.13", "libcudnn.so.9", "libcufft.so.12", "libcurand.so.10"} <= {
        line.rsplit("/", 1)[-1] for line in libraries
    }, libraries
    assert all(line.startswith("libcuda.so.1 ") for line in missing), missing
    # What the provider links itself (cuDNN and cuFFT it opens at run time: their own
    # links are among the libraries above); libcuda.so.1 too, hence no CUDA provider
    # without a driver.
    provider = out.split("== ")[1]
    for needed in ("libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13"):
        assert f"{needed} => /" in provider, provider
    assert "libcuda.so.1 => not found" in provider, provider
    report(f"ldd: {len(libraries)} libraries, none missing but libcuda.so.1 (the driver's)")


def test_image_holds_no_compiler_and_no_headers() -> None:
    found = in_image(
        "-c",
        "find / -xdev -path '*nvidia*' \\( -name '*.h' -o -name '*.a' -o -name include "
        "-o -name 'libnvblas.so*' -o -name 'libcufftw.so*' \\) -print; "
        "for c in cc gcc g++ nvcc ptxas; do command -v $c; done; true",
        entrypoint="sh",
        user="0",  # to read every folder
    )
    assert found == "", found


# -- running without a GPU -------------------------------------------------------------------


def test_without_a_gpu_it_falls_back_to_the_cpu_and_says_why() -> None:
    with running() as container:
        seconds = wait_healthy(container.name)
        with httpx.Client(base_url=container.url, timeout=60) as client:
            ready = client.get("/readyz").json()
            answer = client.post("/predict", json=REQUEST)
        log = container.logs()
        status = podman("exec", container.name, "cat", "/proc/1/status")
        touched = subprocess.run(
            ["podman", "exec", container.name, "touch", "/app/x"], capture_output=True, text=True
        )
    assert ready["provider"] == "CPUExecutionProvider", ready
    assert ready["requested_provider"] == "CUDAExecutionProvider" and ready["fallback"], ready
    assert "no NVIDIA driver" in ready["fallback_reason"], ready
    assert "NVIDIA Container Toolkit" in ready["fallback_reason"], ready
    assert answer.status_code == 200, answer.text
    reasons = [line for line in log.splitlines() if "runs on CPUExecutionProvider: " in line]
    assert reasons and all("no NVIDIA driver" in line for line in reasons), log
    (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
    assert set(uids) == {UID}, uids
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched
    report(f"no GPU: healthy in {seconds:.1f} s on the CPU; {ready['fallback_reason']}")


def test_require_gpu_stays_up_and_not_ready_without_restarting() -> None:
    with running({"CONVLSTM_REQUIRE_GPU": "1"}) as container:
        deadline = time.monotonic() + 90
        ready = None
        while ready is None:
            assert time.monotonic() < deadline, container.logs()
            try:
                alive = httpx.get(f"{container.url}/healthz", timeout=2)
                ready = httpx.get(f"{container.url}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.5)
        time.sleep(6)  # longer than a restart would take to show
        check = subprocess.run(
            ["podman", "healthcheck", "run", container.name], capture_output=True, text=True
        )
        state = json.loads(podman("inspect", container.name))[0]
        log = container.logs()
    assert alive.status_code == 200
    assert ready.status_code == 503, ready.text
    message = ready.json()["error"]["message"]
    assert "a GPU provider is required" in message and "no NVIDIA driver" in message, message
    assert check.returncode != 0, "the health check must fail while not ready"
    assert state["State"]["Status"] == "running" and state["RestartCount"] == 0, state["State"]
    lines = [line for line in log.splitlines() if "not ready, and staying so" in line]
    assert len(lines) == 1 and "Traceback" not in log, log
    report(f"CONVLSTM_REQUIRE_GPU=1, no GPU: running, not ready: {message}")


def test_a_gpu_asked_for_on_a_host_without_the_toolkit_is_refused_by_podman() -> None:
    """What deploy/compose/gpu-cdi.yml (and podman-compose's reading of the device
    request) asks podman for, on a host without the NVIDIA Container Toolkit's CDI spec:
    podman refuses to create the container and names the device; nothing starts, so
    nothing restarts."""
    podman("rm", "--force", "--ignore", NAME)
    out = subprocess.run(
        ["podman", "run", "-d", "--name", NAME, "--device", "nvidia.com/gpu=all", IMAGE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    podman("rm", "--force", "--ignore", NAME)
    assert out.returncode != 0, out.stdout
    assert "nvidia.com/gpu=all" in out.stderr, out.stderr
    report(f"CDI device without the toolkit: {out.stderr.strip().splitlines()[-1]}")


def test_stop_drains_requests_in_flight_and_exits_0() -> None:
    """As in the CPU image: clients keep /predict busy while `podman stop` stops it;
    every request taken is answered, later ones refused, never cut off; exit 0."""
    outcomes: list[str] = []
    stop = threading.Event()
    with running() as container:
        wait_healthy(container.name)
        threads = [
            threading.Thread(target=busy_client, args=(container.url, outcomes, stop))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while "200" not in outcomes:
                assert time.monotonic() < deadline, container.logs()
                time.sleep(0.05)
            podman("stop", "-t", "40", container.name, timeout=90)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container.name)
        log = container.logs()
    assert "200" in outcomes and set(outcomes) <= {"200", "503", "refused"}, outcomes
    drained = [line for line in log.splitlines() if "draining" in line]
    assert drained, log[-2000:]
    assert exit_code == "0", (exit_code, log[-2000:])
    report(f"stop with requests in flight: {drained[0].strip()}; outcomes {sorted(set(outcomes))}")
