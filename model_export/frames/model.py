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
from typing import Any, Literal

import keras
from keras import layers, ops

from model_export.frames.data import CANVAS, CHANNELS, FRAMES

Variant = Literal["convlstm", "cnn_lstm"]
VARIANTS: tuple[Variant, ...] = ("convlstm", "cnn_lstm")

CONVLSTM_FILTERS = (30, 50, 60, 70)
KERNEL = 3
INPUT_NAME = "frames"
OUTPUT_NAME = "next_frame"
FRAME_SHAPE = (CANVAS, CANVAS, CHANNELS)

# The ConvLSTM's head: "sigmoid" draws the next frame from the last hidden state alone;
# "blend" draws it too, and a per-pixel, per-channel keep gate mixes it with the last
# input frame, so content that does not move passes through unchanged; "carry" draws
# one intensity channel whose colour is carried from the last input frame (the
# brightest value of each channel within CARRY_WINDOW pixels), behind a one-channel
# keep gate (LastFrameBlend).
Head = Literal["sigmoid", "blend", "carry"]
HEADS: tuple[Head, ...] = ("sigmoid", "blend", "carry")
# The head the recipe A/B chose (docs/recipe.md): the release recipe's.
RELEASE_HEAD: Head = "carry"
KEEP_NAME = f"{OUTPUT_NAME}_keep"
BLEND_NAME = "next_frame_blend"
# The keep gate starts almost closed (sigmoid(-3) = 0.05): a blend head put on a trained
# stack first answers what the stack's own head answered, and learns to keep from there.
KEEP_BIAS_INIT = -3.0
# The digits move at most 3 px per frame in x and y: a 7x7 window around a pixel of a
# digit's new place reaches into the digit's last place.
CARRY_WINDOW = 7

# CNN-LSTM sizes: a small per-frame encoder and an LSTM wide enough to carry
# the positions and colours of two digits.
CNN_FILTERS = 16
CNN_POOL = 4
LSTM_UNITS = 128


