"""The two next-frame models: the ConvLSTM stack and the CNN-LSTM it is compared with.

Both are built with the functional API (tf2onnx cannot convert a ``Sequential``
model, tf2onnx issue #2448). Each builder makes either the inference model,
which maps 15 frames to the one frame that follows, or the training model,
which predicts the next frame after every step. The two share every weight,
in the same order, so weights trained on the second load straight into the
first: ``return_sequences`` on the last recurrent layer changes no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
from keras import layers

from model_export.data import CANVAS, CHANNELS, FRAMES

Variant = Literal["convlstm", "cnn_lstm"]
VARIANTS: tuple[Variant, ...] = ("convlstm", "cnn_lstm")

CONVLSTM_FILTERS = (30, 50, 60, 70)
KERNEL = 3
INPUT_NAME = "frames"
OUTPUT_NAME = "next_frame"
FRAME_SHAPE = (CANVAS, CANVAS, CHANNELS)

# CNN-LSTM sizes: a small per-frame encoder and an LSTM wide enough to carry
# the positions and colours of two digits.
CNN_FILTERS = 16
CNN_POOL = 4
LSTM_UNITS = 128


def _head(x: keras.KerasTensor, every_step: bool, channels: int = CHANNELS) -> keras.KerasTensor:
    # float32 head: under a mixed-precision policy the sigmoid and the loss
    # stay in full precision.
    conv = layers.Conv2D(
        filters=channels,
        kernel_size=(KERNEL, KERNEL),
        padding="same",
        activation="sigmoid",
        dtype="float32",
        name=OUTPUT_NAME,
    )
    if every_step:
        return layers.TimeDistributed(conv, name=f"{OUTPUT_NAME}_every_step")(x)
    return conv(x)


def build_convlstm(
    *,
    every_step: bool = False,
    frames: int | None = FRAMES,
    filters: tuple[int, ...] = CONVLSTM_FILTERS,
    frame_shape: tuple[int, int, int] = FRAME_SHAPE,
) -> keras.Model:
    """Four ConvLSTM2D layers (30/50/60/70 filters, 3x3, same) and a Conv2D head.

    ``filters`` exists so tests can build and export a small stack of the same shape;
    ``frame_shape`` (H, W, C) adapts the recipe to a user's frames, the head giving C
    channels.
    """
    inputs = keras.Input(shape=(frames, *frame_shape), name=INPUT_NAME)
    x = inputs
    for i, width in enumerate(filters, start=1):
        last = i == len(filters)
        x = layers.ConvLSTM2D(
            filters=width,
            kernel_size=(KERNEL, KERNEL),
            padding="same",
            return_sequences=every_step or not last,
            name=f"convlstm_{i}",
        )(x)
    return keras.Model(inputs, _head(x, every_step, frame_shape[-1]), name="convlstm")


def build_cnn_lstm(*, every_step: bool = False, frames: int | None = FRAMES) -> keras.Model:
    """Per-frame Conv2D -> MaxPooling2D -> Flatten, then LSTM, then Dense -> frame.

    Convolution touches only the input; the recurrent state is a flat vector,
    so unlike the ConvLSTM the state-to-state transition has no spatial
    structure.
    """
    inputs = keras.Input(shape=(frames, *FRAME_SHAPE), name=INPUT_NAME)
    x = layers.TimeDistributed(
        layers.Conv2D(CNN_FILTERS, (KERNEL, KERNEL), padding="same", activation="relu"),
        name="frame_conv",
    )(inputs)
    x = layers.TimeDistributed(layers.MaxPooling2D(pool_size=CNN_POOL), name="frame_pool")(x)
    x = layers.TimeDistributed(layers.Flatten(), name="frame_flatten")(x)
    x = layers.LSTM(LSTM_UNITS, return_sequences=every_step, name="lstm")(x)

    def decode(name: str | None = None) -> layers.Dense:
        size = CANVAS * CANVAS * CHANNELS
        return layers.Dense(size, activation="sigmoid", dtype="float32", name=name)

    if every_step:
        x = layers.TimeDistributed(decode(), name="decode")(x)
        out = layers.TimeDistributed(layers.Reshape(FRAME_SHAPE), name=f"{OUTPUT_NAME}_every_step")(
            x
        )
    else:
        x = decode("decode")(x)
        out = layers.Reshape(FRAME_SHAPE, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, out, name="cnn_lstm")


def build(
    variant: Variant, *, every_step: bool = False, frames: int | None = FRAMES
) -> keras.Model:
    builders = {"convlstm": build_convlstm, "cnn_lstm": build_cnn_lstm}
    return builders[variant](every_step=every_step, frames=frames)


def to_inference(trained: keras.Model, variant: Variant) -> keras.Model:
    """The 15-frame -> next-frame model carrying ``trained``'s weights, in float32."""
    model = build(variant, every_step=False)
    model.set_weights([w.astype("float32") for w in trained.get_weights()])
    return model


