"""The onnxruntime session: provider choice and the committed model's contract."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.inference.session import (
    CPU,
    CUDA,
    TENSORRT,
    GraphOptions,
    OnnxSession,
    choose_providers,
)
from tests.service.conftest import COMMITTED_MODEL

ALL = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("preference", "available", "expected"),
    [
        ("auto", ALL, [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("tensorrt", ALL, [TENSORRT, CUDA, CPU]),
        ("tensorrt", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", ALL, [CPU]),
        ("auto", [CPU], [CPU]),
        ("auto", ["AzureExecutionProvider", CPU], [CPU]),
    ],
)
def test_choose_providers(preference: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(preference, available) == expected  # type: ignore[arg-type]


def test_committed_model_loads_on_an_installed_provider() -> None:
    session = OnnxSession(COMMITTED_MODEL)
    assert session.provider in ort.get_available_providers()
    assert session.input_shape == ["N", 15, 40, 40, 3]
    assert session.output_shape == ["N", 40, 40, 3]
    assert session.warm_up(1, (1, 3)) > 0
    y = session.run(np.zeros((2, 15, 40, 40, 3), np.float32))
    assert y.shape == (2, 40, 40, 3)


def test_cpu_preference_uses_the_cpu() -> None:
    assert OnnxSession(COMMITTED_MODEL, GraphOptions(provider="cpu")).provider == CPU


@pytest.mark.skipif(
    CUDA not in ort.get_available_providers(),
    reason="needs an NVIDIA GPU and the onnxruntime-gpu package (CUDA provider not installed)",
)
def test_cuda_provider_is_used_when_present() -> None:
    session = OnnxSession(COMMITTED_MODEL, GraphOptions(provider="cuda", require_gpu=True))
    assert session.provider == CUDA
    cpu = OnnxSession(COMMITTED_MODEL, GraphOptions(provider="cpu"))
    x = np.random.default_rng(0).random((2, 15, 40, 40, 3), dtype=np.float32)
    np.testing.assert_allclose(session.run(x), cpu.run(x), atol=1e-4)


def test_cuda_options_carry_the_tf32_choice() -> None:
    from service.inference.session import provider_options

    requested = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_options(requested, cuda_tf32=False) == [
        ("CUDAExecutionProvider", {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}),
        "CPUExecutionProvider",
    ]
    assert provider_options(requested, cuda_tf32=True)[0] == (
        "CUDAExecutionProvider",
        {"use_tf32": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"},
    )
    assert provider_options(["CPUExecutionProvider"], cuda_tf32=False) == ["CPUExecutionProvider"]
