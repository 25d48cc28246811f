"""GPU utilisation and memory on /metrics: absent on a machine without an NVIDIA driver
(this one), present and read at each scrape where NVML answers. The second case runs
against a stand-in for NVML's Python module, since no GPU is here: it checks the
collector's reading and naming, not NVML."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import register_gpu_metrics
from service.metrics import Metrics


def test_no_nvidia_driver_means_no_gpu_metrics_not_zeros() -> None:
    metrics = Metrics()
    assert metrics.gpu is False
    assert b"convlstm_gpu_" not in generate_latest(metrics.registry)


class FakeNvml:
    """Two GPUs, the second one busier; NVML's call names and result shapes."""

    def __init__(self) -> None:
        self.busy = [25, 90]

    def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=self.busy[h], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30, free=0)


def test_where_nvml_answers_each_scrape_reads_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry)
    text = generate_latest(registry).decode()
    assert 'convlstm_gpu_utilization_ratio{gpu="1"} 0.9' in text
    assert 'convlstm_gpu_memory_used_bytes{gpu="0"} 1.073741824e+09' in text
    fake.busy[1] = 40  # read again at the next scrape, not cached
    assert 'convlstm_gpu_utilization_ratio{gpu="1"} 0.4' in generate_latest(registry).decode()
