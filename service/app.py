"""The app factory: settings in, a FastAPI app out. Wiring only: the registry loads and
drains the models in the app's lifespan, the routers speak the protocols, the middleware
limits and observes requests, and ``error_responses`` renders every error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__, tracing
from service.api.error_responses import add_error_handlers
from service.api.examples import follow_default_model
from service.api.middleware import BodySizeLimit, RequestObserver
from service.api.oip import router as oip_router
from service.api.repository import router as repository_router
from service.api.routes import router
from service.api.streams import router as streams_router
from service.api.timeseries import router as timeseries_router
from service.api.web import mount_web
from service.config import Settings
from service.metrics import Metrics
from service.payload_log import PayloadCapture, PayloadLogger
from service.registry import ModelRegistry
from service.series_accuracy import SeriesAccuracy
from service.streams.service import StreamService


def add_tracing(app: FastAPI) -> None:
    """The server span of every HTTP request, outermost, so that admission refusals and
    the access log line are in it; the caller's ``traceparent`` is continued."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import parse_excluded_urls

    tracing.configure()
    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=parse_excluded_urls(tracing.EXCLUDED_URLS),
        # Its spans per ASGI message would outnumber the service's own.
        exclude_spans=["receive", "send"],
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = ModelRegistry(settings, Metrics())
    streams = StreamService(settings, registry)
    payload_logger = None
    if settings.payload_log_url is not None:
        payload_logger = PayloadLogger(
            settings.payload_log_url,
            settings.payload_log_mode,
            max_queue=settings.payload_log_queue,
            timeout_s=settings.payload_log_timeout_s,
            events=registry.metrics.payload_log_events,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.load()
        await streams.start()
        if payload_logger is not None:
            payload_logger.start()
        try:
            yield
        finally:
            registry.begin_drain("the service is shutting down")
            await streams.close()
            await registry.close()
            if payload_logger is not None:
                await asyncio.to_thread(payload_logger.stop)
            tracing.flush()

    app = FastAPI(
        title="convlstm-serve",
        summary="Next-frame prediction with a convolutional LSTM on onnxruntime",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.streams = streams
    app.state.series_accuracy = SeriesAccuracy(registry.metrics, settings.series_accuracy_series)
    app.include_router(router)
    app.include_router(streams_router)
    app.include_router(oip_router)
    app.include_router(repository_router)
    app.include_router(timeseries_router)
    mount_web(app)
    follow_default_model(app, registry)
    app.add_middleware(BodySizeLimit, registry=registry)
    if payload_logger is not None:
        # Inside RequestObserver: the events carry its request id.
        app.add_middleware(
            PayloadCapture, logger=payload_logger, default_model=registry.default_name
        )
    app.add_middleware(RequestObserver, registry=registry)
    if tracing.wanted(settings.tracing):
        add_tracing(app)
    add_error_handlers(app)
    return app