@dataclass(frozen=True)
class LayerRow:
    """One trainable layer: its parameter count and the arithmetic behind it."""

    name: str
    kind: str
    output_shape: str
    formula: str
    params: int
    part: Literal["body", "head"]


def _inner(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, layers.TimeDistributed) else layer


def _formula(layer: keras.layers.Layer) -> str:
    """How Keras arrives at the layer's parameter count, as arithmetic that evaluates to
    it (``×`` and ``·`` both multiply); a plain count for layers without a rule here."""
    inner = _inner(layer)
    c_in = int(layer.input.shape[-1])
    if isinstance(inner, (layers.ConvLSTM1D, layers.ConvLSTM2D, layers.ConvLSTM3D)):
        k, f = "·".join(str(d) for d in inner.kernel_size), inner.filters
        bias = f" + {f}" if inner.use_bias else ""
        return f"4 × ({k}·({c_in}+{f})·{f}{bias})"
    if isinstance(inner, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        k, f = "·".join(str(d) for d in inner.kernel_size), inner.filters
        per_group = c_in // inner.groups
        bias = f" + {f}" if inner.use_bias else ""
        return f"{k}·{per_group}·{f}{bias}"
    if isinstance(inner, layers.LSTM):
        u = inner.units
        return f"4 × (({c_in}+{u})·{u} + {u})"
    if isinstance(inner, layers.Dense):
        bias = f" + {inner.units}" if inner.use_bias else ""
        return f"{c_in}·{inner.units}{bias}"
    if isinstance(inner, layers.BatchNormalization):
        # moving mean and variance, and gamma and beta where scale and center are on
        vectors = 2 + int(inner.scale) + int(inner.center)
        return f"{vectors}·{c_in}"
    return str(layer.count_params())


def parameter_table(model: keras.Model) -> list[LayerRow]:
    """The layers that hold weights, with counts and how each count arises."""
    rows = []
    for layer in model.layers:
        params = layer.count_params()
        if params == 0:
            continue
        is_head = layer.name.startswith((OUTPUT_NAME, "decode"))
        rows.append(
            LayerRow(
                name=layer.name,
                kind=type(_inner(layer)).__name__,
                output_shape=str(tuple(layer.output.shape[1:])),
                formula=_formula(layer),
                params=params,
                part="head" if is_head else "body",
            )
        )
    return rows


def format_table(model: keras.Model) -> str:
    """A plain-text table of ``parameter_table`` with body, head and grand totals."""
    rows = parameter_table(model)
    lines = [
        f"{model.name}: input {tuple(model.input.shape[1:])} -> output {tuple(model.output.shape[1:])}",
        f"{'layer':<22} {'type':<11} {'output':<20} {'arithmetic':<30} {'params':>10}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<22} {r.kind:<11} {r.output_shape:<20} {r.formula:<30} {r.params:>10,}"
        )
    body = sum(r.params for r in rows if r.part == "body")
    head = sum(r.params for r in rows if r.part == "head")
    lines.append(f"{'body total':<85} {body:>10,}")
    lines.append(f"{'head total':<85} {head:>10,}")
    lines.append(f"{'total':<85} {body + head:>10,}")
    return "\n".join(lines)
