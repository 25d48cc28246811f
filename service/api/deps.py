"""Dependencies the routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.admission import check_api_key
from service.errors import UnsupportedMediaType
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
    check_api_key(
        registry, request.headers.get("authorization", ""), request.headers.get("x-api-key", "")
    )


async def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"content-type: expected application/json, got {content_type or 'none'}",
            location="header.content-type",
        )
