"""The app factory: settings in, a FastAPI app out. Wiring only: the registry loads and
drains the models in the app's lifespan, the routers speak the protocols, the middleware
limits and observes requests, and ``error_responses`` renders every error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.error_responses import add_error_handlers
from service.api.examples import follow_default_model
from service.api.middleware import BodySizeLimit, RequestObserver
from service.api.oip import router as oip_router
from service.api.oip_models import router as oip_models_router
from service.api.repository import router as repository_router
from service.api.routes import router
from service.api.stream_socket import OpenSockets
from service.api.stream_socket import router as stream_socket_router
from service.api.streams import router as streams_router
from service.api.timeseries import router as timeseries_router
from service.api.web import mount_web
from service.config import Settings
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.streams.service import StreamService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = ModelRegistry(settings, Metrics())
    streams = StreamService(settings, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.load()
        await streams.start()
        try:
            yield
        finally:
            registry.begin_drain("the service is shutting down")
            await streams.close()
            await registry.close()

    app = FastAPI(
        title="convlstm-serve",
        summary="Next-frame prediction with a convolutional LSTM on onnxruntime",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.streams = streams
    app.state.stream_sockets = OpenSockets()
    app.include_router(router)
    app.include_router(streams_router)
    app.include_router(stream_socket_router)
    app.include_router(oip_models_router)  # before oip_router: /v2/models/stats
    app.include_router(oip_router)
    app.include_router(repository_router)
    app.include_router(timeseries_router)
    mount_web(app)
    follow_default_model(app, registry)
    app.add_middleware(BodySizeLimit, registry=registry)
    app.add_middleware(RequestObserver, registry=registry)
    add_error_handlers(app)
    return app
