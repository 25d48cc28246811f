"""The ConvLSTM stack rebuilt for a fast ONNX graph, holding exactly the trained weights.

Keras' ``ConvLSTM2D`` converts to one ONNX ``Loop`` per layer whose body,
channels last, convolves the input and the state once per gate, with
Transposes around each convolution. ``build_fast_convlstm`` rebuilds the same
computation in Keras ops so that tf2onnx emits a straight-line graph:

- the recurrence is unrolled over the frames, and the input is split into one
  tensor per frame at the start;
- channels first throughout, so no Transpose around any convolution: one per
  input frame and one at the output;
- one convolution per step for all four gates, over the concatenated
  ``[x_t, h]`` with the kernel ``[W; U]`` (``conv([x, h], [W; U]) = conv(x, W)
  + conv(h, U)``), the gates split after. The state starts at zero, so the
  first step convolves the input alone.

The layers hold the trained arrays unchanged (same shapes and order as
``ConvLSTM2D`` and ``Conv2D``, so ``set_weights`` takes the trained layer's
``get_weights()``); concatenating the kernels is an operation in the graph,
which tf2onnx folds into one constant.

Measured on the project's 2-core CPU, onnxruntime's CPU provider, batch 8,
interleaved in one run (``bench/graph.py`` times the two graphs committed):
this graph takes about 0.58x the plain export's time per sequence. The other
forms tried, as fractions of the plain export's time: ``unroll=True`` alone
about 0.8x; the input-to-state convolution hoisted out of the recurrence (one
convolution over all frames, then one state convolution and an addition per
step) about 0.66x, as two thin convolutions cost more than one with the
longer reduction; the same channels last about 0.67-0.75x; per-gate
convolutions with channels zero-padded to multiples of 16, so that onnxruntime
keeps the whole recurrence in its blocked NCHWc layout with no Split, about
0.62-0.64x: the padding (50 -> 64, 70 -> 80 channels) costs more than the
layout saves. Winograd convolution written in ONNX ops (transforms as
Pad/Slice/Concat/MatMul or fixed-kernel convolutions, the batched products as
MatMul, with the state kept in the tile layout between steps) was slower than
onnxruntime's Conv per step for F(2x2, 3x3) in every layout tried (1.3-4x)
and about 0.85-1.0x of this graph end to end for F(4x4, 3x3): the transforms,
each one more pass over memory, cost what the multiplies save. onnxruntime's ORT_ENABLE_ALL matters (its NCHWc and Conv+Add
fusions); two intra-op threads beat one; the memory pattern makes no difference.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from model_export.frames.model import BLEND_NAME, INPUT_NAME, KERNEL, OUTPUT_NAME, LastFrameBlend

GRAPH_DESCRIPTION = (
    "fast: unrolled, channels first, one convolution per step over the concatenated "
    "[input, hidden state] for all four gates, gates split after"
)

# Keras orders the four gates along the last kernel axis as input, forget,
# cell candidate, output.
GATES = 4


class ConvLSTMWeights(layers.Layer):  # type: ignore[misc]
    """The weights of a ``ConvLSTM2D`` (same padding, tanh and sigmoid), channels first,
    and its gates: what the unrolled layer here and ``model_export.export.step_graph``'s one-step
    layer share. The weights have the shapes and order of the trained layer's:
    ``set_weights`` takes ``ConvLSTM2D.get_weights()`` as is."""

    def __init__(
        self,
        filters: int,
        *,
        input_channels: int,
        kernel_size: tuple[int, int] = (KERNEL, KERNEL),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.input_channels = input_channels
        self.kernel_size = kernel_size

    def build(self, input_shape: Any) -> None:
        f = self.filters
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, self.input_channels, GATES * f), name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(*self.kernel_size, f, GATES * f), name="recurrent_kernel"
        )
        self.bias = self.add_weight(shape=(GATES * f,), name="bias")

    def fused_kernel(self) -> Any:
        """conv([x, h], [W; U]) == conv(x, W) + conv(h, U): one convolution per step."""
        return ops.concatenate([self.kernel, self.recurrent_kernel], axis=2)

    def gates(self, z: Any) -> tuple[Any, Any, Any, Any]:
        """The activated gates from the convolution plus bias, in Keras' order i, f, g, o."""
        i, f, g, o = ops.split(z, GATES, axis=1)
        return ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)


