"""Keras checkpoint -> ONNX with tf2onnx, a parity check, and the model card.

A ConvLSTM stack is exported twice: the served graph (``<name>.onnx``) from
the export-friendly rebuild in ``model_export.export.fast``, and the plain tf2onnx
export of the checkpoint as is beside it (``<name>.plain.onnx``), for
comparison. Both must match the Keras model; the card names both. Other
models are exported plain only.

TensorFlow and tf2onnx are imported inside the functions that need them, so
training (which may run on another Keras backend) never loads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from convlstm_card import (
    Format,
    Graph,
    GraphFile,
    Layer,
    ModelCard,
    ParameterCounts,
    TensorSpec,
    card_path,
    infer_output_kind,
    infer_task,
    read_card,
    sha256_of,
    write_card,
)
from model_export.export.fast import GRAPH_DESCRIPTION, build_fast_convlstm, is_convlstm_stack
from model_export.export.keras_to_onnx import (
    MODEL_VERSION,
    OPSET,
    PARITY_SEQUENCES,
    PARITY_TOLERANCE,
    PLAIN_DESCRIPTION,
    onnx_predict,
    to_onnx_bytes,
    tool_versions,
)
from model_export.export.step_graph import (
    STEP_PARITY_TOLERANCE,
    StateLayout,
    export_step_graph,
    parity_frames,
    step_parity,
)
from model_export.frames import data
from model_export.frames.model import INPUT_NAME, OUTPUT_NAME, parameter_table


class ParityError(RuntimeError):
    """The ONNX graph does not compute what the Keras model computes."""


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    card_path: Path
    max_abs_diff: float
    sha256: str
    plain_path: Path | None = None
    plain_max_abs_diff: float | None = None


def plain_path(onnx_path: Path) -> Path:
    """Where the plain export of a fast graph goes: ``convlstm.onnx`` -> ``convlstm.plain.onnx``."""
    return onnx_path.with_suffix(".plain.onnx")


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
    seqs = data.generate_split(n, "test", frames=frames + 1)
    return data.inputs_and_targets(seqs, every_step=False)[0]


def build_card(
    model: keras.Model,
    *,
    name: str,
    onnx_path: Path,
    max_abs_diff: float,
    training: dict[str, Any] | None,
    opset: int,
    graph: Graph | None = None,
) -> ModelCard:
    rows = parameter_table(model)
    in_shape: list[int | str] = ["N", *[int(d) for d in model.input.shape[1:]]]
    out_shape: list[int | str] = ["N", *[int(d) for d in model.output.shape[1:]]]
    task = infer_task(in_shape)
    return ModelCard(
        name=name,
        version=MODEL_VERSION,
        file=onnx_path.name,
        sha256=sha256_of(onnx_path),
        task=task,
        output_kind=infer_output_kind(task, in_shape, out_shape),
        format=Format(onnx_opset=opset, producer="tf2onnx"),
        graph=graph or Graph(kind="plain", description=PLAIN_DESCRIPTION),
        inputs=[TensorSpec(name=INPUT_NAME, shape=in_shape, dtype="float32", range=(0.0, 1.0))],
        outputs=[TensorSpec(name=OUTPUT_NAME, shape=out_shape, dtype="float32", range=(0.0, 1.0))],
        normalisation="RGB channels last, value = uint8 / 255; no mean or std shift",
        layers=[Layer.model_validate(asdict(r)) for r in rows],
        parameters=ParameterCounts(
            body=sum(r.params for r in rows if r.part == "body"),
            head=sum(r.params for r in rows if r.part == "head"),
            total=sum(r.params for r in rows),
        ),
        data=data.DataSpec().as_dict(),
        training=training,
        parity={
            "max_abs_diff": max_abs_diff,
            "tolerance": PARITY_TOLERANCE,
            "sequences": PARITY_SEQUENCES,
            "split": "test",
        },
        evaluation=None,
        versions=tool_versions(),
    )


def training_record(models_dir: Path, name: str) -> dict[str, Any] | None:
    """The training record ``train`` wrote, without the per-epoch history."""
    path = models_dir / "training" / f"{name}.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    record.pop("history", None)
    return record


def _checked_parity(
    model: keras.Model,
    onnx_bytes: bytes,
    x: NDArray[np.float32],
    *,
    what: str,
    tolerance: float,
) -> float:
    diff = parity(model, onnx_bytes, x)
    if not diff <= tolerance:
        raise ParityError(f"{what} differs from Keras by {diff:.3g} (max allowed {tolerance:g})")
    return diff


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_suffix(f"{path.suffix}.tmp{os.getpid()}")
    tmp.write_bytes(content)
    tmp.replace(path)


def export(
    checkpoint: Path,
    onnx_path: Path | None = None,
    *,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
    fast: bool = True,
    keep_evaluation: bool = False,
) -> ExportResult:
    """Convert ``checkpoint`` to ONNX, check parity, write the ONNX file(s) and the card.

    A ConvLSTM stack gets the fast graph at ``onnx_path`` and the plain export
    at ``plain_path(onnx_path)`` (``fast=False``: the plain export only, at
    ``onnx_path``). Nothing is written unless every graph passes parity, so a
    bad graph never replaces a good one. ``keep_evaluation`` carries the
    existing card's ``evaluation`` over, for a new graph of the same checkpoint.
    """
    onnx_path = onnx_path or checkpoint.with_suffix(".onnx")
    model = keras.models.load_model(checkpoint)
    x = parity_inputs(model)
    plain_bytes = to_onnx_bytes(model, opset)
    plain_diff = _checked_parity(
        model, plain_bytes, x, what=f"{checkpoint}: ONNX output", tolerance=tolerance
    )
    if fast and is_convlstm_stack(model):
        served_bytes = to_onnx_bytes(build_fast_convlstm(model), opset)
        diff = _checked_parity(
            model,
            served_bytes,
            x,
            what=f"{checkpoint}: fast ONNX graph output",
            tolerance=tolerance,
        )
        plain: Path | None = plain_path(onnx_path)
    else:
        served_bytes, diff, plain = plain_bytes, plain_diff, None

    previous = card_path(onnx_path)
    evaluation = read_card(previous).evaluation if keep_evaluation and previous.exists() else None
    graph = Graph(kind="plain", description=PLAIN_DESCRIPTION)
    if plain is not None:
        _write_atomically(plain, plain_bytes)
        graph = Graph(
            kind="fast",
            description=GRAPH_DESCRIPTION,
            plain=GraphFile(
                file=plain.name,
                sha256=sha256_of(plain),
                description=PLAIN_DESCRIPTION,
                parity_max_abs_diff=plain_diff,
            ),
        )
    _write_atomically(onnx_path, served_bytes)
    name = checkpoint.stem
    card = build_card(
        model,
        name=name,
        onnx_path=onnx_path,
        max_abs_diff=diff,
        training=training_record(checkpoint.parent, name),
        opset=opset,
        graph=graph,
    )
    card.evaluation = evaluation
    write_card(card_path(onnx_path), card)
    if plain is not None:
        # A ConvLSTM stack also gets the one-step graph that streams run.
        export_step_graph(checkpoint, onnx_path, opset=opset)
    return ExportResult(
        onnx_path,
        card_path(onnx_path),
        diff,
        str(card.sha256),
        plain,
        plain_diff if plain is not None else None,
    )


def check_graphs(checkpoint: Path, tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Check that a committed ONNX file, its card and any plain export belong to ``checkpoint``.

    Returns the parity difference per ONNX file name; raises ``ParityError``
    when a file does not compute what the checkpoint computes or its sha256
    is not the one the card records.
    """
    onnx_path = checkpoint.with_suffix(".onnx")
    card = read_card(card_path(onnx_path))
    files = {onnx_path: str(card.sha256)}
    plain = card.graph.plain if card.graph else None
    if plain is not None:
        files[onnx_path.parent / plain.file] = plain.sha256
    for path, recorded in files.items():
        actual = sha256_of(path)
        if recorded != actual:
            raise ParityError(f"{path}: card sha256 {recorded} but file is {actual}")
    model = keras.models.load_model(checkpoint)
    x = parity_inputs(model)
    diffs = {}
    for path in files:
        diff = parity(model, path, x)
        if not diff <= tolerance:
            raise ParityError(
                f"{path}: differs from {checkpoint} by {diff:.3g} (max allowed {tolerance:g})"
            )
        diffs[path.name] = diff
    if card.stream is not None:
        diffs.update(_check_step_graph(onnx_path, card))
    return diffs


