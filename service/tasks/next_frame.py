"""Next-frame prediction: a sequence of T frames (N, T, H, W, C) in, the next frame
(N, H, W, C) out (or, for output kind ``frame_per_step``, a frame per step
(N, T, H, W, C) whose last is the next frame), each prediction fed back in as the newest
frame for a longer horizon where it is the input frame's size.

T, H, W and C come from the model's card; C is 1 (L), 3 (RGB) or 4 (RGBA). ``/predict``
speaks this task only: frames as PNG or JPEG (converted to the model's channels), or one
raw tensor, in; PNG frames of the model's output mode (and optionally the tensor) out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard
from service import tracing
from service.errors import InvalidInput, ModelLoadError
from service.inference.codec import (
    IMAGE_MODES,
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

# Work small enough to do on the event loop: a hop to a worker thread and back costs
# more CPU than decoding a tensor of this many base64 characters (about 0.3 ms) or
# writing PNGs of this many values (a few 64x64 RGB frames), and /predict would take
# three hops per request.
INLINE_TENSOR_CHARS = 512 * 1024
INLINE_PNG_VALUES = 48 * 1024


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


@dataclass(frozen=True)
class FrameOutput:
    """What the model gives per sequence: one frame (``next_frame``) or one frame per
    input step (``frame_per_step``, whose last step is the next frame), of this size."""

    kind: Literal["next_frame", "frame_per_step"]
    height: int
    width: int
    channels: int

    @property
    def frame(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def last_frame(self, outputs: NDArray[np.float32]) -> NDArray[np.float32]:
        """A batch of the graph's outputs -> the predicted next frame of each (N, H, W, C)."""
        return outputs[:, -1] if self.kind == "frame_per_step" else outputs


def frame_spec(card: ModelCard) -> tuple[FrameSpec, FrameOutput]:
    """The per-sequence input of a (N, T, H, W, C) model and the frames it gives: one
    (N, H', W', C') or one per step (N, T, H', W', C'), from its card."""
    input_shape, output_shape = card.input.shape, card.output.shape
    dims = input_shape[1:]
    if len(input_shape) != 5 or not all(isinstance(d, int) for d in dims):
        raise ModelLoadError(
            f"model input shape {input_shape} is not (N, T, H, W, C) with fixed T, H, W, C"
        )
    t, h, w, c = (int(d) for d in dims)
    kind = card.output_kind
    frame_dims = output_shape[2:] if kind == "frame_per_step" else output_shape[1:]
    if (
        kind == "tensor"
        or len(frame_dims) != 3
        or not all(isinstance(d, int) for d in frame_dims)
        or (kind == "frame_per_step" and output_shape[1] != t)
    ):
        raise ModelLoadError(
            f"model output shape {output_shape} is not a frame of output kind {kind} "
            f"(next_frame: (N, H, W, C); frame_per_step: (N, {t}, H, W, C))"
        )
    out = FrameOutput(kind, *(int(d) for d in frame_dims))
    # Channel counts no image holds (2 fields of a radar, say) are served too: as tensors
    # in and out of /predict (codec.decode_frames says so to a client sending frames) and
    # over the Open Inference Protocol.
    # Frames arrive as 8-bit pixels and are scaled by 1/255: the model must take [0, 1].
    value_range = card.input.range or UNIT_RANGE
    if value_range != UNIT_RANGE:
        raise ModelLoadError(
            f"model card states input range {list(value_range)}; a next-frame model "
            "takes pixel values in [0, 1]"
        )
    return FrameSpec(t, h, w, c, value_range), out


def feed_back(
    run_batch: RunBatch,
    inputs: list[NDArray[np.float32]],
    steps: list[int],
    last_frame: Callable[[NDArray[np.float32]], NDArray[np.float32]] = lambda out: out,
) -> tuple[list[NDArray[np.float32]], list[int]]:
    """Every sequence's horizon in one batched roll-out: each predicted frame
    (``last_frame`` of the graph's output) becomes the newest frame of that sequence's
    window; sequences leave the batch when their horizon is done.

    Returns, per sequence, the graph's own output (1, ...) for a horizon of 1, else its
    (horizon, H, W, C) predicted frames; and every run's size."""
    windows = np.stack(inputs)
    outputs: list[list[NDArray[np.float32]]] = [[] for _ in steps]
    sizes = []
    longest = max(steps)
    for step in range(longest):
        active = [i for i, n in enumerate(steps) if n > step]
        predicted = run_batch(windows[active])
        sizes.append(len(active))
        frames = last_frame(predicted)
        for k, i in enumerate(active):
            outputs[i].append(predicted[k] if steps[i] == 1 else frames[k])
        if step + 1 < longest:
            windows[active] = np.concatenate([windows[active, 1:], frames[:, None]], axis=1)
    return [np.stack(out) for out in outputs], sizes


