"""Dependencies the routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.errors import NotReady, UnsupportedMediaType
from service.inference.engine import InferenceEngine
from service.metrics import Metrics


@dataclass
class ServiceState:
    """What the lifespan sets up and the routes read; lives on ``app.state.service``."""

    settings: Settings
    metrics: Metrics
    engine: InferenceEngine | None = None
    ready: bool = False
    not_ready_reason: str = field(default="the model is loading")


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_engine(state: StateDep) -> InferenceEngine:
    if not state.ready or state.engine is None:
        raise NotReady(f"not ready: {state.not_ready_reason}")
    return state.engine


EngineDep = Annotated[InferenceEngine, Depends(get_engine)]


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"content-type: expected application/json, got {content_type or 'none'}",
            location="header.content-type",
        )
