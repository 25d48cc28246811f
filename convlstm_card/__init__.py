"""The model card: the one contract between ``model_export``, which writes it beside
each ONNX file, and ``service``, which reads it to learn how to serve that file.

Only pydantic is imported here, so that both halves (and their container stages) can
use it without TensorFlow or onnxruntime.
"""

from convlstm_card.files import card_path, read_card, sha256_of, write_card
from convlstm_card.schema import (
    Format,
    Graph,
    GraphFile,
    Layer,
    ModelCard,
    OutputKind,
    ParameterCounts,
    StreamSpec,
    Task,
    TensorSpec,
    infer_output_kind,
    infer_task,
)

__all__ = [
    "Format",
    "Graph",
    "GraphFile",
    "Layer",
    "ModelCard",
    "OutputKind",
    "ParameterCounts",
    "StreamSpec",
    "Task",
    "TensorSpec",
    "card_path",
    "infer_output_kind",
    "infer_task",
    "read_card",
    "sha256_of",
    "write_card",
]