class UnrolledConvLSTM2D(ConvLSTMWeights):
    """``ConvLSTM2D`` (same padding, tanh and sigmoid) over a list of channels-first frames.

    Takes one ``(N, C, H, W)`` tensor per step and returns the hidden state
    after every step, or only after the last.
    """

    def __init__(
        self,
        filters: int,
        *,
        input_channels: int,
        return_sequences: bool,
        kernel_size: tuple[int, int] = (KERNEL, KERNEL),
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, input_channels=input_channels, kernel_size=kernel_size, **kwargs)
        self.return_sequences = return_sequences

    def call(self, frames: list[Any]) -> Any:
        conv: dict[str, Any] = {"padding": "same", "data_format": "channels_first"}
        fused = self.fused_kernel()
        bias = ops.reshape(self.bias, (GATES * self.filters, 1, 1))
        hidden: list[Any] = []
        h: Any = None
        c: Any = None
        for x in frames:
            if h is None:  # the state starts at zero: its convolution is left out
                z = ops.conv(x, self.kernel, **conv) + bias
            else:
                z = ops.conv(ops.concatenate([x, h], axis=1), fused, **conv) + bias
            i, f, g, o = self.gates(z)
            c = i * g if c is None else f * c + i * g
            h = o * ops.tanh(c)
            hidden.append(h)
        return hidden if self.return_sequences else h


class ChannelsFirstHead(layers.Layer):  # type: ignore[misc]
    """The trained ``Conv2D`` head (same, sigmoid) on a channels-first state.

    Returns the frame channels last, as the Keras model does.
    """

    def __init__(
        self,
        filters: int,
        *,
        input_channels: int,
        kernel_size: tuple[int, int] = (KERNEL, KERNEL),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.input_channels = input_channels
        self.kernel_size = kernel_size

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, self.input_channels, self.filters), name="kernel"
        )
        self.bias = self.add_weight(shape=(self.filters,), name="bias")

    def call(self, h: Any) -> Any:
        y = ops.conv(h, self.kernel, padding="same", data_format="channels_first")
        y = ops.sigmoid(y + ops.reshape(self.bias, (self.filters, 1, 1)))
        return ops.transpose(y, (0, 2, 3, 1))


# What the rebuilt layers compute; a layer configured otherwise is exported plain.
_CONV_RULES: dict[str, Any] = {
    "strides": (1, 1),
    "padding": "same",
    "dilation_rate": (1, 1),
    "use_bias": True,
    "data_format": "channels_last",
}
_RECURRENT_RULES: dict[str, Any] = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",
    "go_backwards": False,
    "stateful": False,
}


def _unsupported_config(layer: layers.Layer) -> str | None:
    expected = _CONV_RULES | (
        _RECURRENT_RULES
        if isinstance(layer, layers.ConvLSTM2D)
        else {"activation": "sigmoid", "groups": 1}
    )
    config = layer.get_config()
    got = {key: config.get(key) for key in expected}
    got = {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()}
    wrong = {k: v for k, v in got.items() if v != expected[k]}
    if wrong:
        return f"{layer.name} has {wrong}; the fast graph computes {expected}"
    if layer.compute_dtype != "float32":
        return f"{layer.name} computes in {layer.compute_dtype}; the fast graph in float32"
    return None


def _split_head(
    body: list[layers.Layer],
) -> tuple[list[layers.Layer], list[layers.Layer], layers.Layer | None]:
    """``body`` as (recurrent layers, head convolutions, blend layer or None): one Conv2D
    head, or the blend head's two Conv2D (drawn frame, keep gate) and its LastFrameBlend."""
    if body and isinstance(body[-1], LastFrameBlend):
        return body[:-3], body[-3:-1], body[-1]
    return body[:-1], body[-1:], None