@keras.saving.register_keras_serializable(package="model_export")
class LastFrameBlend(layers.Layer):  # type: ignore[misc]
    """``keep * last + (1 - keep) * drawn``: the output of the blend and carry heads, no
    weights.

    Called on ``[frames, drawn, keep]``. ``last_step=True`` (the served model) blends
    with the last input frame ``frames[:, -1]``; ``last_step=False`` (every-step
    training) blends each step's prediction with that step's input frame. With
    ``carry`` > 0, ``drawn`` is an intensity multiplied by the colour carried from
    ``last``: each channel's maximum over a ``carry`` x ``carry`` window (a
    one-channel ``drawn`` or ``keep`` applies to every channel). The result stays in
    [0, 1] whenever the inputs do, with a gradient everywhere (a clipped
    ``last + delta`` has none where the clip bites).
    """

    def __init__(self, *, last_step: bool, carry: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_step = last_step
        self.carry = carry

    def call(self, inputs: list[Any]) -> Any:
        frames, drawn, keep = inputs
        last = ops.cast(frames[:, -1] if self.last_step else frames, drawn.dtype)
        if self.carry:
            drawn = drawn * self._colour(last)
        return keep * last + (1.0 - keep) * drawn

    def _colour(self, last: Any) -> Any:
        window = (self.carry, self.carry)
        if self.last_step:
            return ops.max_pool(last, window, strides=1, padding="same")
        # every step: fold the steps into the batch for the 2-D pooling
        shape = ops.shape(last)
        flat = ops.reshape(last, (-1, *shape[2:]))
        pooled = ops.max_pool(flat, window, strides=1, padding="same")
        return ops.reshape(pooled, shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "last_step": self.last_step, "carry": self.carry}


def _head_conv(name: str, channels: int, bias: float = 0.0) -> layers.Conv2D:
    # float32 head: under a mixed-precision policy the sigmoid and the loss
    # stay in full precision.
    return layers.Conv2D(
        filters=channels,
        kernel_size=(KERNEL, KERNEL),
        padding="same",
        activation="sigmoid",
        dtype="float32",
        name=name,
        bias_initializer=keras.initializers.Constant(bias) if bias else "zeros",
    )


def _head(
    x: keras.KerasTensor,
    every_step: bool,
    channels: int = CHANNELS,
    *,
    head: Head = "sigmoid",
    frames: keras.KerasTensor | None = None,
) -> keras.KerasTensor:
    def apply(conv: layers.Conv2D) -> keras.KerasTensor:
        if every_step:
            return layers.TimeDistributed(conv, name=f"{conv.name}_every_step")(x)
        return conv(x)

    if head == "sigmoid":
        return apply(_head_conv(OUTPUT_NAME, channels))
    if frames is None:
        raise ValueError(f"the {head} head needs the input frames")
    drawn_channels = 1 if head == "carry" else channels
    drawn = apply(_head_conv(OUTPUT_NAME, drawn_channels))
    keep = apply(_head_conv(KEEP_NAME, drawn_channels, KEEP_BIAS_INIT))
    blend = LastFrameBlend(
        last_step=not every_step,
        carry=CARRY_WINDOW if head == "carry" else 0,
        dtype="float32",
        name=BLEND_NAME,
    )
    return blend([frames, drawn, keep])


def build_convlstm(
    *,
    every_step: bool = False,
    frames: int | None = FRAMES,
    filters: tuple[int, ...] = CONVLSTM_FILTERS,
    frame_shape: tuple[int, int, int] = FRAME_SHAPE,
    head: Head = "sigmoid",
) -> keras.Model:
    """Four ConvLSTM2D layers (30/50/60/70 filters, 3x3, same) and a Conv2D head.

    ``filters`` exists so tests can build and export a small stack of the same shape;
    ``frame_shape`` (H, W, C) adapts the recipe to a user's frames, the head giving C
    channels. ``head="blend"`` adds a second Conv2D (``next_frame_keep``, the same
    size as ``next_frame``) whose sigmoid output mixes the drawn frame with the last
    input frame (``LastFrameBlend``); the stack is unchanged.
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
    out = _head(x, every_step, frame_shape[-1], head=head, frames=inputs)
    return keras.Model(inputs, out, name="convlstm")


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
    variant: Variant,
    *,
    every_step: bool = False,
    frames: int | None = FRAMES,
    head: Head = "sigmoid",
) -> keras.Model:
    if variant == "convlstm":
        return build_convlstm(every_step=every_step, frames=frames, head=head)
    if head != "sigmoid":
        raise ValueError(f"the {head} head is for the convlstm variant only")
    return build_cnn_lstm(every_step=every_step, frames=frames)


def head_of(model: keras.Model) -> Head:
    """Which head a ConvLSTM model built here carries."""
    blend = next((layer for layer in model.layers if layer.name == BLEND_NAME), None)
    if blend is None:
        return "sigmoid"
    return "carry" if blend.carry else "blend"


def to_inference(trained: keras.Model, variant: Variant) -> keras.Model:
    """The 15-frame -> next-frame model carrying ``trained``'s weights, in float32."""
    model = build(variant, every_step=False, head=head_of(trained))
    model.set_weights([w.astype("float32") for w in trained.get_weights()])
    return model


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy the weights of every layer of ``target`` that ``source`` has under the same
    name (a ``TimeDistributed`` wrapper matched by the layer it wraps) and the same
    shapes; returns the names copied. Warm-starts a recipe from a trained checkpoint,
    the inference or the every-step form, with or without the keep gate. A one-channel
    convolution (the carry head's intensity) from a many-channel one of the same kernel
    takes the mean over its output channels. A wrapper unmatched by the layer inside is
    matched by its own name: the CNN-LSTM names its ``TimeDistributed`` layers and lets
    Keras number the layers inside, so their numbers differ from one build to the next."""
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    by_name |= {_inner(layer).name: layer for layer in source.layers if layer.weights}
    copied = []
    for layer in target.layers:
        name = _inner(layer).name if _inner(layer).name in by_name else layer.name
        found = by_name.get(name)
        if found is None or not layer.weights:
            continue
        weights = found.get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if _is_conv(found) and _is_conv(layer) and shapes[-1] == (1,) != weights[-1].shape:
            weights = [w.mean(axis=-1, keepdims=True) for w in weights]
        if [w.shape for w in weights] != shapes:
            continue
        layer.set_weights(weights)
        copied.append(name)
    return copied


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


def _is_conv(layer: keras.layers.Layer) -> bool:
    return type(_inner(layer)) is layers.Conv2D


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
