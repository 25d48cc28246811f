"""The request body limit: the one ``CONVLSTM_MAX_BODY_BYTES`` sets, or else the size of
the largest valid request the served models take.

A fixed default cannot fit every model: 2 MiB refused a single sequence of the committed
model sent as Open Inference Protocol JSON, and any default large enough for a big model
lets a small one be sent megabytes it would refuse after reading them. So the default
follows the cards: ``max_batch_size`` sequences of the largest input, as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from service.registry import ModelRegistry

SETTING = "CONVLSTM_MAX_BODY_BYTES"
JSON_BYTES_PER_VALUE = 32
"""A float32 value as a client's JSON encoder writes it: Python's ``repr`` of the float64
it becomes takes up to 24 characters (``-1.2345678901234567e-05``), the separator
``", "`` two more; the rest covers the brackets of nested lists. The binary tensor
extension (4 bytes a value) and ``/predict``'s base64 tensor (5.4) are far smaller."""
ENVELOPE_BYTES = 64 * 1024
"""The request around the values: names, shapes, parameters, a binary header."""
FLOOR_BYTES = 2 * 1024 * 1024
"""The limit is never below the fixed default it replaced: a series model's client may
send a long history, of which the model reads only the last window."""
_MAX_LENGTH_DIGITS = 18
"""A length header longer than this is past any limit; ``int()`` refuses more than 4,300
digits with a ValueError, which a fuzzed header reached as a 500."""


def declared_length(value: str | bytes) -> int | None:
    """A length header's value (``Content-Length``, ``Inference-Header-Content-Length``)
    as an int, or None unless it is 1 to 18 ASCII digits: ``str.isdigit`` also takes
    ``"²"``, which ``int()`` refuses."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not (0 < len(text) <= _MAX_LENGTH_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


@dataclass(frozen=True)
class BodyLimit:
    bytes: int
    source: Literal["setting", "models"]

    def refusal(self) -> str:
        """The 413 message: the limit and the setting that moves it."""
        where = "set by" if self.source == "setting" else "derived from the served models; set"
        return f"request body is larger than the limit of {self.bytes} bytes ({where} {SETTING})"


def largest_request_bytes(
    input_shapes: Iterable[list[int | str]],
    max_batch: int,
    bytes_per_value: int = JSON_BYTES_PER_VALUE,
) -> int:
    """The size of ``max_batch`` sequences of the largest of ``input_shapes`` (each with
    its batch axis first) at ``bytes_per_value`` (JSON's by default), at least
    ``FLOOR_BYTES``. A named axis other than the batch counts as 1: the served tasks take
    fixed shapes only."""
    values = max(
        (math.prod(d if isinstance(d, int) else 1 for d in shape[1:]) for shape in input_shapes),
        default=0,
    )
    return max(FLOOR_BYTES, max_batch * values * bytes_per_value + ENVELOPE_BYTES)


def body_limit(registry: ModelRegistry) -> BodyLimit:
    """The limit in force now: the setting, or the served models' largest request. It
    follows loads and unloads, as it is computed from what the registry serves."""
    settings = registry.settings
    if settings.max_body_bytes is not None:
        return BodyLimit(settings.max_body_bytes, "setting")
    shapes = (
        m.info.input_shape for versions in registry.versions.values() for m in versions.values()
    )
    return BodyLimit(largest_request_bytes(shapes, settings.max_batch_size), "models")


def grpc_message_limit(registry: ModelRegistry) -> int:
    """The gRPC message limit: ``CONVLSTM_GRPC_MAX_MESSAGE_BYTES``, or the served models'
    largest request as protobuf (4 bytes an FP32 value, raw or typed)."""
    settings = registry.settings
    if settings.grpc_max_message_bytes is not None:
        return settings.grpc_max_message_bytes
    shapes = (
        m.info.input_shape for versions in registry.versions.values() for m in versions.values()
    )
    return largest_request_bytes(shapes, settings.max_batch_size, bytes_per_value=4)
