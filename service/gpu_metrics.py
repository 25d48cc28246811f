"""GPU utilisation and memory on ``/metrics``, read through NVML (``nvidia-ml-py``) at
each scrape. Where NVML does not answer (no driver, no GPU, the CPU image) the metrics
are absent, not zero: a zero would read as an idle GPU."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None where NVML cannot be used here."""
    try:
        pynvml: Any = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
    except Exception as err:  # not installed, no driver (NVMLError), no device
        log.debug("no GPU metrics: %s", err)
        return None
    return pynvml


class GpuCollector(Collector):
    def __init__(self, pynvml: Any) -> None:
        self._nvml = pynvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily(
            "convlstm_gpu_utilization_ratio",
            "Fraction of the last sample period the GPU was busy (NVML), by GPU index.",
            labels=["gpu"],
        )
        used = GaugeMetricFamily(
            "convlstm_gpu_memory_used_bytes",
            "GPU memory in use, by every process (NVML), by GPU index.",
            labels=["gpu"],
        )
        total = GaugeMetricFamily(
            "convlstm_gpu_memory_total_bytes", "GPU memory, by GPU index.", labels=["gpu"]
        )
        n = self._nvml
        try:
            for i in range(n.nvmlDeviceGetCount()):
                handle = n.nvmlDeviceGetHandleByIndex(i)
                rates = n.nvmlDeviceGetUtilizationRates(handle)
                memory = n.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(i)], rates.gpu / 100.0)
                used.add_metric([str(i)], float(memory.used))
                total.add_metric([str(i)], float(memory.total))
        except Exception as err:  # a GPU lost mid-run: leave the scrape without them
            log.warning("GPU metrics unavailable this scrape: %s", err)
            return
        yield from (util, used, total)


def register_gpu_metrics(registry: CollectorRegistry) -> bool:
    """Add the GPU collector to ``registry`` where NVML answers; whether it did."""
    pynvml = nvml()
    if pynvml is None:
        return False
    registry.register(GpuCollector(pynvml))
    return True
