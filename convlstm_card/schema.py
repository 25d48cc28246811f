"""The model card's fields, typed.

The service reads the contract (``task``, ``output_kind``, ``inputs``, ``outputs``,
``sha256``); people read the provenance (``format``, ``graph``, ``training``, ``data``,
``parity``, ``evaluation``, ``versions``). Every model accepts sections it does not
know (``extra="allow"``) and writes back only what was set, so a card read and written
again keeps its keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

Task = Literal["next_frame", "tensor", "series"]
"""What the model does, and so which adapter serves it: ``next_frame`` takes a sequence
(N, T, H, W, C) of frames; ``tensor`` takes and gives plain arrays; ``series`` marks a
time-series model (``python -m model_export export --task series``), served as a
``tensor`` model until its own adapter comes."""

OutputKind = Literal["next_frame", "frame_per_step", "tensor"]
"""What the output is: ``next_frame`` one frame (N, H, W, C) after the sequence;
``frame_per_step`` one frame per input step (N, T, H, W, C); ``tensor`` anything else."""

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
    range: tuple[float, float] | None = None
    """The lowest and highest value the model takes or gives, where the card states it."""


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
    state kept on the server (``model_export.step_graph`` writes it)."""

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
