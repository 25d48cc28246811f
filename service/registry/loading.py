"""One model, loaded: its file, its card and its task checked against each other, the
session warmed up. What the registry serves is a ``ServedModel``; what it could not serve
is a ``FailedModel``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from convlstm_card import sha256_of
from service.config import Settings
from service.inference.card import served_card
from service.inference.graph import SIMULATED
from service.inference.runner import ModelInfo, ModelRunner
from service.inference.session import GraphOptions, OnnxSession
from service.metrics import Metrics
from service.tasks import TaskAdapter, adapter_for

# The registry's one logger, whichever of its modules writes the line.
log = logging.getLogger("service.registry")


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


def load_model(
    settings: Settings,
    metrics: Metrics,
    path: Path,
    name: str | None = None,
    version: str | None = None,
) -> ServedModel:
    """Load the model at ``path`` and its card, check them against each other, pick its
    task adapter, warm up. The model is served as ``name`` (its file stem by default),
    version ``version`` (its card's by default)."""
    session = OnnxSession(path, GraphOptions.from_settings(settings))
    sha = sha256_of(path)
    card = served_card(
        path,
        sha,
        inputs={"name": session.input_name, "shape": session.input_shape},
        outputs={"name": session.output_name, "shape": session.output_shape},
    )
    task = adapter_for(card, settings)
    info = ModelInfo(
        name=name or path.stem,
        version=version or card.version,
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
    if session.provider == SIMULATED:
        log.warning(
            "model %s runs on the simulated device (CONVLSTM_PROVIDER=simulated): its "
            "answers are not predictions, only outputs of the model's shapes",
            info.name,
        )
    if session.fallback_reason is not None:
        log.warning("model %s runs on %s: %s", info.name, session.provider, session.fallback_reason)
    return ServedModel(runner, task)
