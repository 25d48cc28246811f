"""Dependencies the routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.errors import NotReady, Unauthorized, UnknownModel, UnsupportedMediaType
from service.inference.engine import InferenceEngine
from service.metrics import Metrics


@dataclass
class ServiceState:
    """What the lifespan sets up and the routes read; lives on ``app.state.service``."""

    settings: Settings
    metrics: Metrics
    engines: dict[str, InferenceEngine] = field(default_factory=dict)
    default_model: str = ""
    ready: bool = False
    not_ready_reason: str = field(default="the model is loading")
    draining: bool = False
    in_flight: int = 0

    @property
    def engine(self) -> InferenceEngine | None:
        """The default model's engine, once loaded."""
        return self.engines.get(self.default_model)

    def lookup(self, name: str | None) -> InferenceEngine:
        """The engine serving ``name`` (the default model when None)."""
        if not self.engines:
            raise NotReady(f"not ready: {self.not_ready_reason}")
        engine = self.engines.get(name or self.default_model)
        if engine is None:
            raise UnknownModel(
                f"model: no model named {name!r}; served: {', '.join(self.engines)}",
                location="model",
            )
        return engine

    def begin_drain(self, reason: str) -> None:
        """Readiness off and new work refused; what is in flight carries on."""
        self.draining, self.ready, self.not_ready_reason = True, False, reason
        self.metrics.ready.set(0)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_engine(state: StateDep) -> InferenceEngine:
    # Not `state.ready`: a request accepted before a drain began is still served.
    # New ones are refused earlier, by the middleware.
    return state.lookup(None)


EngineDep = Annotated[InferenceEngine, Depends(get_engine)]


def require_api_key(request: Request, state: StateDep) -> None:
    key = state.settings.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, bearer = auth.partition(" ")
    given = request.headers.get("x-api-key") or (bearer if scheme.lower() == "bearer" else "")
    # compare_digest takes the same time wherever the first difference is.
    if not given or not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        state.metrics.rejected.labels("unauthorized").inc()
        raise Unauthorized(
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            location="header.authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"content-type: expected application/json, got {content_type or 'none'}",
            location="header.content-type",
        )
