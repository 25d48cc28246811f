"""The frames one request on a stream carries, in ``/predict``'s two forms (images or a
tensor), checked and decoded to (k, H, W, C) float32 for the step graph."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput
from service.inference.codec import FrameSpec, check_shape, decode_frames, decode_tensor
from service.tasks.next_frame import FramesInput, TensorInput

# Frames one request on a stream may carry: each is one step that holds up the batch.
MAX_FRAMES_PER_REQUEST = 256


def decode_stream_frames(spec: FrameSpec, source: FramesInput | TensorInput) -> NDArray[np.float32]:
    """Any number k >= 1 of frames of the model's ``spec``, in ``/predict``'s forms ->
    (k, H, W, C); 422 naming the field when they are not."""
    if isinstance(source, FramesInput):
        k = len(source.frames)
        where = "frames"
    else:
        shape = source.shape
        k = shape[0] if len(shape) == 4 else 0
        where = "tensor.shape"
        if k < 1:
            raise InvalidInput(
                f"tensor.shape: expected [k, {spec.height}, {spec.width}, {spec.channels}] "
                f"(frames, height, width, channels) with k >= 1, got {shape}",
                location=where,
            )
    if not 1 <= k <= MAX_FRAMES_PER_REQUEST:
        raise InvalidInput(
            f"{where}: a stream takes 1 to {MAX_FRAMES_PER_REQUEST} frames per request, got {k}",
            location=where,
        )
    spec_k = dataclasses.replace(spec, frames=k)
    if isinstance(source, FramesInput):
        return decode_frames(source.frames, spec_k)
    check_shape(source.shape, spec_k.shape, "tensor.shape")
    return decode_tensor(source.data, source.dtype, source.shape, spec_k)
