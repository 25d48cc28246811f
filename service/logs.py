"""Logging: the request id on every line, as text or as JSON lines; in a traced request
the JSON lines also carry its ``trace_id`` and ``span_id``, as OpenTelemetry writes them
(32 and 16 hex digits), so a log line leads to its trace."""

from __future__ import annotations

import contextvars
import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being handled ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class TraceIdFilter(logging.Filter):
    """Stamps a record made inside a traced request with its trace and span ids (the
    JSON formatter writes every extra attribute of a record); others get none."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True


class OneLineStartupFailure(logging.Filter):
    """Starlette hands uvicorn the full traceback of a failed lifespan; the lifespan
    has already logged the cause in one line, so the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Traceback") and "ModelLoadError" in text)


def configure(level: str, fmt: str) -> None:
    """Route the service's and uvicorn's loggers to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(OneLineStartupFailure())
    if fmt == "json":
        handler.addFilter(TraceIdFilter())
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The service writes its own access line, with the request id and duration.
    logging.getLogger("uvicorn.access").disabled = True
