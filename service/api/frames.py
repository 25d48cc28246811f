"""The /predict forms, shared by ``POST /predict`` and a stream's step: the input a
request gives (``frames`` or ``tensor``) and the answer built from a prediction."""

from __future__ import annotations

from service.api.schemas import NextFrameResponse, PredictedTensor, TensorData
from service.inference.runner import ModelInfo
from service.tasks.next_frame import FramesInput, Prediction, TensorInput


def frame_source(frames: list[str] | None, tensor: TensorData | None) -> FramesInput | TensorInput:
    """The request's input; its schema allows exactly one of ``frames`` and ``tensor``."""
    if frames is not None:
        return FramesInput(frames)
    assert tensor is not None
    return TensorInput(tensor.data, tensor.dtype, tensor.shape)


def next_frame_response(info: ModelInfo, horizon: int, result: Prediction) -> NextFrameResponse:
    """The answer of ``info``'s model: the predicted frames as PNG, and the tensor when
    the request asked for it."""
    return NextFrameResponse(
        model=info.name,
        model_version=info.version,
        provider=info.provider,
        horizon=horizon,
        frames=result.png_frames,
        frame_shape=result.shape[1:],
        inference_ms=round(result.inference_seconds * 1000.0, 3),
        tensor=PredictedTensor(data=result.tensor, shape=result.shape)
        if result.tensor is not None
        else None,
    )
