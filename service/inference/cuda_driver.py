"""What the machine (or container) offers the CUDA provider, told apart for the log and
``/readyz``: no driver (on a container host: no NVIDIA Container Toolkit, or no GPU
requested), a driver too old for the CUDA libraries, no GPU visible, or a working driver
(then the CUDA or cuDNN libraries are at fault).

onnxruntime falls back to the CPU without saying which of these it met. Three calls of
CUDA's driver API answer it (``cuInit``, ``cuDriverGetVersion``, ``cuDeviceGetCount``):
they are what the CUDA runtime itself asks, so they see what onnxruntime sees, including
``CUDA_VISIBLE_DEVICES``, which NVML ignores. They are called through ctypes because no
pinned package wraps them for us without bringing a CUDA toolkit along.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

# CUresult values (CUDA driver API, cuda.h): success, and "no CUDA-capable device".
CUDA_SUCCESS = 0
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INSUFFICIENT_DRIVER = 35

NO_DRIVER_HINT = (
    "on a container host, install the NVIDIA Container Toolkit and request a GPU "
    "(docker run --gpus all, compose's deploy.resources.reservations.devices, "
    "podman's --device nvidia.com/gpu=all, Kubernetes' nvidia.com/gpu limit)"
)


@dataclass(frozen=True)
class DriverState:
    """What the driver API answered; ``driver_version`` as CUDA writes it (13000 = 13.0)."""

    driver_found: bool
    driver_version: int | None = None
    init_result: int | None = None
    device_count: int = 0


def probe_driver(library: str = "libcuda.so.1") -> DriverState:
    """Ask the CUDA driver, if one can be loaded, for its version and visible devices."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return DriverState(driver_found=False)
    version = ctypes.c_int(0)
    got_version = cuda.cuDriverGetVersion(ctypes.byref(version)) == CUDA_SUCCESS
    init = int(cuda.cuInit(0))
    count = ctypes.c_int(0)
    if init == CUDA_SUCCESS and cuda.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
        count.value = 0
    return DriverState(
        driver_found=True,
        driver_version=version.value if got_version else None,
        init_result=init,
        device_count=count.value,
    )


def cuda_version_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def describe(state: DriverState, provider: str, needed_cuda: str | None) -> str:
    """Why ``provider`` did not start, given ``state`` and the CUDA version (``"13.0"``)
    the installed onnxruntime was built for (None when it does not say)."""
    if not state.driver_found:
        return (
            f"{provider} did not start: no NVIDIA driver in this machine or container "
            f"(libcuda.so.1 not found); {NO_DRIVER_HINT}"
        )
    found = (
        f"NVIDIA driver for CUDA {cuda_version_text(state.driver_version)}"
        if state.driver_version
        else "NVIDIA driver"
    )
    if needed_cuda and state.driver_version:
        major = int(needed_cuda.split(".")[0])
        if state.driver_version // 1000 < major or (
            state.init_result == CUDA_ERROR_INSUFFICIENT_DRIVER
        ):
            return (
                f"{provider} did not start: the {found} is older than the CUDA {needed_cuda} "
                f"this onnxruntime is built for; upgrade the host's driver (CUDA {major} "
                "needs R580 or newer)"
            )
    if state.init_result == CUDA_ERROR_NO_DEVICE or (
        state.init_result == CUDA_SUCCESS and state.device_count == 0
    ):
        return (
            f"{provider} did not start: an {found} is present but no GPU is visible "
            "(check CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES and the container's GPU "
            "request)"
        )
    if state.init_result not in (None, CUDA_SUCCESS):
        return (
            f"{provider} did not start: the {found} failed to initialise "
            f"(cuInit returned {state.init_result})"
        )
    return (
        f"{provider} did not start although an {found} and {state.device_count} GPU(s) are "
        "visible: CUDA or cuDNN libraries missing or mismatched (see onnxruntime's error above)"
    )
