"""Keras checkpoint -> ONNX with tf2onnx, a parity check, and the model card.

TensorFlow and tf2onnx are imported inside the functions that need them, so
training (which may run on another Keras backend) never loads them.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model_export import data
from model_export.card import card_path, sha256_of, write_card
from model_export.model import INPUT_NAME, OUTPUT_NAME, parameter_table

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_SEQUENCES = 8
MODEL_VERSION = "1.0.0"


class ParityError(RuntimeError):
    """The ONNX graph does not compute what the Keras model computes."""


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    card_path: Path
    max_abs_diff: float
    sha256: str


def to_onnx_bytes(model: keras.Model, opset: int = OPSET) -> bytes:
    """The model as a serialised ONNX graph with a dynamic batch axis.

    Input and output are renamed to ``frames`` and ``next_frame`` so that
    clients never see tf2onnx's generated names.
    """
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    old_out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return bytes(proto.SerializeToString())


def onnx_predict(onnx_model: bytes | Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    import onnxruntime as ort

    source = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    out: NDArray[np.float32] = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return out


def parity(model: keras.Model, onnx_model: bytes | Path, x: NDArray[np.float32]) -> float:
    """Max abs difference between Keras and onnxruntime on ``x``."""
    expected = np.asarray(model.predict(x, verbose=0))
    got = onnx_predict(onnx_model, x)
    if expected.shape != got.shape:
        raise ParityError(f"output shapes differ: Keras {expected.shape}, ONNX {got.shape}")
    return float(np.max(np.abs(expected - got)))


def parity_inputs(model: keras.Model, n: int = PARITY_SEQUENCES) -> NDArray[np.float32]:
    """Held-out test sequences shaped for ``model``'s input."""
    frames = int(model.input.shape[1])
    seqs = data.generate(n, seed=data.SPLIT_SEEDS["test"], split="test", frames=frames + 1)
    return data.inputs_and_targets(seqs, every_step=False)[0]


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build_card(
    model: keras.Model,
    *,
    name: str,
    onnx_path: Path,
    max_abs_diff: float,
    training: dict[str, Any] | None,
    opset: int,
) -> dict[str, Any]:
    rows = parameter_table(model)
    in_shape = ["N", *[int(d) for d in model.input.shape[1:]]]
    out_shape = ["N", *[int(d) for d in model.output.shape[1:]]]
    return {
        "name": name,
        "version": MODEL_VERSION,
        "file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "format": {"onnx_opset": opset, "producer": "tf2onnx"},
        "inputs": [
            {"name": INPUT_NAME, "shape": in_shape, "dtype": "float32", "range": [0.0, 1.0]}
        ],
        "outputs": [
            {"name": OUTPUT_NAME, "shape": out_shape, "dtype": "float32", "range": [0.0, 1.0]}
        ],
        "normalisation": "RGB channels last, value = uint8 / 255; no mean or std shift",
        "layers": [asdict(r) for r in rows],
        "parameters": {
            "body": sum(r.params for r in rows if r.part == "body"),
            "head": sum(r.params for r in rows if r.part == "head"),
            "total": sum(r.params for r in rows),
        },
        "data": data.DataSpec().as_dict(),
        "training": training,
        "parity": {
            "max_abs_diff": max_abs_diff,
            "tolerance": PARITY_TOLERANCE,
            "sequences": PARITY_SEQUENCES,
            "split": "test",
        },
        "evaluation": None,
        "versions": tool_versions(),
    }


def training_record(models_dir: Path, name: str) -> dict[str, Any] | None:
    """The training record ``train`` wrote, without the per-epoch history."""
    path = models_dir / "training" / f"{name}.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    record.pop("history", None)
    return record


def export(
    checkpoint: Path,
    onnx_path: Path | None = None,
    *,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Convert ``checkpoint`` to ONNX, check parity, write the ONNX file and its card.

    Nothing is written when parity fails, so a bad graph never replaces a good one.
    """
    onnx_path = onnx_path or checkpoint.with_suffix(".onnx")
    model = keras.models.load_model(checkpoint)
    onnx_bytes = to_onnx_bytes(model, opset)
    diff = parity(model, onnx_bytes, parity_inputs(model))
    if not diff <= tolerance:
        raise ParityError(
            f"{checkpoint}: ONNX output differs from Keras by {diff:.3g} (max allowed {tolerance:g})"
        )
    tmp = onnx_path.with_suffix(f".onnx.tmp{os.getpid()}")
    tmp.write_bytes(onnx_bytes)
    tmp.replace(onnx_path)
    name = checkpoint.stem
    card = build_card(
        model,
        name=name,
        onnx_path=onnx_path,
        max_abs_diff=diff,
        training=training_record(checkpoint.parent, name),
        opset=opset,
    )
    write_card(card_path(onnx_path), card)
    return ExportResult(onnx_path, card_path(onnx_path), diff, card["sha256"])


def check(checkpoint: Path, tolerance: float = PARITY_TOLERANCE) -> float:
    """Check that a committed ONNX file and its card still belong to ``checkpoint``.

    Returns the parity difference; raises ``ParityError`` when the ONNX file
    does not compute what the checkpoint computes or the card's sha256 is not
    the file's.
    """
    from model_export.card import read_card

    onnx_path = checkpoint.with_suffix(".onnx")
    card = read_card(card_path(onnx_path))
    actual = sha256_of(onnx_path)
    if card["sha256"] != actual:
        raise ParityError(f"{onnx_path}: card sha256 {card['sha256']} but file is {actual}")
    model = keras.models.load_model(checkpoint)
    diff = parity(model, onnx_path, parity_inputs(model))
    if not diff <= tolerance:
        raise ParityError(
            f"{onnx_path}: differs from {checkpoint} by {diff:.3g} (max allowed {tolerance:g})"
        )
    return diff
