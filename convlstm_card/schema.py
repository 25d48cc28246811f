"""The model card's fields, typed.

The service reads the contract (``task``, ``output_kind``, ``inputs``, ``outputs``,
``sha256``); people read the provenance (``format``, ``graph``, ``training``, ``data``,
``parity``, ``evaluation``, ``versions``). Every model accepts sections it does not
know (``extra="allow"``) and writes back only what was set, so a card read and written
again keeps its keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

Task = Literal["next_frame", "tensor", "series"]
"""What the model does, and so which adapter serves it: ``next_frame`` takes a sequence
(N, T, H, W, C) of frames; ``tensor`` takes and gives plain arrays; ``series`` forecasts the next values of a
time series from a window of its last rows (the card's ``series`` section says how)."""

OutputKind = Literal["next_frame", "frame_per_step", "tensor"]
"""What the output is: ``next_frame`` one frame (N, H, W, C) after the sequence;
``frame_per_step`` one frame per input step (N, T, H, W, C); ``tensor`` anything else."""

InputKind = Literal["image", "tensor"]
"""What an input's values are: ``image`` pixels scaled to [0, 1] (frames of 1, 3 or 4
channels, which clients may send as PNGs or 8-bit pixels); ``tensor`` plain numbers, in
no range unless the card's ``range`` states one."""

Dim = int | str
"""A fixed size, or a name (``"N"``) for an axis of any size."""

_OPEN = ConfigDict(extra="allow", use_attribute_docstrings=True)


class TensorSpec(BaseModel):
    """One input or output of the graph."""

    model_config = _OPEN

    name: str
    shape: list[Dim]
    """Sizes, the batch axis first."""
    dtype: str = "float32"
    kind: InputKind | None = None
    """For an input: ``image`` or ``tensor``. Cards written before it existed leave it
    out; ``ModelCard.input_kind`` reads theirs from the task."""
    range: tuple[float, float] | None = None
    """The lowest and highest value the model takes or gives, where the card states it;
    the service refuses input values outside it. ``None``: any finite value."""


class Format(BaseModel):
    model_config = _OPEN

    onnx_opset: int
    producer: str


class GraphFile(BaseModel):
    """Another ONNX file the served graph relates to, by name and content."""

    model_config = _OPEN

    file: str
    """Relative to the card's directory."""
    sha256: str


class Graph(BaseModel):
    """How the served graph was made."""

    model_config = _OPEN

    kind: str
    """``plain`` (tf2onnx as is), ``fast`` (the rebuilt ConvLSTM) or ``int8``."""
    description: str = ""
    reason: str | None = None
    """Why this kind was made, where the exporter chose (the fast graph, or why not)."""
    plain: GraphFile | None = None
    """For a fast graph: the plain export kept beside it."""
    source: GraphFile | None = None
    """For an int8 graph: the float32 graph it was quantized from."""


class StreamSpec(BaseModel):
    """The step graph of a ConvLSTM stack, which streams run one frame at a time with the
    state kept on the server (``model_export.export.step_graph`` writes it)."""

    model_config = _OPEN

    step_graph: GraphFile
    """The ONNX file of one time step, relative to the card's directory."""
    frame: TensorSpec
    """The step graph's frame input (N, H, W, C)."""
    prediction: TensorSpec
    """Its predicted next frame (N, H, W, C)."""
    state: list[TensorSpec]
    """Every layer's hidden and cell state, in order: each an input of that name and an
    output ``next_<name>``, channels first (N, F, H, W)."""
    state_bytes_per_stream: int
    """float32 bytes of one stream's state."""
    parity: dict[str, Any] | None = None
    """How closely T steps from a zero state match the windowed graph."""


class Layer(BaseModel):
    """One row of the parameter table: a layer that holds weights."""

    model_config = _OPEN

    name: str
    kind: str
    output_shape: str
    formula: str
    params: int
    part: Literal["body", "head"]


class ParameterCounts(BaseModel):
    model_config = _OPEN

    body: int
    head: int
    total: int


FREQUENCIES = {
    "S": "second",
    "T": "minute",
    "H": "hour",
    "D": "day",
    "W": "week",
    "M": "month",
    "Q": "quarter",
    "Y": "year",
}
"""KServe's time-series frequencies: each short name and its word (the word is stored)."""


def frequency_word(name: str) -> str | None:
    """``week`` for ``W`` or ``week``; ``None`` for a name KServe does not know."""
    if name in FREQUENCIES:
        return FREQUENCIES[name]
    return name if name in FREQUENCIES.values() else None


class SeriesScaling(BaseModel):
    """How the server turns a client's values into the model's and back, per feature:
    ``model = (value - offset) / scale``. No scaling section: the model takes raw units."""

    model_config = _OPEN

    kind: str = "affine"
    """How the numbers were chosen (``standard``: the training split's mean and std)."""
    offset: list[float]
    scale: list[float]


class SeriesSpec(BaseModel):
    """A series model's framing: its input is the last W = S*K rows (time steps) of a
    series of F features, folded row-major into the graph's input shape ((S, 1, K, F)
    for a ConvLSTM2D with a (1, k) kernel, (S, K, F) for a ConvLSTM1D or a CNN-LSTM,
    (W, F) for a plain LSTM); its output (h,) is the next h values of one target feature,
    (h, F') the next h rows of F' target features."""

    model_config = _OPEN

    subsequences: int
    """S: sub-sequences per window."""
    subsequence_length: int
    """K: time steps per sub-sequence."""
    features: int
    """F: values per time step."""
    horizon: int
    """h: time steps forecast by one model run."""
    targets: list[int]
    """The features (column indices) the output forecasts, in the output's order."""
    feature_names: list[str] | None = None
    frequency: str | None = None
    """The step between rows, in KServe's time-series words (``week``, ``W``, ``year``)."""
    scaling: SeriesScaling | None = None
    residual_quantiles: dict[str, list[list[float]]] | None = None
    """Quantile (``"0.1"``) -> per horizon step, per target: the validation split's
    forecast error at that quantile, in the client's units; added to the forecast to
    answer quantile requests."""

    @property
    def window(self) -> int:
        """W = S * K: the rows a forecast needs."""
        return self.subsequences * self.subsequence_length

    @property
    def univariate(self) -> bool:
        """One feature forecast from itself alone: the forecast can be fed back in."""
        return self.features == 1 and self.targets == [0]


class ModelCard(BaseModel):
    """The JSON file beside each ONNX file (``convlstm_card.card_path`` says where)."""

    model_config = _OPEN

    name: str
    version: str = "unknown"
    file: str | None = None
    """The ONNX file's name, in the card's directory."""
    sha256: str | None = None
    """The ONNX file's sha256: a card describes exactly one file."""
    task: Task
    """Stated by cards written since it existed; inferred from ``inputs`` before."""
    output_kind: OutputKind
    """Stated by cards written since it existed; inferred from the shapes before."""
    format: Format | None = None
    graph: Graph | None = None
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    normalisation: str | None = None
    layers: list[Layer] = []
    parameters: ParameterCounts | None = None
    data: dict[str, Any] | None = None
    """How the training data was made."""
    training: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    """How closely the ONNX graph matches the model it was made from."""
    evaluation: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    """Tool versions that made the file."""
    series: SeriesSpec | None = None
    """For ``task: series``: the window's framing, the target, frequency and scaling."""
    stream: StreamSpec | None = None
    """For a ConvLSTM stack with a step graph: what streams run."""

    @model_validator(mode="before")
    @classmethod
    def _infer_task_and_output_kind(cls, data: Any) -> Any:
        # The committed cards predate both fields; their shapes say what they would be.
        if not isinstance(data, dict):
            return data
        in_shape, out_shape = _first_shape(data.get("inputs")), _first_shape(data.get("outputs"))
        filled = dict(data)
        if "task" not in filled and in_shape is not None:
            filled["task"] = infer_task(in_shape)
        task = filled.get("task")
        if (
            "output_kind" not in filled
            and in_shape
            and out_shape
            and task in ("next_frame", "tensor")
        ):
            filled["output_kind"] = infer_output_kind(task, in_shape, out_shape)
        return filled

    @property
    def input(self) -> TensorSpec:
        """The first (for the served models, the only) input."""
        if not self.inputs:
            raise LookupError(f"the card of {self.name} states no inputs")
        return self.inputs[0]

    @property
    def input_kind(self) -> InputKind:
        """The input's stated kind; for a card from before ``kind``, ``image`` for a
        next-frame model (its frames are pixels) and ``tensor`` for any other."""
        if self.input.kind is not None:
            return self.input.kind
        return "image" if self.task == "next_frame" else "tensor"

    @property
    def output(self) -> TensorSpec:
        """The first (for the served models, the only) output."""
        if not self.outputs:
            raise LookupError(f"the card of {self.name} states no outputs")
        return self.outputs[0]

    def to_json(self) -> dict[str, Any]:
        """The card as JSON values, with the sections it was given and no others."""
        return self.model_dump(mode="json", exclude_unset=True)


def infer_task(input_shape: list[Dim]) -> Task:
    """``next_frame`` for a sequence of frames (N, T, H, W, C), else ``tensor``."""
    return "next_frame" if len(input_shape) == 5 else "tensor"


def infer_output_kind(task: Task, input_shape: list[Dim], output_shape: list[Dim]) -> OutputKind:
    """What the output of a ``task`` model with these shapes is (batch axes first)."""
    if task == "next_frame":
        if list(output_shape[1:]) == list(input_shape[2:]):
            return "next_frame"
        if list(output_shape[1:]) == list(input_shape[1:]):
            return "frame_per_step"
    return "tensor"


def _first_shape(specs: Any) -> list[Dim] | None:
    if not isinstance(specs, list) or not specs:
        return None
    first = specs[0]
    if isinstance(first, TensorSpec):
        return first.shape
    shape = first.get("shape") if isinstance(first, dict) else None
    return shape if isinstance(shape, list) else None


def infer_series(
    input_shape: list[int],
    output_shape: list[int],
    targets: list[int] | None = None,
) -> SeriesSpec:
    """The framing of a series model with these shapes (batch axes left out): S, K, F
    from (S, 1, K, F), (S, K, F) or (W, F); h from (h,) or (h, F'). ``targets`` default to
    feature 0 for one output series and to every feature for F' = F; ``ValueError`` if
    the shapes fit no framing."""
    if len(input_shape) == 4 and input_shape[1] == 1:
        s, k, f = input_shape[0], input_shape[2], input_shape[3]
    elif len(input_shape) == 3:
        s, k, f = input_shape
    elif len(input_shape) == 2:
        s, k, f = 1, input_shape[0], input_shape[1]
    else:
        raise ValueError(
            f"input {input_shape} is not a folded window (S, 1, K, F), (S, K, F) or (W, F)"
        )
    if len(output_shape) not in (1, 2):
        raise ValueError(f"output {output_shape} is not (h,) or (h, F')")
    horizon = output_shape[0]
    outputs = 1 if len(output_shape) == 1 else output_shape[1]
    if targets is None:
        if outputs == 1:
            targets = [0]
        elif outputs == f:
            targets = list(range(f))
        else:
            raise ValueError(
                f"output {output_shape} forecasts {outputs} of the {f} features; say which"
            )
    spec = SeriesSpec(
        subsequences=s, subsequence_length=k, features=f, horizon=horizon, targets=targets
    )
    problem = series_problem(spec, input_shape, output_shape)
    if problem is not None:
        raise ValueError(problem)
    return spec


def series_problem(
    spec: SeriesSpec, input_shape: Sequence[Dim], output_shape: Sequence[Dim]
) -> str | None:
    """Why ``spec`` does not describe a graph of these shapes (batch axes left out), or
    ``None`` if it does."""
    window = [spec.subsequences, 1, spec.subsequence_length, spec.features]
    layouts = [window, [window[0], *window[2:]]]
    if spec.subsequences == 1:
        layouts.append([spec.subsequence_length, spec.features])
    if list(input_shape) not in layouts:
        return (
            f"input {list(input_shape)} is not the window of S={spec.subsequences}, "
            f"K={spec.subsequence_length}, F={spec.features} folded as (S, 1, K, F), "
            "(S, K, F) or (W, F)"
        )
    expected = [spec.horizon] if len(spec.targets) == 1 else [spec.horizon, len(spec.targets)]
    if list(output_shape) not in (expected, [spec.horizon, len(spec.targets)]):
        return f"output {list(output_shape)} is not h={spec.horizon} steps of {spec.targets}"
    if any(not 0 <= t < spec.features for t in spec.targets) or not spec.targets:
        return f"targets {spec.targets} are not features of 0..{spec.features - 1}"
    if spec.feature_names is not None and len(spec.feature_names) != spec.features:
        return f"feature_names {spec.feature_names} do not name the {spec.features} features"
    scaling = spec.scaling
    if scaling is not None:
        if len(scaling.offset) != spec.features or len(scaling.scale) != spec.features:
            return f"scaling needs {spec.features} offsets and scales, one per feature"
        if not all(math.isfinite(v) for v in [*scaling.offset, *scaling.scale]) or any(
            v == 0 for v in scaling.scale
        ):
            return "scaling: every offset and scale must be finite and every scale non-zero"
    return None
