"""The app factory: settings in, a FastAPI app out, the model loaded in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service import __version__
from service.api.deps import ServiceState
from service.api.middleware import BodySizeLimit, RequestObserver
from service.api.oip import is_oip_path, oip_error
from service.api.oip import router as oip_router
from service.api.routes import router
from service.api.web import mount_web
from service.config import Settings
from service.errors import ModelLoadError, ServiceError
from service.inference.engine import InferenceEngine
from service.inference.session import GPU_PROVIDERS
from service.metrics import Metrics

log = logging.getLogger(__name__)

_HTTP_ERROR_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            for path in settings.model_paths():
                engine = await anyio.to_thread.run_sync(
                    InferenceEngine.load, settings, state.metrics, path
                )
                await engine.start()
                _describe_model(state, engine)
                state.engines[engine.info.name] = engine
        except ModelLoadError as err:
            log.error("cannot serve: %s", err.message)
            for engine in state.engines.values():
                await engine.stop()
            raise
        state.default_model = settings.model_path.stem
        state.ready = True
        state.metrics.ready.set(1)
        try:
            yield
        finally:
            state.begin_drain("the service is shutting down")
            for engine in state.engines.values():
                await engine.stop()

    app = FastAPI(
        title="convlstm-serve",
        summary="Next-frame prediction with a convolutional LSTM on onnxruntime",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.include_router(oip_router)
    mount_web(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, state=state)
    _add_error_handlers(app)
    return app


def _describe_model(state: ServiceState, engine: InferenceEngine) -> None:
    info, metrics, session = engine.info, state.metrics, engine.session
    metrics.model_info.labels(info.name, info.version, info.sha256, info.provider).set(1)
    metrics.queue_depth.labels(info.name).set_function(lambda: engine.scheduler.queued)
    wanted = session.requested[0]
    if wanted in GPU_PROVIDERS and session.provider != wanted:
        metrics.provider_fallback.labels(wanted, session.provider).set(1)


def error_response(
    status: int,
    error_type: str,
    message: str,
    location: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    detail: dict[str, Any] = {"type": error_type, "message": message}
    if location is not None:
        detail["location"] = location
    if errors is not None:
        detail["errors"] = errors
    return JSONResponse(status_code=status, content={"error": detail})


def _location(loc: tuple[int | str, ...]) -> str:
    """('body', 'frames', 3) -> 'frames[3]'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    where = _location(tuple(error.get("loc", ())))
    if error.get("type") == "extra_forbidden":
        message = f"{where}: unknown field"
    elif error.get("type") == "json_invalid":
        ctx = error.get("ctx", {})
        message = f"body is not valid JSON: {ctx.get('error', error.get('msg'))}"
    elif where == "body" and error.get("type") == "missing":
        message = "body is empty; send a JSON object with 'frames' or 'tensor'"
    elif where == "body" and error.get("type") == "value_error":
        message = str(error.get("msg", "")).removeprefix("Value error, ")
    else:
        message = f"{where}: {error.get('msg')}"
    return {"location": where, "message": message}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if is_oip_path(request.url.path):
            response = oip_error(exc.status_code, exc.message)
        else:
            response = error_response(exc.status_code, exc.error_type, exc.message, exc.location)
        response.headers.update(exc.headers)
        if exc.status_code == 503:
            response.headers.setdefault("Retry-After", "1")
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(dict(e)) for e in exc.errors()]
        if is_oip_path(request.url.path):
            return oip_error(400, "; ".join(p["message"] for p in problems))
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(400, "invalid_json", problems[0]["message"], "body")
        shown = "; ".join(p["message"] for p in problems[:3])
        if len(problems) > 3:
            shown += f"; and {len(problems) - 3} more problems"
        return error_response(
            422,
            "invalid_input",
            shown,
            problems[0]["location"],
            problems if len(problems) > 1 else None,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for it
            error_type, message = (
                "invalid_json",
                "body could not be parsed as JSON (nested too deeply?)",
            )
        response = (
            oip_error(exc.status_code, message)
            if is_oip_path(request.url.path)
            else error_response(exc.status_code, error_type, message)
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if is_oip_path(request.url.path):
            return oip_error(500, "internal error; see the server log")
        return error_response(500, "internal_error", "internal error; see the server log")
