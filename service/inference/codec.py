"""Client payloads <-> float32 arrays.

Two input forms: a list of base64 images (PNG or JPEG), or raw little-endian tensor
bytes (base64 in ``/predict``, JSON or binary in the Open Inference Protocol); both
protocols check a tensor with the same functions here. Every check names where it failed
(``frames[3]``, ``tensor.shape``) and what it expected, because the client has no other
way to find its mistake.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput

TensorDType = Literal["uint8", "float32"]
_DTYPES: dict[str, np.dtype[np.generic]] = {"uint8": np.dtype("<u1"), "float32": np.dtype("<f4")}
IMAGE_FORMATS = ("PNG", "JPEG")
# Modes that convert to any of the model's modes without losing meaning: greyscale,
# palette, with or without alpha. RGB to L is luminance (ITU-R 601-2), L to RGB repeats
# the grey, a missing alpha is opaque and an unwanted one is dropped.
_CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}
IMAGE_MODES: dict[int, str] = {1: "L", 3: "RGB", 4: "RGBA"}
"""The image mode for a frame of this many channels."""


ValueRange = tuple[float, float]
UNIT_RANGE: ValueRange = (0.0, 1.0)


@dataclass(frozen=True)
class FrameSpec:
    """What one input sequence must look like: (frames, height, width, channels), and
    the values the model takes."""

    frames: int
    height: int
    width: int
    channels: int
    value_range: ValueRange = UNIT_RANGE

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, self.channels)


def decode_base64(text: str, where: str) -> bytes:
    """Strict base64 (standard alphabet, padding required); a ``data:`` URL prefix is allowed."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise InvalidInput(f"{where}: data URL has no ',' before its payload", location=where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidInput(f"{where}: invalid base64 ({err})", location=where) from None


