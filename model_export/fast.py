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

from model_export.model import FRAME_SHAPE, INPUT_NAME, KERNEL, OUTPUT_NAME

GRAPH_DESCRIPTION = (
    "fast: unrolled, channels first, one convolution per step over the concatenated "
    "[input, hidden state] for all four gates, gates split after"
)

# Keras orders the four gates along the last kernel axis as input, forget,
# cell candidate, output.
GATES = 4


class UnrolledConvLSTM2D(layers.Layer):  # type: ignore[misc]
    """``ConvLSTM2D`` (3x3, same, tanh and sigmoid) over a list of channels-first frames.

    Takes one ``(N, C, H, W)`` tensor per step and returns the hidden state
    after every step, or only after the last. Its weights have the shapes and
    order of the trained layer's: ``set_weights`` takes ``ConvLSTM2D.get_weights()``
    as is.
    """

    def __init__(
        self,
        filters: int,
        *,
        input_channels: int,
        return_sequences: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.input_channels = input_channels
        self.return_sequences = return_sequences

    def build(self, input_shape: Any) -> None:
        f = self.filters
        self.kernel = self.add_weight(
            shape=(KERNEL, KERNEL, self.input_channels, GATES * f), name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(KERNEL, KERNEL, f, GATES * f), name="recurrent_kernel"
        )
        self.bias = self.add_weight(shape=(GATES * f,), name="bias")

    def call(self, frames: list[Any]) -> Any:
        conv: dict[str, Any] = {"padding": "same", "data_format": "channels_first"}
        # conv([x, h], [W; U]) == conv(x, W) + conv(h, U): one convolution per step.
        fused = ops.concatenate([self.kernel, self.recurrent_kernel], axis=2)
        bias = ops.reshape(self.bias, (GATES * self.filters, 1, 1))
        hidden: list[Any] = []
        h: Any = None
        c: Any = None
        for x in frames:
            if h is None:  # the state starts at zero: its convolution is left out
                z = ops.conv(x, self.kernel, **conv) + bias
            else:
                z = ops.conv(ops.concatenate([x, h], axis=1), fused, **conv) + bias
            i, f, g, o = ops.split(z, GATES, axis=1)
            i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
            c = i * g if c is None else f * c + i * g
            h = o * ops.tanh(c)
            hidden.append(h)
        return hidden if self.return_sequences else h


class ChannelsFirstHead(layers.Layer):  # type: ignore[misc]
    """The trained ``Conv2D`` head (3x3, same, sigmoid) on a channels-first state.

    Returns the frame channels last, as the Keras model does.
    """

    def __init__(self, filters: int, *, input_channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.input_channels = input_channels

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(
            shape=(KERNEL, KERNEL, self.input_channels, self.filters), name="kernel"
        )
        self.bias = self.add_weight(shape=(self.filters,), name="bias")

    def call(self, h: Any) -> Any:
        y = ops.conv(h, self.kernel, padding="same", data_format="channels_first")
        y = ops.sigmoid(y + ops.reshape(self.bias, (self.filters, 1, 1)))
        return ops.transpose(y, (0, 2, 3, 1))


def _check_supported(layer: layers.Layer) -> None:
    config = layer.get_config()
    expected = {
        "kernel_size": (KERNEL, KERNEL),
        "strides": (1, 1),
        "padding": "same",
        "dilation_rate": (1, 1),
        "use_bias": True,
        "data_format": "channels_last",
    }
    if isinstance(layer, layers.ConvLSTM2D):
        expected |= {
            "activation": "tanh",
            "recurrent_activation": "sigmoid",
            "go_backwards": False,
            "stateful": False,
        }
    else:
        expected |= {"activation": "sigmoid"}
    got = {key: config.get(key) for key in expected}
    got = {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()}
    if got != expected:
        raise ValueError(f"{layer.name}: the fast graph supports {expected}, got {got}")


def is_convlstm_stack(model: keras.Model) -> bool:
    """Whether ``model`` is a ConvLSTM stack that ``build_fast_convlstm`` can rebuild."""
    return any(isinstance(layer, layers.ConvLSTM2D) for layer in model.layers)


def build_fast_convlstm(trained: keras.Model) -> keras.Model:
    """The fast inference model computing what ``trained`` (``build_convlstm``) computes.

    Same input and output as ``trained``: ``(N, T, H, W, C)`` frames in,
    the next ``(N, H, W, C)`` frame out, with ``trained``'s weights.
    """
    recurrent = [layer for layer in trained.layers if isinstance(layer, layers.ConvLSTM2D)]
    head = trained.get_layer(OUTPUT_NAME)
    frames = trained.input.shape[1]
    if frames is None or not recurrent:
        raise ValueError(f"{trained.name}: needs ConvLSTM2D layers and a fixed number of frames")
    for layer in [*recurrent, head]:
        _check_supported(layer)
    inputs = keras.Input(shape=(frames, *FRAME_SHAPE), name=INPUT_NAME)
    # (N, T, H, W, C) -> T tensors (N, C, H, W), split once here so that no
    # step slices a larger tensor.
    x: Any = [
        ops.transpose(ops.squeeze(frame, axis=1), (0, 3, 1, 2))
        for frame in ops.split(inputs, int(frames), axis=1)
    ]
    pairs: list[tuple[layers.Layer, layers.Layer]] = []
    channels = FRAME_SHAPE[2]
    for n, layer in enumerate(recurrent, start=1):
        fast = UnrolledConvLSTM2D(
            layer.filters,
            input_channels=channels,
            return_sequences=n < len(recurrent),
            name=layer.name,
        )
        x = fast(x)
        pairs.append((fast, layer))
        channels = layer.filters
    out = ChannelsFirstHead(head.filters, input_channels=channels, name=OUTPUT_NAME)
    model = keras.Model(inputs, out(x), name=f"{trained.name}_fast")
    for fast_layer, trained_layer in [*pairs, (out, head)]:
        fast_layer.set_weights(trained_layer.get_weights())
    return model