def fast_graph_refusal(model: keras.Model) -> str | None:
    """Why ``build_fast_convlstm`` cannot rebuild ``model``, or ``None`` when it can.

    It rebuilds one shape of model: a fixed (N, T, H, W, C) input, ConvLSTM2D layers
    (any filters and kernel sizes; stride 1, same padding, tanh and sigmoid), each but
    the last returning sequences, then one Conv2D head (same padding, sigmoid), or the
    blend or carry head (``build_convlstm(head=...)``: two such Conv2D on the last state
    and a ``LastFrameBlend`` with the last input frame).
    """
    body = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    if not any(isinstance(layer, layers.ConvLSTM2D) for layer in body):
        return "no ConvLSTM2D layer"
    shape = tuple(model.input.shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 4 or any(d is None for d in shape):
        return f"input {shape} is not one (T, H, W, C) of fixed sizes"
    recurrent, heads, blend = _split_head(body)
    kinds = [type(layer).__name__ for layer in body]
    if not (
        recurrent
        and all(isinstance(layer, layers.ConvLSTM2D) for layer in recurrent)
        and all(type(head) is layers.Conv2D for head in heads)
    ):
        return (
            f"layers {kinds} are not ConvLSTM2D layers then one Conv2D head "
            "or the blend head (two Conv2D and a LastFrameBlend)"
        )
    if blend is not None and not blend.last_step:
        return f"{blend.name} blends every step; the fast graph predicts the last one"
    sequences = [bool(layer.return_sequences) for layer in recurrent]
    if sequences != [True] * (len(recurrent) - 1) + [False]:
        return f"return_sequences {sequences}: every ConvLSTM2D but the last must return sequences"
    for layer in [*recurrent, *heads]:
        reason = _unsupported_config(layer)
        if reason is not None:
            return reason
    return None


def is_convlstm_stack(model: keras.Model) -> bool:
    """Whether ``model`` is a ConvLSTM stack that ``build_fast_convlstm`` can rebuild."""
    return fast_graph_refusal(model) is None


def build_fast_convlstm(trained: keras.Model) -> keras.Model:
    """The fast inference model computing what ``trained`` computes.

    ``trained`` is a stack ``fast_graph_refusal`` accepts (``build_convlstm`` makes
    one); the rebuilt model has its input and output shapes and its weights, the head
    named ``next_frame``.
    """
    reason = fast_graph_refusal(trained)
    if reason is not None:
        raise ValueError(f"{trained.name}: not rebuilt as a fast graph: {reason}")
    recurrent, heads, blend = _split_head(
        [layer for layer in trained.layers if not isinstance(layer, layers.InputLayer)]
    )
    frames, *frame_shape = (int(d) for d in trained.input.shape[1:])
    inputs = keras.Input(shape=(frames, *frame_shape), name=INPUT_NAME)
    # (N, T, H, W, C) -> T tensors (N, C, H, W), split once here so that no
    # step slices a larger tensor.
    x: Any = [
        ops.transpose(ops.squeeze(frame, axis=1), (0, 3, 1, 2))
        for frame in ops.split(inputs, frames, axis=1)
    ]
    pairs: list[tuple[layers.Layer, layers.Layer]] = []
    channels = frame_shape[2]
    for n, layer in enumerate(recurrent, start=1):
        fast = UnrolledConvLSTM2D(
            layer.filters,
            input_channels=channels,
            return_sequences=n < len(recurrent),
            kernel_size=tuple(layer.kernel_size),
            name=layer.name,
        )
        x = fast(x)
        pairs.append((fast, layer))
        channels = layer.filters
    outs = []
    for head in heads:
        out = ChannelsFirstHead(
            head.filters,
            input_channels=channels,
            kernel_size=tuple(head.kernel_size),
            # the blend head's two convolutions keep their names; a lone head is next_frame
            name=OUTPUT_NAME if blend is None else head.name,
        )
        outs.append(out(x))
        pairs.append((out, head))
    y = outs[0]
    if blend is not None:
        y = LastFrameBlend(last_step=True, carry=blend.carry, dtype="float32", name=BLEND_NAME)(
            [inputs, *outs]
        )
    model = keras.Model(inputs, y, name=f"{trained.name}_fast")
    for fast_layer, trained_layer in pairs:
        fast_layer.set_weights(trained_layer.get_weights())
    return model
