"""Tiny real Keras models of every kind the service serves, exported by tf2onnx, each
with its card: the fixtures of ``test_any_model.py``.

Kept tiny (4-8 frames, 8-48 px, two filters) so that building all of them is seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard, OutputKind, Task, TensorSpec, card_path, sha256_of, write_card

INPUT_NAME = "frames"
OPSET = 17


@dataclass(frozen=True)
class BuiltModel:
    name: str
    path: Path
    keras_model: Any

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(self.keras_model.predict(x, verbose=0), dtype=np.float32)


def _convlstm(t: int, h: int, w: int, c: int, name: str) -> tuple[Any, Any]:
    import keras

    inputs = keras.Input(shape=(t, h, w, c), name=INPUT_NAME)
    x = keras.layers.ConvLSTM2D(
        filters=2, kernel_size=(3, 3), padding="same", return_sequences=True, name=f"{name}_lstm"
    )(inputs)
    return inputs, x


def next_frame_model(t: int, h: int, w: int, c: int) -> Any:
    """(N, T, H, W, C) -> the next frame (N, H, W, C), sigmoid."""
    import keras

    inputs, x = _convlstm(t, h, w, c, "nf")
    last = keras.layers.Lambda(lambda s: s[:, -1], name="last")(x)
    out = keras.layers.Conv2D(c, (3, 3), padding="same", activation="sigmoid", name="head")(last)
    return keras.Model(inputs, out, name="next_frame")


def frame_per_step_model(t: int, h: int, w: int, c: int) -> Any:
    """(N, T, H, W, C) -> one frame per step (N, T, H, W, C), sigmoid."""
    import keras

    inputs, x = _convlstm(t, h, w, c, "fps")
    out = keras.layers.Conv3D(c, (1, 3, 3), padding="same", activation="sigmoid", name="head")(x)
    return keras.Model(inputs, out, name="frame_per_step")


def tensor_output_model(t: int, h: int, w: int, c: int, classes: int) -> Any:
    """(N, T, H, W, C) -> class scores (N, classes)."""
    import keras

    inputs, x = _convlstm(t, h, w, c, "cls")
    pooled = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    out = keras.layers.Dense(classes, activation="softmax", name="scores")(pooled)
    return keras.Model(inputs, out, name="scores")


def export_with_card(
    model: Any, directory: Path, name: str, task: Task, output_kind: OutputKind
) -> BuiltModel:
    import tensorflow as tf
    import tf2onnx

    in_shape = list(model.input_shape[1:])
    spec = (tf.TensorSpec((None, *in_shape), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    path = directory / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    out_shape = list(model.output_shape[1:])
    card = ModelCard(
        name=name,
        version="0.1.0",
        file=path.name,
        sha256=sha256_of(path),
        task=task,
        output_kind=output_kind,
        inputs=[TensorSpec(name=INPUT_NAME, shape=["N", *in_shape], range=(0.0, 1.0))],
        outputs=[TensorSpec(name=proto.graph.output[0].name, shape=["N", *out_shape])],
    )
    write_card(card_path(path), card)
    return BuiltModel(name, path, model)


def write_broken_model(directory: Path, name: str = "broken") -> Path:
    """Garbage bytes under a .onnx name, with a card that looks right."""
    path = directory / f"{name}.onnx"
    path.write_bytes(b"this is not an onnx file\x00\x01\x02")
    card = ModelCard(
        name=name,
        task="next_frame",
        output_kind="next_frame",
        inputs=[TensorSpec(name=INPUT_NAME, shape=["N", 4, 8, 8, 1], range=(0.0, 1.0))],
        outputs=[TensorSpec(name="out", shape=["N", 8, 8, 1])],
    )
    write_card(card_path(path), card)
    return path


def build_all(directory: Path) -> dict[str, BuiltModel]:
    """The grey next-frame model (the default), a frame-per-step RGB one, a tensor-output
    one and a broken file, in ``directory``."""
    import keras

    keras.utils.set_random_seed(13)
    built = {
        "grey": export_with_card(
            next_frame_model(8, 24, 48, 1), directory, "grey", "next_frame", "next_frame"
        ),
        "steps": export_with_card(
            frame_per_step_model(4, 8, 12, 3), directory, "steps", "next_frame", "frame_per_step"
        ),
        "scores": export_with_card(
            tensor_output_model(4, 8, 8, 1, 3), directory, "scores", "next_frame", "tensor"
        ),
    }
    write_broken_model(directory)
    return built