class NextFrameTask:
    """The adapter for ``task: next_frame`` cards."""

    task: Literal["next_frame"] = "next_frame"

    def __init__(self, spec: FrameSpec, output: FrameOutput, max_horizon: int) -> None:
        self.spec = spec
        self.output = output
        self.max_horizon = max_horizon

    @classmethod
    def from_card(cls, card: ModelCard, max_horizon: int) -> NextFrameTask:
        return cls(*frame_spec(card), max_horizon)

    @property
    def feeds_back(self) -> bool:
        """Whether a predicted frame can be fed back in: it is the input frame's size."""
        return self.output.frame == self.spec.shape[1:]

    def describe(self) -> dict[str, object]:
        """What ``/predict`` takes and gives for this model."""
        return {
            "frames": self.spec.frames,
            "frame_shape": list(self.spec.shape[1:]),
            "input_mode": IMAGE_MODES.get(self.spec.channels),
            "output_frame_shape": list(self.output.frame),
            "output_mode": IMAGE_MODES.get(self.output.channels),
            "max_horizon": self.max_horizon if self.feeds_back else 1,
        }

    def rollout(
        self, run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
    ) -> tuple[list[NDArray[np.float32]], list[int]]:
        return feed_back(run_batch, inputs, steps, self.output.last_frame)

    def check_batch_shape(self, shape: list[int], where: str) -> None:
        check_shape(shape, self.spec.shape, where, batched=True)

    def model_input(self, array: NDArray[np.generic], where: str) -> NDArray[np.float32]:
        return to_model_values(array, where, self.spec.value_range)

    def steps(self, horizon: int) -> int:
        if horizon > 1 and not self.feeds_back:
            raise InvalidInput(
                f"horizon: this model predicts a frame of {_hwc(self.output.frame)} from "
                f"frames of {_hwc(self.spec.shape[1:])}, so a prediction cannot be fed back "
                f"in; only horizon 1 is served, got {horizon}",
                location="horizon",
            )
        if not 1 <= horizon <= self.max_horizon:
            raise InvalidInput(
                f"horizon: must be between 1 and {self.max_horizon}, got {horizon}",
                location="horizon",
            )
        return horizon

    def batch_output(self, outputs: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
        # One step answers as the graph does ((N, H, W, C), or (N, T, H, W, C) for a
        # frame per step); more answer the predicted frames (N, horizon, H, W, C).
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
        """One sequence in ``/predict``'s forms -> its ``horizon`` frames as PNG (of the
        model's output mode; the last step's frame for a frame-per-step model)."""
        steps = self.steps(horizon)
        with tracing.span("decode"):
            if isinstance(source, TensorInput) and len(source.data) <= INLINE_TENSOR_CHARS:
                sequence = self.decode(source)
            else:
                sequence = await anyio.to_thread.run_sync(self.decode, source)
        batch, seconds = await runner.run(sequence[None], steps)
        predicted = self.output.last_frame(batch[0]) if steps == 1 else batch[0]
        return await self.answer(predicted, seconds, return_tensor=return_tensor)

    async def answer(
        self, predicted: NDArray[np.float32], seconds: float, *, return_tensor: bool
    ) -> Prediction:
        """Predicted frames (horizon, H, W, C) as ``/predict`` answers them: PNGs of the
        model's output mode, and the tensor where asked for or where no image holds it."""
        as_image = self.output.channels in IMAGE_MODES
        pngs: list[str] = []
        with tracing.span("encode"):
            if as_image and predicted.size <= INLINE_PNG_VALUES:
                pngs = [encode_png(f) for f in predicted]
            elif as_image:
                pngs = await anyio.to_thread.run_sync(lambda: [encode_png(f) for f in predicted])
            tensor = encode_tensor(predicted) if return_tensor or not as_image else None
        return Prediction(
            png_frames=pngs,
            shape=list(predicted.shape),
            inference_seconds=seconds,
            tensor=tensor,
        )


def _hwc(frame: tuple[int, ...]) -> str:
    h, w, c = frame
    return f"{w}x{h} (width x height), {c} channel(s)"
