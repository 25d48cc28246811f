"""One small error hierarchy; each error carries its HTTP status and a stable type name.

The inference layer and the task adapters raise these without knowing HTTP;
``service.api.error_responses`` renders every one of them the same way, in the shape of
the protocol the request spoke: ``{"error": {"type", "message", "location"}}`` on the
native routes, ``{"error": "<message>"}`` on the Open Inference Protocol's.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.headers = headers or {}


class InvalidInput(ServiceError):
    """The request is well-formed JSON but its content cannot be used."""

    status_code = 422
    error_type = "invalid_input"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class UnknownModel(ServiceError):
    status_code = 404
    error_type = "unknown_model"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"


class NotReady(ServiceError):
    status_code = 503
    error_type = "not_ready"


class ShuttingDown(NotReady):
    error_type = "shutting_down"


class Overloaded(ServiceError):
    """The queue in front of the model is full: come back later, not never."""

    status_code = 503
    error_type = "overloaded"


class ModelRunFailed(ServiceError):
    """The device failed a batch (out of memory, a lost device): the requests in it get
    503 and may be retried; the process and the other models carry on."""

    status_code = 503
    error_type = "model_run_failed"


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"


class ModelLoadError(ServiceError):
    """The model cannot be served: missing, corrupt, or not what its card says."""

    error_type = "model_load_error"


class GpuUnavailable(ModelLoadError):
    """``require_gpu`` is set and no GPU provider started: the server stays up, not
    ready, saying why, rather than exiting into a restart loop."""


class ModelNotLoaded(ServiceError):
    """A control call asked to load a model that cannot be served; whatever served
    under its name still does (Triton answers a failed load with 400 too)."""

    status_code = 400
    error_type = "model_load_failed"


class ModelControlOff(ServiceError):
    """A control call the ``model_control`` setting does not allow."""

    status_code = 403
    error_type = "model_control_off"


class ModelInUse(ServiceError):
    """A control call that would leave the service without its default model."""

    status_code = 409
    error_type = "model_in_use"


class ClientGone(ServiceError):
    """The client disconnected; nginx's 499, so that metrics and logs can tell."""

    status_code = 499
    error_type = "client_closed_request"
