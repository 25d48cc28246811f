"""What every protocol front decides before it handles a request, in one place: whether
the service takes new requests now (not while draining, not past
``CONVLSTM_MAX_IN_FLIGHT``), and whether the request carries the API key. The HTTP
middleware and dependencies and the gRPC servicer raise these same errors, each in its
own protocol's shape."""

from __future__ import annotations

import hmac

from service.errors import Overloaded, ShuttingDown, Unauthorized
from service.registry import ModelRegistry

API_KEY_HINT = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def admit(registry: ModelRegistry) -> None:
    """Refuse a new request while draining (``ShuttingDown``) or when
    ``CONVLSTM_MAX_IN_FLIGHT`` requests are in flight (``Overloaded``), counting why."""
    if registry.draining:
        registry.metrics.rejected.labels("shutting_down").inc()
        raise ShuttingDown("the service is shutting down; retry on another replica")
    # Counted here, not by uvicorn's limit_concurrency: that one counts open connections
    # too (idle keep-alive ones included) and answers a bare text 503.
    limit = registry.settings.max_in_flight
    if registry.in_flight >= limit:
        registry.metrics.rejected.labels("too_many_requests").inc()
        raise Overloaded(f"{limit} requests in flight (CONVLSTM_MAX_IN_FLIGHT); retry shortly")


def check_api_key(registry: ModelRegistry, authorization: str, api_key: str) -> None:
    """``Unauthorized`` unless the configured key (if any) came as ``authorization``
    (``Bearer <key>``) or ``api_key`` (the ``X-API-Key`` header or metadata)."""
    key = registry.settings.api_key
    if key is None:
        return
    scheme, _, bearer = authorization.partition(" ")
    given = api_key or (bearer if scheme.lower() == "bearer" else "")
    # compare_digest takes the same time wherever the first difference is.
    if not given or not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        registry.metrics.rejected.labels("unauthorized").inc()
        raise Unauthorized(
            API_KEY_HINT, location="header.authorization", headers={"WWW-Authenticate": "Bearer"}
        )
