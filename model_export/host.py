"""A one-line description of the machine, for every recorded figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"
