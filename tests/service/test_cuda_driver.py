"""What the CUDA driver offers, told apart for the log and /readyz.

This machine has no NVIDIA driver, so ``probe_driver`` is checked for real only where the
library is missing; the other states (an old driver, no GPU visible, a working driver)
are the driver API's answers written as values, since no GPU can produce them here."""

from __future__ import annotations

import pytest

from service.inference.cuda_driver import (
    CUDA_ERROR_INSUFFICIENT_DRIVER,
    CUDA_ERROR_NO_DEVICE,
    CUDA_SUCCESS,
    DriverState,
    describe,
    probe_driver,
)

CUDA = "CUDAExecutionProvider"


def test_a_missing_driver_library_is_found_missing() -> None:
    assert probe_driver("libcuda-that-is-not-there.so.1") == DriverState(driver_found=False)


def test_no_driver_names_the_container_toolkit() -> None:
    why = describe(DriverState(driver_found=False), CUDA, "13.0")
    assert why.startswith(f"{CUDA} did not start: no NVIDIA driver")
    assert "NVIDIA Container Toolkit" in why and "nvidia.com/gpu" in why


@pytest.mark.parametrize(
    "state",
    [
        DriverState(True, 12040, CUDA_SUCCESS, 1),
        DriverState(True, 12040, CUDA_ERROR_INSUFFICIENT_DRIVER, 0),
        DriverState(True, 13000, CUDA_ERROR_INSUFFICIENT_DRIVER, 0),
    ],
)
def test_an_old_driver_is_named_with_both_versions(state: DriverState) -> None:
    why = describe(state, CUDA, "13.0")
    found = "12.4" if state.driver_version == 12040 else "13.0"
    assert f"driver for CUDA {found} is older than the CUDA 13.0" in why
    assert "R580" in why


@pytest.mark.parametrize(
    "state",
    [DriverState(True, 13000, CUDA_ERROR_NO_DEVICE, 0), DriverState(True, 13000, CUDA_SUCCESS, 0)],
)
def test_no_visible_gpu_is_told_apart_from_no_driver(state: DriverState) -> None:
    why = describe(state, CUDA, "13.0")
    assert "driver for CUDA 13.0 is present but no GPU is visible" in why
    assert "CUDA_VISIBLE_DEVICES" in why


def test_a_working_driver_points_at_the_libraries() -> None:
    why = describe(DriverState(True, 13020, CUDA_SUCCESS, 2), CUDA, "13.0")
    assert "driver for CUDA 13.2 and 2 GPU(s) are visible" in why
    assert "CUDA or cuDNN libraries missing or mismatched" in why


def test_another_init_failure_gives_its_code() -> None:
    why = describe(DriverState(True, 13000, 999, 0), CUDA, "13.0")
    assert "failed to initialise (cuInit returned 999)" in why
