"""A real request for the OpenAPI page: a bright square moving across 15 black frames."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from service.inference.codec import encode_png

FRAMES, SIZE, SQUARE = 15, 40, 10


@lru_cache(maxsize=4)
def moving_square_frames(frames: int = FRAMES, height: int = SIZE, width: int = SIZE) -> list[str]:
    """``frames`` RGB PNGs of ``height`` x ``width``; the square is cut off where it leaves
    a smaller frame."""
    pngs = []
    for t in range(frames):
        frame = np.zeros((height, width, 3), dtype=np.float32)
        x = 2 + 2 * t
        frame[15 : 15 + SQUARE, x : x + SQUARE] = (1.0, 0.6, 0.2)
        pngs.append(encode_png(frame))
    return pngs


def predict_examples() -> dict[str, Any]:
    return {
        "frames": {
            "summary": "15 PNG frames, one predicted frame",
            "value": {"frames": moving_square_frames(), "horizon": 1},
        },
        "horizon": {
            "summary": "15 PNG frames, three predicted frames",
            "value": {"frames": moving_square_frames(), "horizon": 3},
        },
    }
