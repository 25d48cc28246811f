"""The machine a figure was measured on, stated beside every figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
