"""The service's one error table (``service.errors``) as gRPC status codes. The message
is the one HTTP answers with; only the code is the transport's."""

from __future__ import annotations

import grpc

from service.errors import (
    ClientGone,
    DeadlineExceeded,
    ModelControlOff,
    ModelInUse,
    ModelRunFailed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnknownModel,
)
from service.streams.table import StreamsFull, UnknownStream

# Most specific first: ShuttingDown is a NotReady.
CODES: list[tuple[type[ServiceError], grpc.StatusCode]] = [
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownModel, grpc.StatusCode.NOT_FOUND),
    (UnknownStream, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamsFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (ModelRunFailed, grpc.StatusCode.UNAVAILABLE),
    (ClientGone, grpc.StatusCode.CANCELLED),
    (ModelControlOff, grpc.StatusCode.PERMISSION_DENIED),
    (ModelInUse, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The gRPC status of ``error``: from the table, else INVALID_ARGUMENT for any other
    4xx (bad input, a failed load) and INTERNAL for the rest."""
    for kind, code in CODES:
        if isinstance(error, kind):
            return code
    if 400 <= error.status_code < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL
