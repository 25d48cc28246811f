"""The Open Inference Protocol's model repository extension, as Triton speaks it: the
index of the models and versions the directory holds, and load and unload by name.

Behind the API key. The index always answers; load and unload only with
``CONVLSTM_MODEL_CONTROL=explicit`` (403 otherwise). The work is the registry's: a load
warms the new version up beside the old one and swaps them without dropping a request.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import dataplane
from service.api.deps import RegistryDep, require_api_key
from service.api.error_responses import OIP_PREFIX
from service.errors import InvalidInput

router = APIRouter(
    prefix=f"{OIP_PREFIX}/repository",
    tags=["open inference protocol: model repository"],
    dependencies=[Depends(require_api_key)],
)


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository_name: str = ""
    ready: bool = False
    """Only the versions ready for inference."""


class ControlRequest(BaseModel):
    """Triton's load and unload bodies. A load's ``config`` and ``file:`` overrides (a
    model sent in the request) are refused: models come from the directory."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict)


class IndexRow(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, UNLOADING or UNAVAILABLE")
    reason: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not what the extension takes, or the load failed"},
    401: {"description": "an API key is configured and the request did not carry it"},
    403: {"description": "model control is off (CONVLSTM_MODEL_CONTROL)"},
    404: {"description": "no model of that name in the repository"},
    409: {"description": "the default model cannot be unloaded"},
}


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body as ``model``; tritonclient sends an empty one for the index."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}", location=where) from None


@router.post("/index", summary="The models and versions of the repository, with their state")
async def index(request: Request, registry: RegistryDep) -> list[IndexRow]:
    body: IndexRequest = await _body(request, IndexRequest)
    return [IndexRow(**asdict(row)) for row in registry.index(ready_only=body.ready)]


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model from the directory; the new version replaces the old "
    "without dropping a request",
    responses=_ERRORS,
)
async def load(name: str, request: Request, registry: RegistryDep) -> Response:
    body: ControlRequest = await _body(request, ControlRequest)
    dataplane.check_load_parameters(body.parameters)
    await registry.load_named(name)
    return Response(status_code=200)


@router.post(
    "/models/{name}/unload",
    summary="Stop serving every version of a model; each is released once drained",
    responses=_ERRORS,
)
async def unload(name: str, request: Request, registry: RegistryDep) -> Response:
    await _body(request, ControlRequest)
    await registry.unload_named(name)
    return Response(status_code=200)
