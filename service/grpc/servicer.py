"""The gRPC services: Triton's ``inference.GRPCInferenceService`` (health, metadata,
configuration, statistics, the model repository, inference, streamed inference; the
shared-memory, trace and logging RPCs answer UNIMPLEMENTED) and
``grpc.health.v1.Health``. Each RPC admits the call, checks the API key and counts it as
the HTTP middleware does, then calls the data plane; a ``ServiceError`` becomes the status ``errors.status_code`` gives
it, with the message HTTP sends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.grpc.model_config_pb2 import ModelConfig

from service import dataplane
from service.admission import admit, check_api_key
from service.errors import ServiceError
from service.grpc.convert import infer_request, infer_response, model_metadata, parameters
from service.grpc.errors import status_code
from service.registry import ModelRegistry
from service.streams.service import StreamService

log = logging.getLogger("service.grpc")
T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
HEALTH_POLL_S = 0.5
"""How often ``Health.Watch`` looks at readiness."""
STREAM_WINDOW = 16
"""Requests of one ``ModelStreamInfer`` call being answered at once; the stream reads no
further until the oldest is answered (back-pressure on a client that sends faster)."""


async def _direct(work: Awaitable[Any]) -> Any:
    # gRPC cancels the handler itself when the client cancels or its deadline passes;
    # the cancellation reaches the queued job through this await.
    return await work


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: ModelRegistry, streams: StreamService) -> None:
        self.registry = registry
        self.streams = streams

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.registry.fully_ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            ready = dataplane.model_ready(self.registry, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await self._call(context, "ModelReady", work, observed=False, auth=False)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            return pb.ServerMetadataResponse(**dataplane.server_metadata(self.streams))

        return await self._call(context, "ServerMetadata", work, auth=False)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            meta = dataplane.metadata(self.registry, request.name, request.version or None)
            return model_metadata(meta)

        return await self._call(context, "ModelMetadata", work)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            config = dataplane.model_config(self.registry, request.name, request.version or None)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, ModelConfig()))

        return await self._call(context, "ModelConfig", work)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            stats = dataplane.statistics(self.registry, request.name, request.version or None)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

        return await self._call(context, "ModelStatistics", work)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            response = pb.RepositoryIndexResponse()
            for row in self.registry.index(ready_only=request.ready):
                response.models.add(
                    name=row.name, version=row.version, state=row.state, reason=row.reason
                )
            return response

        return await self._call(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> Any:
            dataplane.check_load_parameters(parameters(request.parameters))
            await self.registry.load_named(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        async def work() -> Any:
            await self.registry.unload_named(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, "RepositoryModelUnload", work)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call(context, "ModelInfer", lambda: self._infer(request))

    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Each request answered in the order it came, by a response or an error message
        (the stream stays open, as Triton's). Plain requests run concurrently, up to
        ``STREAM_WINDOW`` at a time; a sequence request waits for those before it, so the
        steps of a sequence reach its stream in order."""
        try:
            check_api_key(self.registry, *_credentials(context))
        except ServiceError as err:
            await context.abort(status_code(err), err.message)
        answers: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            running: set[asyncio.Task[Any]] = set()
            try:
                async for request in requests:
                    if running and "sequence_id" in request.parameters:
                        await asyncio.wait(running)
                    task = asyncio.ensure_future(self._stream_answer(request, context))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    await answers.put(task)
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
            await reader  # a broken request stream is the call's error
        finally:
            reader.cancel()
            while not answers.empty():
                if (task := answers.get_nowait()) is not None:
                    task.cancel()

    async def _stream_answer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            answer = await self._observe(
                context, "ModelStreamInfer", lambda: self._infer(request), auth=False
            )
        except ServiceError as err:
            return pb.ModelStreamInferResponse(
                error_message=err.message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        return pb.ModelStreamInferResponse(infer_response=answer)

    async def _infer(self, request: Any) -> Any:
        model = self.registry.lookup(request.model_name, request.model_version or None)
        req, binary = infer_request(request)
        out = await dataplane.infer(req, binary, model, self.streams, _direct)
        return infer_response(req, model, out)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[], Awaitable[T]],
        *,
        observed: bool = True,
        auth: bool = True,
    ) -> T:
        """``_observe``, its ``ServiceError`` as the call's status."""
        try:
            return await self._observe(context, method, work, observed=observed, auth=auth)
        except ServiceError as err:
            await context.abort(status_code(err), err.message)
        raise AssertionError("unreachable: abort raises")

    async def _observe(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[], Awaitable[T]],
        *,
        observed: bool = True,
        auth: bool = True,
    ) -> T:
        """``work`` admitted (``observed``: refused while draining or past the in-flight
        limit, counted and timed) behind the API key (``auth``); any failure is a
        ``ServiceError``."""
        metrics = self.registry.metrics
        route = f"/{SERVICE}/{method}"
        start = time.perf_counter()
        status = 500
        epoch: int | None = None
        try:
            if observed:
                admit(self.registry)
            if auth:
                check_api_key(self.registry, *_credentials(context))
            if observed:
                metrics.in_flight.inc()
                epoch = self.registry.request_began()
            result = await work()
            status = 200
            return result
        except ServiceError as err:
            status = err.status_code
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as err:
            # The trace goes to the log, never to the client.
            log.exception("unhandled error in %s", route)
            raise ServiceError("internal error; see the server log") from err
        finally:
            if epoch is not None:
                metrics.in_flight.dec()
                self.registry.request_ended(epoch)
            if observed:
                metrics.requests.labels(route, "GRPC", str(status)).inc()
                metrics.request_seconds.labels(route, "GRPC").observe(time.perf_counter() - start)


def _credentials(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """The call's ``authorization`` and ``x-api-key`` metadata (gRPC lowercases keys)."""
    metadata = dict(context.invocation_metadata() or ())
    authorization, api_key = metadata.get("authorization", ""), metadata.get("x-api-key", "")
    return (
        authorization if isinstance(authorization, str) else "",
        api_key if isinstance(api_key, str) else "",
    )


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` for the server ("") and the inference service: SERVING
    only while ``/v2/health/ready`` says ready (loaded, not draining, and under
    ``CONVLSTM_STRICT_READINESS`` no model failed)."""

    SERVICES = frozenset({"", SERVICE})

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def _status(self, service: str) -> Any:
        if service not in self.SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if self.registry.fully_ready:
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if request.service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        last = None
        while True:
            now = self._status(request.service)
            if now != last:
                yield health_pb2.HealthCheckResponse(status=now)
                last = now
            await asyncio.sleep(HEALTH_POLL_S)
