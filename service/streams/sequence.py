"""Triton's sequence parameters on the Open Inference Protocol's infer (over REST and
gRPC): ``sequence_id``, ``sequence_start`` and ``sequence_end`` map onto the same streams
as ``/v1/streams``.

As Triton's sequence batcher with implicit state: the first request of a sequence sets
``sequence_start`` (a start on an id in use begins it again from a zero state), every
request carries the id, and ``sequence_end`` frees the state after answering; an id left
unused for ``CONVLSTM_STREAM_IDLE_S`` expires. A request is one sequence (batch 1) of
k >= 1 frames, shape [1, k, H, W, C]; the answer is the model's output after them
([1, H, W, C]; [1, horizon, H, W, C] with ``parameters.horizon`` > 1).
"""

from __future__ import annotations

from typing import Any

from service.errors import InvalidInput
from service.streams.service import StreamService
from service.streams.table import Stream, UnknownStream


def sequence_id(parameters: dict[str, Any]) -> int | str | None:
    """The request's sequence id, or None when it names none (absent, 0 or "")."""
    value = parameters.get("sequence_id")
    if value is None or value == 0 or value == "":
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, int) and value < 0)
    ):
        raise InvalidInput(
            f"parameters.sequence_id: a non-negative integer or a string, got {value!r}"
        )
    if isinstance(value, str) and len(value) > 128:
        raise InvalidInput("parameters.sequence_id: at most 128 characters")
    return value


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameters.{name}: must be true or false, got {value!r}")
    return value


def check_sequence_shape(shape: list[int], frame: tuple[int, ...]) -> None:
    """A sequence request carries one sequence of k >= 1 frames: [1, k, H, W, C]."""
    if len(shape) != 2 + len(frame) or shape[0] != 1 or shape[1] < 1 or tuple(shape[2:]) != frame:
        dims = ", ".join(map(str, frame))
        raise InvalidInput(
            f"inputs[0].shape: a sequence request takes [1, k, {dims}] (one sequence of "
            f"k >= 1 frames), got {shape}"
        )


async def sequence_stream(
    streams: StreamService, model: str, seq: int | str, parameters: dict[str, Any]
) -> tuple[Stream, bool]:
    """The stream of sequence ``seq`` of ``model`` (opened anew on ``sequence_start``) and
    whether this request ends it."""
    start, end = _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end")
    key = f"oip:{model}:{seq}"
    if start:
        if key in streams.table.streams:
            await streams.close_stream(key)
        return await streams.open(model, stream_id=key), end
    try:
        return await streams.get(key), end
    except UnknownStream as err:
        why = streams.table.why_unknown(key)
        state = "expired" if "expired" in why else "was ended" if "closed" in why else "is unknown"
        raise UnknownStream(
            f"parameters.sequence_id: sequence {seq!r} of model {model!r} {state}; "
            "begin it with parameters.sequence_start = true"
        ) from err
