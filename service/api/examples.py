"""Real requests for the OpenAPI page: a bright square moving across black frames, of the
default model's frame count, size and channels (15 RGB frames of 40x40 until it loads)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from fastapi import FastAPI

from service.inference.codec import encode_png
from service.registry import ModelRegistry
from service.tasks import NextFrameTask

FRAMES, SIZE, SQUARE = 15, 40, 10
_COLOUR = (1.0, 0.6, 0.2, 1.0)


@lru_cache(maxsize=4)
def moving_square_frames(
    frames: int = FRAMES, height: int = SIZE, width: int = SIZE, channels: int = 3
) -> list[str]:
    """``frames`` PNGs of ``height`` x ``width`` with ``channels`` channels (1: L, 3: RGB,
    4: RGBA); the square is cut off where it leaves a smaller frame."""
    side = max(2, min(SQUARE, min(height, width) // 3))
    top = max(0, min(15, height - side))
    colour = _COLOUR[:channels] if channels != 1 else (0.8,)
    pngs = []
    for t in range(frames):
        frame = np.zeros((height, width, channels), dtype=np.float32)
        x = 2 + 2 * t
        frame[top : top + side, x : x + side] = colour
        pngs.append(encode_png(frame))
    return pngs


def predict_examples(
    frames: int = FRAMES,
    height: int = SIZE,
    width: int = SIZE,
    channels: int = 3,
    horizons: tuple[int, ...] = (1, 3),
) -> dict[str, Any]:
    pngs = moving_square_frames(frames, height, width, channels)
    named = {1: ("frames", "one predicted frame"), 3: ("horizon", "three predicted frames")}
    return {
        named[h][0]: {
            "summary": f"{frames} PNG frames of {width}x{height}, {named[h][1]}",
            "value": {"frames": pngs, "horizon": h},
        }
        for h in horizons
    }


def follow_default_model(app: FastAPI, registry: ModelRegistry) -> None:
    """Make ``/openapi.json``'s ``/predict`` examples requests the default model takes:
    its T, size and channels, a horizon of 3 only where it can feed predictions back. A
    default model that answers no frames gets none."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        schema = plain()
        model = registry.default
        if model is None:
            return schema
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        content = body["application/json"]
        task = model.task
        if isinstance(task, NextFrameTask):
            content["examples"] = predict_examples(
                *task.spec.shape, horizons=(1, 3) if task.feeds_back else (1,)
            )
        else:
            content.pop("examples", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
