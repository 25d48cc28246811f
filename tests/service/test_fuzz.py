"""Property-based tests: the decoders on arbitrary input. Example counts are bounded. The
whole API on requests generated from its OpenAPI document (schemathesis) and the protocol
fuzzer are in test_http_fuzz.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import InvalidInput
from service.inference.codec import FrameSpec, decode_frames, decode_image, decode_tensor

SPEC = FrameSpec(frames=2, height=8, width=8, channels=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=64), min_size=0, max_size=4))
def test_any_text_frames_decode_or_raise_invalid_input(frames: list[str]) -> None:
    try:
        out = decode_frames(frames, SPEC)
    except InvalidInput as err:
        assert err.location is not None and err.message.startswith(err.location)
    else:
        assert out.shape == SPEC.shape and 0 <= out.min() and out.max() <= 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_invalid_input(raw: bytes) -> None:
    try:
        out = decode_image(raw, SPEC, "frames[0]")
    except InvalidInput as err:
        assert err.message.startswith("frames[0]: ")
    else:
        assert out.shape == (8, 8, 3)


image_modes = st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"])


@settings(max_examples=100, deadline=None)
@given(
    mode=image_modes,
    width=st.integers(1, 12),
    height=st.integers(1, 12),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    seed=st.integers(0, 2**16),
)
def test_real_images_of_any_mode_and_size(
    mode: str, width: int, height: int, fmt: str, seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        img.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write this mode in this format: nothing to send
    try:
        out = decode_image(buffer.getvalue(), SPEC, "frames[1]")
    except InvalidInput as err:
        assert err.message.startswith("frames[1]: ")
        assert (width, height) != (8, 8) or "mode" in err.message or "not a PNG" in err.message
    else:
        assert (width, height) == (8, 8)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(["uint8", "float32"]),
    shape=st.lists(st.integers(0, 10), min_size=0, max_size=5),
    raw=st.binary(max_size=2048),
)
def test_any_tensor_decodes_or_raises_invalid_input(
    dtype: str, shape: list[int], raw: bytes
) -> None:
    try:
        out = decode_tensor(base64.b64encode(raw).decode(), dtype, shape, SPEC)  # type: ignore[arg-type]
    except InvalidInput as err:
        assert err.location in ("tensor.shape", "tensor.data")
    else:
        assert out.shape == SPEC.shape and np.isfinite(out).all()
        assert 0 <= out.min() and out.max() <= 1


@settings(max_examples=100, deadline=None)
@given(st.floats(width=32, allow_nan=True, allow_infinity=True))
def test_float_values_outside_zero_one_are_refused(x: float) -> None:
    array = np.full(SPEC.shape, x, dtype=np.float32)
    raw = base64.b64encode(array.tobytes()).decode()
    if np.isfinite(x) and 0 <= x <= 1:
        assert decode_tensor(raw, "float32", list(SPEC.shape), SPEC).max() == np.float32(x)
    else:
        with pytest.raises(InvalidInput, match="tensor.data"):
            decode_tensor(raw, "float32", list(SPEC.shape), SPEC)
