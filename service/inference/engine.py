"""Decode, validate, run and encode one prediction request. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from service.config import Settings
from service.errors import InvalidInput, ModelLoadError, Overloaded
from service.inference.card import card_input_shape, read_card, sha256_of
from service.inference.codec import (
    FrameSpec,
    TensorDType,
    decode_frames,
    decode_tensor,
    encode_png,
    encode_tensor,
)
from service.inference.scheduler import BatchStats, Scheduler
from service.inference.session import OnnxSession
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramesInput:
    frames: list[str]


@dataclass(frozen=True)
class TensorInput:
    data: str
    dtype: TensorDType
    shape: list[int]


@dataclass(frozen=True)
class Prediction:
    png_frames: list[str]
    shape: list[int]
    inference_seconds: float
    tensor: str | None = None


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
    card: dict[str, Any] = field(repr=False)


def frame_spec(input_shape: list[int | str], output_shape: list[int | str]) -> FrameSpec:
    """The per-sequence input spec of a (N, T, H, W, C) -> (N, H, W, C) model."""
    dims = input_shape[1:]
    if len(input_shape) != 5 or not all(isinstance(d, int) for d in dims):
        raise ModelLoadError(
            f"model input shape {input_shape} is not (N, T, H, W, C) with fixed T, H, W, C"
        )
    t, h, w, c = (int(d) for d in dims)
    if list(output_shape[1:]) != [h, w, c]:
        raise ModelLoadError(
            f"model output shape {output_shape} is not one frame (N, {h}, {w}, {c}) "
            "of the input's size, so predictions cannot be fed back in"
        )
    return FrameSpec(t, h, w, c)


class InferenceEngine:
    """A loaded, warmed-up model and the request path around it."""

    def __init__(self, session: OnnxSession, info: ModelInfo, settings: Settings, metrics: Metrics):
        self.session = session
        self.info = info
        self.spec = frame_spec(info.input_shape, info.output_shape)
        self.max_horizon = settings.max_horizon
        self.timeout_s = settings.request_timeout_s
        self.metrics = metrics
        self.scheduler = Scheduler(
            session.run,
            workers=settings.inference_workers,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            on_batch=self._observe_batch,
        )

    def _observe_batch(self, stats: BatchStats) -> None:
        for size in stats.sizes:
            self.metrics.batch_size.labels(self.info.name).observe(size)
        if stats.dropped_abandoned:
            self.metrics.dropped.labels(self.info.name, "client_gone").inc(stats.dropped_abandoned)
        if stats.dropped_expired:
            self.metrics.dropped.labels(self.info.name, "deadline").inc(stats.dropped_expired)

    async def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    @classmethod
    def load(
        cls, settings: Settings, metrics: Metrics, path: Path | None = None
    ) -> InferenceEngine:
        """Load the model (``path``, else the settings' model) and its card, check them
        against each other, warm up. The model is served under its file stem."""
        model = path or settings.model_path
        card_path = model.with_suffix(".json")
        session = OnnxSession(
            model,
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
            require_gpu=settings.require_gpu,
            pad_batches=settings.pad_batches,
            max_batch=settings.max_batch_size,
        )
        sha = sha256_of(model)
        card = read_card(card_path, model, sha)
        stated = card_input_shape(card)
        if stated is not None and stated[1:] != session.input_shape[1:]:
            raise ModelLoadError(
                f"model card {card_path} states input shape {stated}, "
                f"but {model} takes {session.input_shape}"
            )
        info = ModelInfo(
            name=model.stem,
            version=str(card["version"]),
            sha256=sha,
            provider=session.provider,
            input_name=session.input_name,
            input_shape=session.input_shape,
            output_name=session.output_name,
            output_shape=session.output_shape,
            card=card,
        )
        engine = cls(session, info, settings, metrics)
        warmup = session.warm_up(settings.warmup_runs, (1, settings.max_batch_size))
        log.info(
            "model %s %s (sha256 %s) on %s; requested %s, installed %s; "
            "loaded in %.2f s, %d warm-up run(s) in %.2f s",
            info.name,
            info.version,
            sha[:12],
            session.provider,
            session.requested,
            session.available,
            session.load_seconds,
            settings.warmup_runs,
            warmup,
        )
        if session.provider != session.requested[0]:
            log.warning(
                "%s was requested but %s is in use: the GPU provider did not initialise",
                session.requested[0],
                session.provider,
            )
        return engine

    def decode(self, source: FramesInput | TensorInput) -> NDArray[np.float32]:
        if isinstance(source, FramesInput):
            return decode_frames(source.frames, self.spec)
        return decode_tensor(source.data, source.dtype, source.shape, self.spec)

    def check_horizon(self, horizon: int) -> None:
        if not 1 <= horizon <= self.max_horizon:
            raise InvalidInput(
                f"horizon: must be between 1 and {self.max_horizon}, got {horizon}",
                location="horizon",
            )

    async def run(
        self, sequences: NDArray[np.float32], horizon: int
    ) -> tuple[NDArray[np.float32], float]:
        """Checked (N, T, H, W, C) sequences -> (N, horizon, H, W, C) predictions and the
        longest time any of them spent in the model. Each sequence is its own job, so
        the scheduler batches them with whatever else is queued."""
        self.check_horizon(horizon)
        try:
            results = await asyncio.gather(
                *(self.scheduler.submit(s, horizon, self.timeout_s) for s in sequences)
            )
        except Overloaded:
            self.metrics.rejected.labels("overloaded").inc()
            raise
        seconds = max(s for _, s in results)
        self.metrics.inference_seconds.labels(self.info.name, self.info.provider).observe(seconds)
        self.metrics.predicted_frames.labels(self.info.name).inc(horizon * len(results))
        return np.stack([frames for frames, _ in results]), seconds

    async def predict(
        self, source: FramesInput | TensorInput, *, horizon: int = 1, return_tensor: bool = False
    ) -> Prediction:
        self.check_horizon(horizon)
        sequence = await anyio.to_thread.run_sync(self.decode, source)
        batch, seconds = await self.run(sequence[None], horizon)
        predicted = batch[0]
        pngs = await anyio.to_thread.run_sync(lambda: [encode_png(f) for f in predicted])
        return Prediction(
            png_frames=pngs,
            shape=list(predicted.shape),
            inference_seconds=seconds,
            tensor=encode_tensor(predicted) if return_tensor else None,
        )
