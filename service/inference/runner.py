"""One loaded model: its onnxruntime session, the scheduler in front of it, and its
metrics. Arrays in, arrays out: what the arrays mean (frames, tensors) is the business
of the model's task adapter (``service.tasks``), never the runner's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard
from service.config import Settings
from service.errors import Overloaded
from service.inference.scheduler import BatchStats, Rollout, Scheduler
from service.inference.session import GPU_PROVIDERS, OnnxSession
from service.metrics import Metrics


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    provider: str
    input_name: str
    input_shape: list[int | str]
    output_name: str
    output_shape: list[int | str]
    card: ModelCard = field(repr=False)


class ModelRunner:
    """Runs batches of one model through its scheduler and counts what it did."""

    def __init__(
        self,
        session: OnnxSession,
        info: ModelInfo,
        settings: Settings,
        metrics: Metrics,
        rollout: Rollout,
    ) -> None:
        self.session = session
        self.info = info
        self.timeout_s = settings.request_timeout_s
        self.metrics = metrics
        self.scheduler = Scheduler(
            session.run,
            rollout=rollout,
            workers=settings.inference_workers,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            cohort_wait=settings.batch_cohort_wait,
            on_batch=self._observe_batch,
            span_attributes={
                "convlstm.model": info.name,
                "convlstm.model_version": info.version,
                "convlstm.provider": info.provider,
            },
        )

    @property
    def fallback(self) -> bool:
        """A GPU provider was asked for, but another one runs the model."""
        wanted = self.session.requested[0]
        return wanted in GPU_PROVIDERS and self.session.provider != wanted

    def _observe_batch(self, stats: BatchStats) -> None:
        for size in stats.sizes:
            self.metrics.batch_size.labels(self.info.name).observe(size)
        for wait in stats.queue_waits:
            self.metrics.queue_wait_seconds.labels(self.info.name).observe(wait)
        if stats.dropped_abandoned:
            self.metrics.dropped.labels(self.info.name, "client_gone").inc(stats.dropped_abandoned)
        if stats.dropped_expired:
            self.metrics.dropped.labels(self.info.name, "deadline").inc(stats.dropped_expired)

    async def start(self) -> None:
        """Start the scheduler's workers and publish the model's gauges."""
        self.scheduler.start()
        info, metrics = self.info, self.metrics
        metrics.model_info.labels(info.name, info.version, info.sha256, info.provider).set(1)
        metrics.queue_depth.labels(info.name).set_function(lambda: self.scheduler.queued)
        if self.fallback:
            metrics.provider_fallback.labels(self.session.requested[0], info.provider).set(1)

    async def stop(self) -> None:
        await self.scheduler.stop()

    async def run(
        self, batch: NDArray[np.float32], steps: int = 1
    ) -> tuple[NDArray[np.float32], float]:
        """Checked model inputs (N, ...) -> every item's output after ``steps`` steps,
        stacked, and the longest time any of them spent in the model. Each item is its
        own job, so the scheduler batches them with whatever else is queued."""
        try:
            results = await asyncio.gather(
                *(self.scheduler.submit(item, steps, self.timeout_s) for item in batch)
            )
        except Overloaded:
            self.metrics.rejected.labels("overloaded").inc()
            raise
        seconds = max(s for _, s in results)
        self.metrics.inference_seconds.labels(self.info.name, self.info.provider).observe(seconds)
        # One step of one item is one predicted frame for a next-frame model.
        self.metrics.predicted_frames.labels(self.info.name).inc(steps * len(results))
        return np.stack([out for out, _ in results]), seconds
