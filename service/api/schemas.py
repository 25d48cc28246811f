"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bounds that keep a hostile body from costing much before the precise checks in
# the inference layer run; the real limits (T frames, the byte size) come from the model.
_MAX_LIST = 1024
_MAX_TEXT = 8 * 1024 * 1024


class TensorData(BaseModel):
    """A raw array: base64 of its little-endian bytes, C order."""

    model_config = ConfigDict(extra="forbid", strict=True)

    data: str = Field(max_length=_MAX_TEXT, description="base64 of the raw little-endian bytes")
    dtype: Literal["uint8", "float32"] = Field(description="uint8 holds 0-255; float32 holds 0-1")
    shape: list[int] = Field(
        min_length=1, max_length=8, description="[frames, height, width, channels]"
    )


class NextFrameRequest(BaseModel):
    """Exactly one of ``frames`` and ``tensor``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    frames: list[str] | None = Field(
        default=None,
        max_length=_MAX_LIST,
        description="the input sequence, oldest first: one base64 PNG or JPEG per frame, "
        "of the model's T, height and width (GET /v1/models lists them); greyscale, RGB "
        "and RGBA are converted to the model's channels (RGB to L by luminance, L to RGB "
        "by repeating the grey)",
    )
    tensor: TensorData | None = Field(
        default=None, description="the input sequence as one raw array, shape [T, H, W, C]"
    )
    model: str | None = Field(
        default=None,
        max_length=128,
        description="which served model answers (GET /v1/models lists them); the default "
        "model when left out",
    )
    model_version: str | None = Field(
        default=None,
        max_length=64,
        description="which served version of the model answers (POST /v2/repository/index "
        "lists them); the highest, or the pinned one, when left out",
    )
    horizon: int = Field(
        default=1,
        description="frames to predict; each prediction is fed back in as the newest frame "
        "(only 1 where the model's predicted frame differs in size from its input frames)",
    )
    return_tensor: bool = Field(
        default=False, description="also return the float32 prediction, unrounded"
    )
    rollout: Literal["window", "state"] | None = Field(
        default=None,
        description="how a horizon > 1 is rolled out: `window` runs the model on the last T "
        "frames for each predicted frame (T steps each); `state` steps the ConvLSTM "
        "through the T frames once and feeds each prediction in as one more step "
        "(T + horizon - 1 steps; models that serve streams only). Left out: the model's "
        "default (see the README's roll-out table)",
    )

    @model_validator(mode="after")
    def _one_input(self) -> NextFrameRequest:
        if (self.frames is None) == (self.tensor is None):
            raise ValueError("give exactly one of 'frames' and 'tensor'")
        return self


class PredictedTensor(BaseModel):
    data: str = Field(description="base64 of the float32 little-endian bytes")
    dtype: Literal["float32"] = "float32"
    shape: list[int] = Field(description="[horizon, height, width, channels]")


class NextFrameResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="name of the model that answered")
    model_version: str
    provider: str = Field(description="the onnxruntime execution provider that ran it")
    horizon: int
    frames: list[str] = Field(
        description="predicted frames in order, each a base64 PNG of the model's output "
        "mode (L, RGB or RGBA); empty when no image holds the model's output channels "
        "(e.g. 2), and then `tensor` is always given"
    )
    frame_shape: list[int] = Field(description="[height, width, channels] of each frame")
    inference_ms: float = Field(description="time in the model, all horizon steps")
    tensor: PredictedTensor | None = None


class PredictSpec(BaseModel):
    """What ``/predict`` takes and gives for a frame model."""

    frames: int = Field(description="frames per request (T)")
    frame_shape: list[int] = Field(description="[height, width, channels] of each input frame")
    input_mode: str | None = Field(
        description="the image mode input frames are converted to; null when no image "
        "holds the model's channels (send `tensor`)"
    )
    output_frame_shape: list[int] = Field(description="[height, width, channels] predicted")
    output_mode: str | None = Field(
        description="the mode of the predicted PNGs: L, RGB or RGBA; null when no image "
        "holds the output's channels (the answer carries `tensor`)"
    )
    max_horizon: int = Field(description="1 where a prediction cannot be fed back in")


class ModelSummary(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    sha256: str
    provider: str
    task: str = Field(description="the card's task: next_frame, tensor or series")
    output_kind: str = Field(description="next_frame, frame_per_step or tensor")
    input_name: str
    input_shape: list[int | str]
    output_name: str
    output_shape: list[int | str]
    batch_buckets: list[int] = Field(
        default=[],
        description="the batch sizes runs are padded to, each on a session of its own "
        "(CONVLSTM_PAD_BATCHES); empty where runs go through at their own size",
    )
    predict: PredictSpec | None = Field(
        default=None,
        description="what /predict takes and gives; null for a model served only over "
        "/v2/models/{name}/infer",
    )


class FailedModelSummary(BaseModel):
    name: str
    file: str
    reason: str = Field(description="why it is not served")


class RetainedStreamVersion(BaseModel):
    """A replaced version kept for its open streams; new streams use the served one."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    sha256: str
    open_streams: int = Field(description="streams of it held here; released at 0")


class ReadyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ready"] = "ready"
    model: str
    model_version: str
    sha256: str
    provider: str = Field(description="the execution provider that runs the model")
    requested_provider: str = Field(description="the best provider the settings asked for")
    fallback: bool = Field(description="true when a GPU provider was asked for but is not used")
    fallback_reason: str | None = Field(
        default=None, description="why the GPU provider asked for is not used, when it is not"
    )
    input_name: str
    input_shape: list[int | str]
    models: list[str] = Field(description="every model served; `model` above is the default")
    served: list[ModelSummary] = Field(
        default_factory=list, description="every model served, with its shapes and task"
    )
    failed: list[FailedModelSummary] = Field(
        default_factory=list,
        description="models in the directory that could not be served, and why",
    )
    max_body_bytes: int = Field(
        description="request bodies above this many bytes get 413 (CONVLSTM_MAX_BODY_BYTES)"
    )
    max_body_bytes_source: Literal["setting", "models"] = Field(
        description="`setting`: CONVLSTM_MAX_BODY_BYTES; `models`: the largest valid "
        "request of the served models at max_batch_size, as JSON"
    )
    stream_store: Literal["memory", "snapshot", "redis"] = Field(
        default="memory",
        description="where stream state lives (CONVLSTM_STREAM_STORE; `snapshot`: memory "
        "and CONVLSTM_STREAM_SNAPSHOT_DIR)",
    )
    stream_durability: Literal["step", "drain"] = Field(
        default="step", description="when stream state reaches the store"
    )
    streams_retained: list[RetainedStreamVersion] = Field(
        default_factory=list,
        description="replaced model versions whose step graphs stay loaded for the open "
        "streams this server holds of them (CONVLSTM_STREAM_RETAINED_VERSIONS at most)",
    )


class ErrorDetail(BaseModel):
    type: str = Field(description="a stable machine-readable name, e.g. invalid_input")
    message: str = Field(description="what was wrong and where")
    location: str | None = Field(default=None, description="the field, e.g. frames[3]")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="every problem found, when there were several"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail
