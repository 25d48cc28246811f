"""Decoding and validation of client payloads, and encoding of predictions."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidInput
from service.inference.codec import (
    FrameSpec,
    decode_base64,
    decode_frames,
    decode_image,
    decode_tensor,
    encode_png,
    encode_tensor,
)

SPEC = FrameSpec(frames=3, height=8, width=6, channels=3)


def image_bytes(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def rgb_frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 6, 3), dtype=np.uint8)


def test_png_frames_round_trip_exactly() -> None:
    frames = [rgb_frame(i) for i in range(3)]
    out = decode_frames([b64(image_bytes(Image.fromarray(f))) for f in frames], SPEC)
    assert out.shape == (3, 8, 6, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(np.rint(out * 255).astype(np.uint8), np.stack(frames))


def test_greyscale_becomes_three_equal_channels() -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(8, 6)
    out = decode_image(image_bytes(Image.fromarray(grey, mode="L")), SPEC, "frames[0]")
    assert out.shape == (8, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_drops_alpha() -> None:
    rgba = np.dstack([rgb_frame(), np.full((8, 6), 7, np.uint8)])
    out = decode_image(image_bytes(Image.fromarray(rgba, mode="RGBA")), SPEC, "frames[0]")
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_palette_png_is_converted() -> None:
    img = Image.fromarray(rgb_frame()).convert("P")
    out = decode_image(image_bytes(img), SPEC, "frames[0]")
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_jpeg_is_accepted_and_close() -> None:
    flat = np.full((8, 6, 3), 120, np.uint8)
    out = decode_image(image_bytes(Image.fromarray(flat), "JPEG", quality=95), SPEC, "f")
    assert np.abs(out.astype(int) - 120).max() <= 3


def test_data_url_prefix_is_allowed() -> None:
    raw = image_bytes(Image.fromarray(rgb_frame()))
    assert decode_base64("data:image/png;base64," + b64(raw), "frames[0]") == raw


@pytest.mark.parametrize("text", ["not base64!", "abc", "Zm9v\nYmFy", "data:image/png;base64"])
def test_invalid_base64_names_the_frame(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^frames\[2\]: ") as err:
        decode_base64(text, "frames[2]")
    assert err.value.location == "frames[2]"


def test_bytes_that_are_no_image_are_named() -> None:
    with pytest.raises(InvalidInput, match=r"frames\[1\]: not a PNG or JPEG image \(5 bytes"):
        decode_image(b"hello", SPEC, "frames[1]")


def test_other_image_formats_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not a PNG or JPEG"):
        decode_image(image_bytes(Image.fromarray(rgb_frame()), "BMP"), SPEC, "frames[0]")


def test_wrong_size_says_expected_and_got() -> None:
    raw = image_bytes(Image.new("RGB", (7, 8)))
    with pytest.raises(InvalidInput, match=r"frames\[0\]: image is 7x8 .*needs 6x8"):
        decode_image(raw, SPEC, "frames[0]")


def test_truncated_png_is_reported() -> None:
    raw = image_bytes(Image.fromarray(rgb_frame()))
    with pytest.raises(InvalidInput, match=r"frames\[0\]: PNG data is truncated or corrupt"):
        decode_image(raw[: len(raw) // 2], SPEC, "frames[0]")


def test_sixteen_bit_greyscale_is_refused_by_mode() -> None:
    img = Image.fromarray(np.zeros((8, 6), np.uint16))
    with pytest.raises(InvalidInput, match="image mode I;16 is not supported"):
        decode_image(image_bytes(img), SPEC, "frames[0]")


def test_animated_png_is_refused() -> None:
    frames = [Image.new("RGB", (6, 8), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput, match="animated image with 2 frames"):
        decode_image(buffer.getvalue(), SPEC, "frames[0]")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims the size but whose pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_declared_size_is_refused_from_the_header() -> None:
    with pytest.raises(InvalidInput, match=r"frames\[0\]: (image too large|image is 60000x60000)"):
        decode_image(png_declaring(60_000, 60_000), SPEC, "frames[0]")


def test_wrong_frame_count() -> None:
    frame = b64(image_bytes(Image.fromarray(rgb_frame())))
    with pytest.raises(InvalidInput, match="frames: expected 3 frames, got 2"):
        decode_frames([frame, frame], SPEC)


def test_second_bad_frame_is_the_one_named() -> None:
    good = b64(image_bytes(Image.fromarray(rgb_frame())))
    with pytest.raises(InvalidInput, match=r"^frames\[1\]: invalid base64"):
        decode_frames([good, "%%%", good], SPEC)


def test_uint8_tensor_is_scaled() -> None:
    array = np.random.default_rng(1).integers(0, 256, SPEC.shape, dtype=np.uint8)
    out = decode_tensor(b64(array.tobytes()), "uint8", list(SPEC.shape), SPEC)
    np.testing.assert_allclose(out, array / 255.0, rtol=0, atol=1e-7)


def test_float32_tensor_is_read_little_endian() -> None:
    array = np.random.default_rng(2).random(SPEC.shape, dtype=np.float32)
    out = decode_tensor(b64(array.astype("<f4").tobytes()), "float32", list(SPEC.shape), SPEC)
    np.testing.assert_array_equal(out, array)


def test_tensor_shape_mismatch() -> None:
    with pytest.raises(InvalidInput, match=r"tensor.shape: expected \[3, 8, 6, 3\] .* got \[3, 8"):
        decode_tensor("", "uint8", [3, 8, 6], SPEC)


def test_tensor_byte_length_mismatch() -> None:
    with pytest.raises(InvalidInput, match=r"tensor.data: 10 bytes, but .* float32 needs 1728"):
        decode_tensor(b64(b"\0" * 10), "float32", list(SPEC.shape), SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_located(bad: float) -> None:
    array = np.zeros(SPEC.shape, np.float32)
    array[2, 3, 4, 1] = bad
    with pytest.raises(InvalidInput, match=r"NaN or infinite, the first at index \[2, 3, 4, 1\]"):
        decode_tensor(b64(array.tobytes()), "float32", list(SPEC.shape), SPEC)


@pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0])
def test_out_of_range_float_values_are_located(bad: float) -> None:
    array = np.zeros(SPEC.shape, np.float32)
    array[1, 0, 5, 2] = bad
    with pytest.raises(
        InvalidInput, match=r"must be in \[0, 1\]; 1 value is not, .*\[1, 0, 5, 2\]"
    ):
        decode_tensor(b64(array.tobytes()), "float32", list(SPEC.shape), SPEC)


def test_encode_png_rounds_and_clips() -> None:
    frame = np.zeros((8, 6, 3), np.float32)
    frame[0, 0] = (1.2, 0.5, -0.3)
    raw = base64.b64decode(encode_png(frame))
    decoded = np.asarray(Image.open(io.BytesIO(raw)))
    assert decoded.shape == (8, 6, 3)
    assert tuple(decoded[0, 0]) == (255, 128, 0)


def test_encode_tensor_is_little_endian_float32() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = base64.b64decode(encode_tensor(array))
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(2, 3), array)


@pytest.mark.parametrize(
    ("channels", "source", "expected"),
    [
        # RGB to L is PIL's luminance, L * 1000 = R * 299 + G * 587 + B * 114.
        (1, Image.new("RGB", (6, 8), (200, 100, 50)), [(200 * 299 + 100 * 587 + 50 * 114) // 1000]),
        (1, Image.new("RGBA", (6, 8), (0, 255, 0, 7)), [150]),
        (3, Image.new("L", (6, 8), 77), [77, 77, 77]),
        (4, Image.new("L", (6, 8), 77), [77, 77, 77, 255]),
        (4, Image.new("RGBA", (6, 8), (1, 2, 3, 4)), [1, 2, 3, 4]),
    ],
)
def test_images_are_converted_to_the_models_channels(
    channels: int, source: Image.Image, expected: list[int]
) -> None:
    spec = FrameSpec(frames=1, height=8, width=6, channels=channels)
    pixels = decode_image(image_bytes(source), spec, "frames[0]")
    assert pixels.shape == (8, 6, channels)
    assert pixels.reshape(-1, channels)[0].tolist() == expected


def test_a_model_with_no_image_mode_takes_no_frames() -> None:
    spec = FrameSpec(frames=1, height=8, width=6, channels=2)
    with pytest.raises(InvalidInput, match="2 channels per pixel, which no image holds"):
        decode_frames([b64(image_bytes(Image.new("L", (6, 8))))], spec)


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_predicted_pngs_have_the_models_mode(channels: int, mode: str) -> None:
    frame = np.full((8, 6, channels), 0.5, dtype=np.float32)
    img = Image.open(io.BytesIO(base64.b64decode(encode_png(frame))))
    assert (img.mode, img.size) == (mode, (6, 8))
    assert np.asarray(img).reshape(-1, channels)[0].tolist() == [128] * channels
