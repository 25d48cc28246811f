"""The machine a figure was measured on, stated beside every figure: the CPU (as
``model_export.host`` names it for the training and evaluation records) plus the
onnxruntime provider the benchmarks run on."""

from __future__ import annotations

import os
import platform
from typing import Any

from model_export.host import cpu_model


def describe() -> dict[str, Any]:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    provider = (
        "CUDAExecutionProvider" if "CUDAExecutionProvider" in providers else "CPUExecutionProvider"
    )
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "provider": provider,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }
