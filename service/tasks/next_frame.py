"""Next-frame prediction: a sequence of T frames (N, T, H, W, C) in, the next frame
(N, H, W, C) out, each prediction fed back in as the newest frame for a longer horizon.

T, H, W and C come from the model's card. ``/predict`` speaks this task only: frames as
PNG or JPEG, or one raw tensor, in; PNG frames (and optionally the tensor) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard
from service.errors import InvalidInput, ModelLoadError
from service.inference.codec import (
    UNIT_RANGE,
    FrameSpec,
    TensorDType,
    check_shape,
    decode_frames,
    decode_tensor,
    encode_png,
    encode_tensor,
    to_model_values,
)
from service.inference.runner import ModelRunner
from service.inference.scheduler import RunBatch


@dataclass(frozen=True)
class FramesInput:
    frames: list[str]


@dataclass(frozen=True)
class TensorInput:
    data: str
    dtype: TensorDType
    shape: list[int]


@dataclass(frozen=True)
class Prediction:
    png_frames: list[str]
    shape: list[int]
    inference_seconds: float
    tensor: str | None = None


def frame_spec(card: ModelCard) -> FrameSpec:
    """The per-sequence input of a (N, T, H, W, C) -> (N, H, W, C) model, from its card."""
    input_shape, output_shape = card.input.shape, card.output.shape
    dims = input_shape[1:]
    if len(input_shape) != 5 or not all(isinstance(d, int) for d in dims):
        raise ModelLoadError(
            f"model input shape {input_shape} is not (N, T, H, W, C) with fixed T, H, W, C"
        )
    t, h, w, c = (int(d) for d in dims)
    if list(output_shape[1:]) != [h, w, c]:
        raise ModelLoadError(
            f"model output shape {output_shape} is not one frame (N, {h}, {w}, {c}) "
            f"of the input's size, so predictions cannot be fed back in "
            f"(output kind {card.output_kind}; next_frame is served)"
        )
    # Frames arrive as 8-bit pixels and are scaled by 1/255: the model must take [0, 1].
    value_range = card.input.range or UNIT_RANGE
    if value_range != UNIT_RANGE:
        raise ModelLoadError(
            f"model card states input range {list(value_range)}; a next-frame model "
            "takes pixel values in [0, 1]"
        )
    return FrameSpec(t, h, w, c, value_range)


def feed_back(
    run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
) -> tuple[list[NDArray[np.float32]], list[int]]:
    """Every sequence's horizon in one batched roll-out: each predicted frame becomes the
    newest frame of that sequence's window; sequences leave the batch when their horizon
    is done. Returns each sequence's (horizon, H, W, C) frames and every run's size."""
    windows = np.stack(inputs)
    frame_shape = windows.shape[2:]
    outputs = [np.empty((n, *frame_shape), dtype=np.float32) for n in steps]
    sizes = []
    for step in range(max(steps)):
        active = [i for i, n in enumerate(steps) if n > step]
        predicted = run_batch(windows[active])
        sizes.append(len(active))
        for k, i in enumerate(active):
            outputs[i][step] = predicted[k]
        windows[active] = np.concatenate([windows[active, 1:], predicted[:, None]], axis=1)
    return outputs, sizes


class NextFrameTask:
    """The adapter for ``task: next_frame`` cards."""

    task: Literal["next_frame"] = "next_frame"

    def __init__(self, spec: FrameSpec, max_horizon: int) -> None:
        self.spec = spec
        self.max_horizon = max_horizon

    @classmethod
    def from_card(cls, card: ModelCard, max_horizon: int) -> NextFrameTask:
        return cls(frame_spec(card), max_horizon)

    def rollout(
        self, run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
    ) -> tuple[list[NDArray[np.float32]], list[int]]:
        return feed_back(run_batch, inputs, steps)

    def check_batch_shape(self, shape: list[int], where: str) -> None:
        check_shape(shape, self.spec.shape, where, batched=True)

    def model_input(self, array: NDArray[np.generic], where: str) -> NDArray[np.float32]:
        return to_model_values(array, where, self.spec.value_range)

    def steps(self, horizon: int) -> int:
        if not 1 <= horizon <= self.max_horizon:
            raise InvalidInput(
                f"horizon: must be between 1 and {self.max_horizon}, got {horizon}",
                location="horizon",
            )
        return horizon

    def batch_output(self, outputs: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
        # One step answers (N, H, W, C) as the graph does; more add a horizon axis.
        return outputs[:, 0] if steps == 1 else outputs

    def decode(self, source: FramesInput | TensorInput) -> NDArray[np.float32]:
        if isinstance(source, FramesInput):
            return decode_frames(source.frames, self.spec)
        return decode_tensor(source.data, source.dtype, source.shape, self.spec)

    async def predict(
        self,
        runner: ModelRunner,
        source: FramesInput | TensorInput,
        *,
        horizon: int = 1,
        return_tensor: bool = False,
    ) -> Prediction:
        """One sequence in ``/predict``'s forms -> its ``horizon`` frames as PNG."""
        steps = self.steps(horizon)
        sequence = await anyio.to_thread.run_sync(self.decode, source)
        batch, seconds = await runner.run(sequence[None], steps)
        predicted = batch[0]
        pngs = await anyio.to_thread.run_sync(lambda: [encode_png(f) for f in predicted])
        return Prediction(
            png_frames=pngs,
            shape=list(predicted.shape),
            inference_seconds=seconds,
            tensor=encode_tensor(predicted) if return_tensor else None,
        )
