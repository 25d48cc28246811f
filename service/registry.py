"""The one owner of the served models' lifetimes: loads them (the default first), looks
them up by name for every protocol front, and drains them on shutdown.

A served model is a runner (session, scheduler, metrics) and the task adapter its card
chose. Loading one checks the file, its card and the task against each other and warms
the session up before the model counts as served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from convlstm_card import sha256_of
from service.config import Settings
from service.errors import ModelLoadError, NotReady, UnknownModel
from service.inference.card import served_card
from service.inference.runner import ModelInfo, ModelRunner
from service.inference.session import OnnxSession
from service.metrics import Metrics
from service.tasks import TaskAdapter, adapter_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedModel:
    """A model in the directory that could not be served, and why."""

    name: str
    file: str
    reason: str


@dataclass(frozen=True)
class ServedModel:
    runner: ModelRunner
    task: TaskAdapter

    @property
    def info(self) -> ModelInfo:
        return self.runner.info


def load_model(settings: Settings, metrics: Metrics, path: Path) -> ServedModel:
    """Load the model at ``path`` and its card, check them against each other, pick its
    task adapter, warm up. The model is served under its file stem."""
    session = OnnxSession(
        path,
        provider=settings.provider,
        intra_op_threads=settings.intra_op_threads,
        intra_op_spinning=settings.intra_op_spinning,
        require_gpu=settings.require_gpu,
        pad_batches=settings.pad_batches,
        max_batch=settings.max_batch_size,
        cuda_tf32=settings.cuda_tf32,
    )
    sha = sha256_of(path)
    card = served_card(
        path,
        sha,
        inputs={"name": session.input_name, "shape": session.input_shape},
        outputs={"name": session.output_name, "shape": session.output_shape},
    )
    task = adapter_for(card, settings)
    info = ModelInfo(
        name=path.stem,
        version=card.version,
        sha256=sha,
        provider=session.provider,
        input_name=session.input_name,
        input_shape=session.input_shape,
        output_name=session.output_name,
        output_shape=session.output_shape,
        card=card,
    )
    runner = ModelRunner(session, info, settings, metrics, rollout=task.rollout)
    warmup = runner.scheduler.warm_up(
        lambda: session.warm_up(settings.warmup_runs, (1, settings.max_batch_size))
    )
    log.info(
        "model %s %s (sha256 %s, task %s) on %s; requested %s, installed %s; "
        "loaded in %.2f s, %d warm-up run(s) in %.2f s",
        info.name,
        info.version,
        sha[:12],
        card.task,
        session.provider,
        session.requested,
        session.available,
        session.load_seconds,
        settings.warmup_runs,
        warmup,
    )
    if session.fallback_reason is not None:
        log.warning("model %s runs on %s: %s", info.name, session.provider, session.fallback_reason)
    return ServedModel(runner, task)


class ModelRegistry:
    """The served models by name, and whether the service takes new work."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, FailedModel] = {}
        self.default_name = ""
        self.ready = False
        self.not_ready_reason = "the model is loading"
        self.draining = False
        # Requests being answered, counted by the HTTP layer; a drain waits for them.
        self.in_flight = 0

    async def load(self) -> None:
        """Load, start and publish every model the settings name, the default first.

        The default model failing stops start-up: those already started are stopped and
        the error raised. Another model failing is logged once (file and reason) and
        listed in ``failed``, unless ``exit_on_model_error`` makes it stop start-up too.
        """
        for i, path in enumerate(self.settings.model_paths()):
            try:
                model = await anyio.to_thread.run_sync(
                    load_model, self.settings, self.metrics, path
                )
            except Exception as err:
                # A ModelLoadError names the file; anything else (a warm-up run the
                # graph refuses) is named here.
                reason = err.message if isinstance(err, ModelLoadError) else f"{path}: {err!r}"
                if i == 0 or self.settings.exit_on_model_error:
                    log.error("cannot serve: %s", reason)
                    await self.close()
                    if isinstance(err, ModelLoadError):
                        raise
                    raise ModelLoadError(reason) from err
                log.error("model %s not served (skipped): %s", path, reason)
                self.failed[path.stem] = FailedModel(path.stem, str(path), reason)
                continue
            await model.runner.start()
            self.models[model.info.name] = model
        self.default_name = self.settings.model_path.stem
        self.ready = True
        self.metrics.ready.set(1)

    async def close(self) -> None:
        """Stop every model's scheduler; whatever is still queued is refused."""
        for model in self.models.values():
            await model.runner.stop()

    @property
    def default(self) -> ServedModel | None:
        """The default model, once loaded."""
        return self.models.get(self.default_name)

    def lookup(self, name: str | None) -> ServedModel:
        """The model served as ``name`` (the default model when None)."""
        if not self.models:
            raise NotReady(f"not ready: {self.not_ready_reason}")
        model = self.models.get(name or self.default_name)
        if model is None:
            raise self.unknown(name)
        return model

    def unknown(self, name: str | None) -> UnknownModel:
        failed = self.failed.get(name or "")
        if failed is not None:
            return UnknownModel(
                f"model: {name!r} failed to load and is not served ({failed.reason}); "
                f"served: {', '.join(self.models)}",
                location="model",
            )
        return UnknownModel(
            f"model: no model named {name!r}; served: {', '.join(self.models)}",
            location="model",
        )

    @property
    def fully_ready(self) -> bool:
        """Ready, and with ``strict_readiness`` also no model failed to load."""
        return self.ready and not (self.settings.strict_readiness and self.failed)

    @property
    def readiness_problem(self) -> str:
        """Why ``fully_ready`` is false."""
        if not self.ready:
            return self.not_ready_reason
        names = ", ".join(self.failed)
        return f"strict readiness: model(s) failed to load: {names}"

    def begin_drain(self, reason: str) -> None:
        """Readiness off and new work refused; what is in flight carries on."""
        self.draining, self.ready, self.not_ready_reason = True, False, reason
        self.metrics.ready.set(0)
