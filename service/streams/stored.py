"""A stream as the store holds it and back (``StoredStream`` <-> ``Stream``), and the
check that a stored stream belongs to a model version served here: 410 when that
version is gone, 409 when its state is of another model file or shape."""

from __future__ import annotations

import time

from service.errors import ServiceError
from service.streams.session import State
from service.streams.store import CorruptState, StoredStream
from service.streams.table import Stream


class StreamGone(ServiceError):
    """The stream existed, but can no longer be stepped: its model version is no longer
    served, or it reached ``max_stream_duration_s``."""

    status_code = 410
    error_type = "stream_gone"


def to_stored(stream: Stream, state: State | None = None) -> StoredStream:
    """``stream`` as the store keeps it, with ``state`` instead of its own if given."""
    return StoredStream(
        id=stream.id,
        model=stream.model,
        version=stream.model_version,
        sha256=stream.sha256,
        frames_seen=stream.frames_seen,
        steps=stream.steps,
        created=stream.created,
        last_used=stream.last_used_wall,
        state=stream.state if state is None else state,
    )


def check_stored(
    stored: StoredStream,
    served_version: str | None,
    sha256: str,
    state_shapes: dict[str, tuple[int, ...]],
) -> None:
    """``StreamGone`` when the stored stream's model version is not the one served
    (``served_version``, None when the model serves no streams here); ``CorruptState``
    naming the difference when its state is of another file or shape."""
    if served_version != stored.version:
        now = f"version {served_version} is served" if served_version else "it serves no streams"
        raise StreamGone(
            f"stream_id: stream {stored.id!r} was opened on model {stored.model!r} version "
            f"{stored.version}, which this server no longer serves ({now}); open a new stream",
            location="stream_id",
        )
    why = None
    shapes = {name: tuple(value.shape) for name, value in stored.state.items()}
    if stored.sha256 != sha256:
        why = f"is of model file sha256 {stored.sha256[:12]}..., not {sha256[:12]}..."
    elif shapes != state_shapes:
        why = f"has tensors {shapes}, the step graph takes {state_shapes}"
    if why is not None:
        raise CorruptState(
            f"stream_id: the stored state of stream {stored.id!r} {why}; the stream is "
            "closed, open a new one",
            location="stream_id",
        )


def restore(stored: StoredStream, into: Stream | None, state_bytes: int) -> Stream:
    """The stream ``stored`` holds: ``into`` brought up to it, or a new ``Stream``."""
    stream = into or Stream(stored.id, stored.model, stored.state, state_bytes)
    stream.state = stored.state
    stream.model_version, stream.sha256 = stored.version, stored.sha256
    stream.frames_seen, stream.steps = stored.frames_seen, stored.steps
    stream.created, stream.last_used_wall = stored.created, stored.last_used
    # Idle time as the store saw it, on this process's monotonic clock.
    stream.last_used = time.monotonic() - max(0.0, time.time() - stored.last_used)
    return stream
