"""The gRPC server beside uvicorn: started once the models are loaded (its message limit
follows them), stopped before the models are closed."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from service import tracing
from service.api.body_limit import grpc_message_limit
from service.grpc.servicer import HealthServicer, InferenceServicer
from service.registry import ModelRegistry
from service.streams.service import StreamService

log = logging.getLogger("service.grpc")


def _tracing_interceptors(wanted: bool | None) -> list[grpc.aio.ServerInterceptor]:
    """A server span per RPC (the caller's ``traceparent`` metadata continued), health
    checks left out as on HTTP; none when tracing is off."""
    if not tracing.wanted(wanted):
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    tracing.configure()
    health = filters.service_name("grpc.health.v1.Health")
    # The instrumentation ships no type hints for this factory.
    return [aio_server_interceptor(filter_=filters.negate(health))]  # type: ignore[no-untyped-call]


async def start_grpc(registry: ModelRegistry, streams: StreamService) -> grpc.aio.Server | None:
    """The gRPC server listening on ``CONVLSTM_HOST:CONVLSTM_GRPC_PORT``, or None when
    the port is 0. ``RuntimeError`` if it cannot listen there."""
    settings = registry.settings
    if settings.grpc_port == 0:
        return None
    limit = grpc_message_limit(registry)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # gRPC binds with SO_REUSEPORT by default: a second server on the same port
            # would start and silently take half the calls, instead of failing.
            ("grpc.so_reuseport", 0),
        ],
        interceptors=_tracing_interceptors(settings.tracing),
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(registry, streams), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(registry), server)
    host = settings.host
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    log.info("gRPC listening on %s (messages up to %d bytes)", address, limit)
    return server
