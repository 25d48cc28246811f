"""The one error table as gRPC codes, and gRPC health before the models are loaded: in
process, no server."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from service import errors
from service.config import Settings
from service.grpc.errors import status_code
from service.grpc.servicer import HealthServicer
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.streams.table import StreamsFull, UnknownStream

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput, C.INVALID_ARGUMENT),
        (errors.UnsupportedMediaType, C.INVALID_ARGUMENT),
        (errors.ModelNotLoaded, C.INVALID_ARGUMENT),
        (errors.UnknownModel, C.NOT_FOUND),
        (UnknownStream, C.NOT_FOUND),
        (errors.Unauthorized, C.UNAUTHENTICATED),
        (errors.Overloaded, C.RESOURCE_EXHAUSTED),
        (StreamsFull, C.RESOURCE_EXHAUSTED),
        (errors.PayloadTooLarge, C.RESOURCE_EXHAUSTED),
        (errors.DeadlineExceeded, C.DEADLINE_EXCEEDED),
        (errors.NotReady, C.UNAVAILABLE),
        (errors.ShuttingDown, C.UNAVAILABLE),
        (errors.ModelRunFailed, C.UNAVAILABLE),
        (errors.ClientGone, C.CANCELLED),
        (errors.ModelControlOff, C.PERMISSION_DENIED),
        (errors.ModelInUse, C.FAILED_PRECONDITION),
        (errors.ModelLoadError, C.INTERNAL),
    ],
)
def test_error_table(error: type[errors.ServiceError], code: grpc.StatusCode) -> None:
    assert status_code(error("why")) == code


def test_health_is_not_serving_until_loaded_nor_while_draining() -> None:
    registry = ModelRegistry(Settings(), Metrics())
    health = HealthServicer(registry)
    response = health_pb2.HealthCheckResponse
    assert health._status("") == response.NOT_SERVING
    registry.ready = True
    assert health._status("inference.GRPCInferenceService") == response.SERVING
    assert health._status("other") == response.SERVICE_UNKNOWN
    registry.begin_drain("test")
    assert health._status("") == response.NOT_SERVING
