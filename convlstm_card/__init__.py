"""The model card: the one contract between ``model_export``, which writes it beside
each ONNX file, and ``service``, which reads it to learn how to serve that file.

Only pydantic is imported here, so that both halves (and their container stages) can
use it without TensorFlow or onnxruntime.
"""

from convlstm_card.files import card_path, read_card, sha256_of, write_card
from convlstm_card.schema import (
    FREQUENCIES,
    Format,
    Graph,
    GraphFile,
    InputKind,
    Layer,
    ModelCard,
    OutputKind,
    ParameterCounts,
    SeriesScaling,
    SeriesSpec,
    StreamSpec,
    Task,
    TensorSpec,
    frequency_word,
    infer_output_kind,
    infer_series,
    infer_task,
    series_problem,
)

__all__ = [
    "FREQUENCIES",
    "Format",
    "Graph",
    "GraphFile",
    "InputKind",
    "Layer",
    "ModelCard",
    "OutputKind",
    "ParameterCounts",
    "SeriesScaling",
    "SeriesSpec",
    "StreamSpec",
    "Task",
    "TensorSpec",
    "card_path",
    "frequency_word",
    "infer_output_kind",
    "infer_series",
    "infer_task",
    "read_card",
    "series_problem",
    "sha256_of",
    "write_card",
]
