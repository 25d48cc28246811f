"""Triton's model configuration and statistics extensions over REST:
``/v2/models[/{name}[/versions/{version}]]/stats`` and
``/v2/models/{name}[/versions/{version}]/config``, in Triton's JSON shapes, behind the
API key. The data plane builds both answers; gRPC's ``ModelConfig`` and
``ModelStatistics`` send the same ones as protobuf."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service import dataplane
from service.api.deps import RegistryDep, require_api_key
from service.api.error_responses import OIP_PREFIX

router = APIRouter(
    prefix=f"{OIP_PREFIX}/models",
    tags=["open inference protocol"],
    dependencies=[Depends(require_api_key)],
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "an API key is configured and the request did not carry it"},
    404: {"description": "no served model (or version) has that name"},
}


# Registered before ``/models/{name}`` (``service.app``): "stats" is not a model name here.
@router.get("/stats", summary="Statistics of every served model version", responses=_ERRORS)
async def all_stats(registry: RegistryDep) -> dict[str, Any]:
    return dataplane.statistics(registry, "", None)


@router.get("/{name}/stats", summary="Statistics of every version of a model", responses=_ERRORS)
async def model_stats(name: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.statistics(registry, name, None)


@router.get(
    "/{name}/versions/{version}/stats",
    summary="Statistics of one version of a model",
    responses=_ERRORS,
)
async def version_stats(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.statistics(registry, name, version)


@router.get(
    "/{name}/config",
    summary="Model configuration, in the JSON form of Triton's ModelConfig",
    responses=_ERRORS,
)
async def model_config(name: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.model_config(registry, name, None)


@router.get(
    "/{name}/versions/{version}/config",
    summary="Model configuration of one version",
    responses=_ERRORS,
)
async def version_config(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return dataplane.model_config(registry, name, version)
