"""Every error answer the service gives, rendered here and nowhere else, in the shape of
the protocol the request spoke:

- the native routes: ``{"error": {"type", "message", "location", "errors"}}``;
- the Open Inference Protocol (``/v2/...``): ``{"error": "<message>"}``, as it says.

The exception handlers (service errors, request validation, HTTP errors, anything
unexpected) and the ASGI middleware, which answers before any route runs, all build
their bodies with ``error_body``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Send

from service.errors import ServiceError

log = logging.getLogger(__name__)

OIP_PREFIX = "/v2"
"""Where the Open Inference Protocol's routes live."""
TIMESERIES_PREFIX = "/v1/timeseries"
"""Where KServe's time-series API lives; its errors are
``{"error": {"code": "<status>", "message", "param", "type"}}``, as KServe answers."""

_HTTP_ERROR_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def is_oip_path(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(f"{OIP_PREFIX}/")


def error_body(
    path: str,
    error_type: str,
    message: str,
    location: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    status: int = 500,
) -> dict[str, Any]:
    """The JSON body of an error answered on ``path`` with ``status``."""
    if is_oip_path(path):
        return {"error": message}
    if path.startswith(f"{TIMESERIES_PREFIX}/"):
        param = location or ""
        return {
            "error": {"code": str(status), "message": message, "param": param, "type": error_type}
        }
    detail: dict[str, Any] = {"type": error_type, "message": message}
    if location is not None:
        detail["location"] = location
    if errors is not None:
        detail["errors"] = errors
    return {"error": detail}


def error_response(
    path: str,
    status: int,
    error_type: str,
    message: str,
    location: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=error_body(path, error_type, message, location, errors, status),
        headers=headers,
    )


async def send_error(
    send: Send,
    path: str,
    status: int,
    error_type: str,
    message: str,
    *,
    retry_after: bool = False,
) -> None:
    """The same answer, sent from ASGI middleware; the connection is closed after it,
    since the request's body may not have been read."""
    body = json.dumps(error_body(path, error_type, message, status=status)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = dict(exc.headers)
        if exc.status_code == 503:
            headers.setdefault("Retry-After", "1")
        return error_response(
            request.url.path,
            exc.status_code,
            exc.error_type,
            exc.message,
            exc.location,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        problems = [_describe(dict(e)) for e in exc.errors()]
        if is_oip_path(path):
            return error_response(
                path, 400, "invalid_input", "; ".join(p["message"] for p in problems)
            )
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(path, 400, "invalid_json", problems[0]["message"], "body")
        shown = "; ".join(p["message"] for p in problems[:3])
        if len(problems) > 3:
            shown += f"; and {len(problems) - 3} more problems"
        return error_response(
            path,
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
        return error_response(
            request.url.path, exc.status_code, error_type, message, headers=exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went (or the server cut it: a body timeout) before its body was
        # read: nothing to answer and no fault of the server's, so one line, not a
        # traceback. The response is never delivered.
        log.info(
            "%s %s: the client left before its body was read", request.method, request.url.path
        )
        return error_response(request.url.path, 400, "client_disconnected", "the client left")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request.url.path, 500, "internal_error", "internal error; see the server log"
        )
