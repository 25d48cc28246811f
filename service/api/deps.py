"""Dependencies the routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized, UnsupportedMediaType
from service.registry import ModelRegistry, ServedModel


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


async def get_default_model(registry: RegistryDep) -> ServedModel:
    # Not `registry.ready`: a request accepted before a drain began is still served.
    # New ones are refused earlier, by the middleware.
    return registry.lookup(None)


DefaultModelDep = Annotated[ServedModel, Depends(get_default_model)]


async def require_api_key(request: Request, registry: RegistryDep) -> None:
    key = registry.settings.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, bearer = auth.partition(" ")
    given = request.headers.get("x-api-key") or (bearer if scheme.lower() == "bearer" else "")
    # compare_digest takes the same time wherever the first difference is.
    if not given or not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        registry.metrics.rejected.labels("unauthorized").inc()
        raise Unauthorized(
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            location="header.authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"content-type: expected application/json, got {content_type or 'none'}",
            location="header.content-type",
        )