def _check_step_graph(onnx_path: Path, card: ModelCard) -> dict[str, float]:
    """The step graph the card names: its sha256, and its steps from a zero state against
    the windowed graph."""
    spec = card.stream
    assert spec is not None
    path = onnx_path.parent / spec.step_graph.file
    actual = sha256_of(path)
    if actual != spec.step_graph.sha256:
        raise ParityError(f"{path}: card sha256 {spec.step_graph.sha256} but file is {actual}")
    frame_shape = tuple(int(d) for d in spec.frame.shape[1:])
    layout = StateLayout(
        tuple(int(s.shape[1]) for s in spec.state[::2]), frame_shape[0], frame_shape[1]
    )
    x = parity_frames(int(card.input.shape[1]), frame_shape)
    diff = step_parity(path, layout, onnx_path, x)
    if not diff <= STEP_PARITY_TOLERANCE:
        raise ParityError(
            f"{path}: stepped from zero state, differs from {onnx_path.name} by {diff:.3g} "
            f"(max allowed {STEP_PARITY_TOLERANCE:g})"
        )
    return {path.name: diff}


def check(checkpoint: Path, tolerance: float = PARITY_TOLERANCE) -> float:
    """``check_graphs``, reduced to the largest difference over the graphs."""
    return max(check_graphs(checkpoint, tolerance).values())
