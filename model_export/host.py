"""The machine a figure was measured on, stated beside every recorded figure (the
training record, the evaluation, and the benchmarks, which import it from here)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """One line: the CPU and its logical cores."""
    return f"{cpu_model()}, {os.cpu_count()} logical cores"