def decode_image(raw: bytes, spec: FrameSpec, where: str) -> NDArray[np.uint8]:
    """One encoded image -> (H, W, C) uint8, in the model's mode (``IMAGE_MODES``).

    The size is checked from the header before any pixel is decoded, so an image
    that declares huge dimensions costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        head = raw[:8].hex(" ") if raw else "nothing"
        raise InvalidInput(
            f"{where}: not a PNG or JPEG image ({len(raw)} bytes, starting {head})",
            location=where,
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidInput(f"{where}: image too large to decode ({err})", location=where) from None
    with img:
        width, height = img.size
        if (height, width) != (spec.height, spec.width):
            raise InvalidInput(
                f"{where}: image is {width}x{height} (width x height), "
                f"the model needs {spec.width}x{spec.height}, {_mode_of(spec.channels)}",
                location=where,
            )
        n_frames = int(getattr(img, "n_frames", 1))
        if n_frames > 1:
            raise InvalidInput(
                f"{where}: animated image with {n_frames} frames; send one image per frame",
                location=where,
            )
        if img.mode not in _CONVERTIBLE_MODES:
            raise InvalidInput(
                f"{where}: image mode {img.mode} is not supported; "
                f"send 8-bit greyscale, RGB or RGBA (the model takes {_mode_of(spec.channels)})",
                location=where,
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise InvalidInput(
                f"{where}: {img.format} data is truncated or corrupt ({err})", location=where
            ) from None
        converted = img.convert(image_mode(spec.channels))
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels.reshape(spec.height, spec.width, spec.channels)


def image_mode(channels: int) -> str:
    """The PIL mode of a frame with ``channels`` channels; ``ValueError`` if none."""
    mode = IMAGE_MODES.get(channels)
    if mode is None:
        raise ValueError(f"{channels} channels is no image mode (1, 3 and 4 are)")
    return mode


def _mode_of(channels: int) -> str:
    mode = IMAGE_MODES.get(channels)
    return f"{mode}, {channels} channel(s)" if mode else f"{channels} channels"


def decode_frames(frames: list[str], spec: FrameSpec) -> NDArray[np.float32]:
    """T base64 images -> (T, H, W, C) float32 in [0, 1], each converted to the model's
    channels."""
    if len(frames) != spec.frames:
        raise InvalidInput(
            f"frames: expected {spec.frames} frames, got {len(frames)}; the model takes "
            f"{spec.frames} frames of {spec.width}x{spec.height} (width x height), "
            f"{_mode_of(spec.channels)}",
            location="frames",
        )
    if spec.channels not in IMAGE_MODES:
        raise InvalidInput(
            f"frames: the model takes {spec.channels} channels per pixel, which no image "
            "holds; send `tensor` instead",
            location="frames",
        )
    out = np.empty(spec.shape, dtype=np.float32)
    for i, text in enumerate(frames):
        where = f"frames[{i}]"
        out[i] = decode_image(decode_base64(text, where), spec, where)
    out /= 255.0
    return out


def decode_tensor(
    data: str, dtype: TensorDType, shape: list[int], spec: FrameSpec
) -> NDArray[np.float32]:
    """A base64 raw little-endian tensor -> (T, H, W, C) float32 in the model's range.

    uint8 is read as 0-255 and scaled; float32 must already be in range.
    """
    check_shape(shape, spec.shape, "tensor.shape", axes="frames, height, width, channels")
    raw = decode_base64(data, "tensor.data")
    array = array_from_bytes(raw, _DTYPES[dtype], shape, "tensor.data", dtype)
    return to_model_values(array, "tensor.data", spec.value_range)


def check_shape(
    shape: list[int],
    expected: tuple[int, ...],
    where: str,
    *,
    batched: bool = False,
    axes: str | None = None,
) -> None:
    """``shape`` is ``expected``, or with ``batched`` a batch of N >= 1 of it."""
    if batched:
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected or shape[0] < 1:
            raise InvalidInput(
                f"{where}: expected [N, {', '.join(map(str, expected))}] with N >= 1, got {shape}",
                location=where,
            )
    elif tuple(shape) != expected:
        named = f" ({axes})" if axes else ""
        raise InvalidInput(
            f"{where}: expected {list(expected)}{named}, got {shape}", location=where
        )


def array_from_bytes(
    raw: bytes, dtype: np.dtype[np.generic], shape: list[int], where: str, dtype_name: str
) -> NDArray[np.generic]:
    """Raw little-endian bytes as an array of ``shape``, if there are exactly enough."""
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"{where}: {len(raw)} bytes, but shape {shape} of {dtype_name} needs {expected}",
            location=where,
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_model_values(
    array: NDArray[np.generic], where: str, value_range: ValueRange | None
) -> NDArray[np.float32]:
    """uint8 pixels (0-255) scaled to [0, 1], or floats checked to lie in ``value_range``
    (only to be finite when the model states none)."""
    if array.dtype == np.uint8:
        if value_range != UNIT_RANGE:
            takes = (
                "states no value range" if value_range is None else f"takes {_shown(value_range)}"
            )
            raise InvalidInput(
                f"{where}: uint8 is read as pixels scaled to [0, 1], but this model {takes}; "
                "send float32",
                location=where,
            )
        return array.astype(np.float32) / 255.0
    return check_range(array.astype(np.float32), where, value_range)


def check_range(
    values: NDArray[np.float32], where: str, value_range: ValueRange | None
) -> NDArray[np.float32]:
    """``values`` if every one is finite and within ``value_range``; else where the first
    is not."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise InvalidInput(
            f"{where}: {_count(bad)} NaN or infinite, the first at index {_first_index(bad)}",
            location=where,
        )
    if value_range is None:
        return values
    low, high = value_range
    outside = (values < low) | (values > high)
    if outside.any():
        raise InvalidInput(
            f"{where}: float32 values must be in {_shown(value_range)}; {_count(outside)} not, "
            f"the first at index {_first_index(outside)} is {values[outside][0]:g}",
            location=where,
        )
    return values


def _shown(value_range: ValueRange) -> str:
    return f"[{value_range[0]:g}, {value_range[1]:g}]"


def _count(mask: NDArray[np.bool_]) -> str:
    n = int(mask.sum())
    return "1 value is" if n == 1 else f"{n} values are"


def _first_index(mask: NDArray[np.bool_]) -> list[int]:
    return [int(i) for i in np.argwhere(mask)[0]]


def encode_png(frame: NDArray[np.float32]) -> str:
    """(H, W, C) float32 in [0, 1] -> base64 PNG of mode L, RGB or RGBA (C = 1, 3, 4),
    rounded to 8 bits."""
    pixels = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    mode = image_mode(pixels.shape[-1])
    buffer = io.BytesIO()
    # fromarray reads (H, W) as L, (H, W, 3) as RGB and (H, W, 4) as RGBA.
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_tensor(array: NDArray[np.float32]) -> str:
    """float32 array -> base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")
