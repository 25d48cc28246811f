"""What one served model version has done, in the shape of Triton's statistics extension
(``GET /v2/models/{m}/stats`` and the ``ModelStatistics`` RPC read the same object):
requests that succeeded or failed with their whole durations, the time each waited in
the queue and spent in the model, how many inferences and model executions there were,
and the compute time per batch size.

Counted where every front meets: the model's runner (``/predict``, the Open Inference
Protocol over REST and gRPC, the time-series API) and the data plane's sequence steps.
Prometheus's histograms are the operators' view; these are the protocol's, cumulative
counts and nanoseconds as Triton reports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass
class Duration:
    """A cumulative count and total time, Triton's ``StatisticDuration``."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * NS)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    """One model version's statistics since it was loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    by_batch_size: dict[int, Duration] = field(default_factory=dict)

    def request(self, ok: bool, seconds: float, inferences: int = 1) -> None:
        """One request answered (``ok``) or failed, after ``seconds`` in the server's
        hands; ``inferences``: the items it carried (its batch size)."""
        if ok:
            self.success.add(seconds)
            self.inference_count += inferences
            self.last_inference_ms = int(time.time() * 1000)
        else:
            self.fail.add(seconds)

    def batch(self, sizes: list[int], queue_waits: list[float], run_seconds: float) -> None:
        """One batch of queued jobs run: each job's wait, the model's time for every job
        in it, and each model execution (a roll-out of ``h`` steps makes ``h``; the run's
        time is shared evenly between them, the runner times the roll-out as a whole)."""
        for wait in queue_waits:
            self.queue.add(wait)
        if sizes:  # none when the run failed
            self.compute_infer.add(run_seconds * len(queue_waits), count=len(queue_waits))
        self.execution_count += len(sizes)
        for size in sizes:
            self.by_batch_size.setdefault(size, Duration()).add(run_seconds / len(sizes))

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` in Triton's JSON. Stages this service does not
        time apart (input and output copies, a response cache) are reported as zero."""
        zero = Duration().as_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": duration.as_json(),
                    "compute_output": zero,
                }
                for size, duration in sorted(self.by_batch_size.items())
            ],
        }
