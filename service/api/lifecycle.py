"""The request life cycle every protocol front gives model work: the model's bounded queue
and deadline (in the scheduler), and cancellation when the client leaves (here).

A front awaits its model work through ``until_client_leaves``, so that a request nobody
waits for any more leaves the queue before it reaches the model, is counted as dropped
(``convlstm_dropped_requests_total{reason="client_gone"}``), and frees its queue slot.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import Request

from service.errors import ClientGone

T = TypeVar("T")


async def until_client_leaves(http: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (``ClientGone``).
    Call it once the request's body has been read: it listens for what the client
    sends next, which can only be the disconnect."""
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await http.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            results.append(await work)
        except Exception as err:  # raised below, outside the group, so not wrapped in one
            errors.append(err)
        group.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:
        raise ClientGone("the client disconnected before the answer was ready")
    return results[0]
