"""One time step of a ConvLSTM stack as its own ONNX graph, for streams that keep state.

The served graph maps 15 frames to the next one and starts every call from a zero
state, so a feed sending one new frame at a time pays 15 steps per frame. The step
graph takes the newest frame and every layer's hidden and cell state, and returns the
prediction and the new states:

    (frame, h_1, c_1, ..., h_L, c_L) -> (next_frame, h_1', c_1', ..., h_L', c_L')

It is rebuilt in Keras ops from the trained weights, as ``model_export.export.fast`` rebuilds
the windowed graph (channels first, one convolution per layer over the concatenated
``[x_t, h]`` with the kernel ``[W; U]``, gates in Keras' order input, forget, cell
candidate, output; ``keras/src/layers/rnn/conv_lstm.py``), then converted by tf2onnx like
every other graph here rather than written node by node. The head is the trained one:
a Conv2D, or the blend/carry head (``model_export.frames.model.LastFrameBlend``), whose "last
input frame" is, in one step, the frame just given. The frame and the prediction
are channels last, as the served graph's; the states channels first (N, F, H, W), the
layout the convolutions use, so a step transposes only the frame and the prediction.

Run over T frames from a zero state, the step graph must give what the windowed graph
gives on those T frames: ``export_step_graph`` checks this (``STEP_PARITY_TOLERANCE``)
before writing anything, and records the file, its parity and the state's shapes and
bytes per stream in the card's ``stream`` section. It works from any ``.keras`` file that
``model_export.export.fast`` accepts, so a new checkpoint gets its step graph with::

    python -m model_export step-graph models/convlstm.keras
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops
from numpy.typing import NDArray

from convlstm_card import GraphFile, StreamSpec, TensorSpec, card_path, read_card, sha256_of
from convlstm_card import write_card as write_model_card
from model_export.export.fast import (
    GATES,
    ChannelsFirstHead,
    ConvLSTMWeights,
    _split_head,
    fast_graph_refusal,
)
from model_export.export.keras_to_onnx import onnx_predict
from model_export.frames import data
from model_export.frames.model import BLEND_NAME, OUTPUT_NAME, LastFrameBlend

STEP_INPUT = "frame"
STEP_PARITY_TOLERANCE = 1e-5
STEP_PARITY_SEQUENCES = 4
STEP_DESCRIPTION = (
    "one step: (frame (N, H, W, C), every layer's h and c (N, F, H, W)) -> "
    "(next frame (N, H, W, C), the new h and c); channels-first states, one convolution "
    "per layer over [x, h], gates in Keras' order i, f, g, o"
)


class StepGraphError(RuntimeError):
    """The step graph does not compute what the windowed graph computes."""


def step_path(onnx_path: Path) -> Path:
    """Where a graph's step graph goes: ``convlstm.onnx`` -> ``convlstm.step.onnx``.

    No card of its own (``convlstm.step.json`` does not exist), so the server never
    serves it as a model; the served model's card names it.
    """
    return onnx_path.with_suffix(".step.onnx")


def state_names(layer: int) -> tuple[str, str]:
    """The input names of layer ``layer``'s (1-based) hidden and cell state."""
    return f"h_{layer}", f"c_{layer}"


def next_state_name(name: str) -> str:
    """The output that carries the new value of state input ``name``."""
    return f"next_{name}"


class ConvLSTMStep(ConvLSTMWeights):
    """One step of ``ConvLSTM2D`` (same padding, tanh and sigmoid), channels first: the
    weights and gates of ``model_export.export.fast``'s unrolled layer, for one frame.

    Takes ``[x, h, c]`` and returns ``[h', c']``.
    """

    def call(self, inputs: list[Any]) -> list[Any]:
        x, h, c = inputs
        z = ops.conv(
            ops.concatenate([x, h], axis=1),
            self.fused_kernel(),
            padding="same",
            data_format="channels_first",
        )
        i, f, g, o = self.gates(z + ops.reshape(self.bias, (GATES * self.filters, 1, 1)))
        c_next = f * c + i * g
        h_next = o * ops.tanh(c_next)
        return [h_next, c_next]


@dataclass(frozen=True)
class StateLayout:
    """The state of one stream: per ConvLSTM layer its filters, over an H x W frame."""

    filters: tuple[int, ...]
    height: int
    width: int

    @property
    def shapes(self) -> list[tuple[str, tuple[int, int, int]]]:
        """Every state tensor's name and per-stream shape (F, H, W), layer by layer."""
        out = []
        for n, f in enumerate(self.filters, start=1):
            for name in state_names(n):
                out.append((name, (f, self.height, self.width)))
        return out

    @property
    def bytes_per_stream(self) -> int:
        """float32 bytes of every h and c of one stream."""
        return 4 * sum(int(np.prod(shape)) for _, shape in self.shapes)

    def zeros(self, n: int) -> dict[str, NDArray[np.float32]]:
        """The zero state of ``n`` streams, by input name."""
        return {name: np.zeros((n, *shape), np.float32) for name, shape in self.shapes}


def build_step_model(trained: keras.Model) -> tuple[keras.Model, StateLayout]:
    """The one-step model carrying ``trained``'s weights, and its state layout.

    ``trained`` is a stack ``model_export.export.fast.fast_graph_refusal`` accepts.
    """
    reason = fast_graph_refusal(trained)
    if reason is not None:
        raise ValueError(f"{trained.name}: no step graph: {reason}")
    recurrent, heads, blend = _split_head(
        [layer for layer in trained.layers if not isinstance(layer, layers.InputLayer)]
    )
    _, height, width, channels = (int(d) for d in trained.input.shape[1:])
    layout = StateLayout(tuple(int(layer.filters) for layer in recurrent), height, width)
    frame = keras.Input(shape=(height, width, channels), name=STEP_INPUT)
    states = {name: keras.Input(shape=shape, name=name) for name, shape in layout.shapes}
    x: Any = ops.transpose(frame, (0, 3, 1, 2))
    outputs: list[Any] = []
    pairs: list[tuple[layers.Layer, layers.Layer]] = []
    in_channels = channels
    for n, layer in enumerate(recurrent, start=1):
        step = ConvLSTMStep(
            int(layer.filters),
            input_channels=in_channels,
            kernel_size=tuple(layer.kernel_size),
            name=layer.name,
        )
        h_name, c_name = state_names(n)
        x, c = step([x, states[h_name], states[c_name]])
        outputs += [x, c]
        pairs.append((step, layer))
        in_channels = int(layer.filters)
    # The head as in model_export.export.fast: one Conv2D, or the blend/carry head's two Conv2D
    # and its LastFrameBlend, whose "last input frame" is this step's frame.
    drawn: list[Any] = []
    for head in heads:
        out = ChannelsFirstHead(
            int(head.filters),
            input_channels=in_channels,
            kernel_size=tuple(head.kernel_size),
            name=OUTPUT_NAME if blend is None else head.name,
        )
        drawn.append(out(x))
        pairs.append((out, head))
    y = drawn[0]
    if blend is not None:
        blended = LastFrameBlend(
            last_step=True, carry=blend.carry, dtype="float32", name=BLEND_NAME
        )
        y = blended([ops.expand_dims(frame, 1), *drawn])
    model = keras.Model([frame, *states.values()], [y, *outputs], name=f"{trained.name}_step")
    for step_layer, trained_layer in pairs:
        step_layer.set_weights(trained_layer.get_weights())
    return model, layout


def output_names(layout: StateLayout) -> list[str]:
    """The step graph's outputs, in order: the prediction, then every new state."""
    return [OUTPUT_NAME, *(next_state_name(name) for name, _ in layout.shapes)]


def to_step_onnx_bytes(model: keras.Model, layout: StateLayout, opset: int) -> bytes:
    """The step model as ONNX, its inputs and outputs named as the card states them and
    every batch axis dynamic."""
    import tensorflow as tf
    import tf2onnx

    spec = tuple(
        tf.TensorSpec((None, *tensor.shape[1:]), tf.float32, name=name)
        for tensor, name in zip(
            model.inputs, [STEP_INPUT, *(n for n, _ in layout.shapes)], strict=True
        )
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    renames = {old.name: new for old, new in zip(graph.output, output_names(layout), strict=True)}
    # A new state is both an output and the next layer's input: rename every use.
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name in renames:
                    names[i] = renames[name]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return bytes(proto.SerializeToString())


def run_steps(
    step_onnx: bytes | Path, layout: StateLayout, x: NDArray[np.float32]
) -> NDArray[np.float32]:
    """The step graph run over every frame of ``x`` (N, T, H, W, C) from a zero state:
    the prediction after the last frame (N, H, W, C)."""
    import onnxruntime as ort

    source = str(step_onnx) if isinstance(step_onnx, Path) else step_onnx
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [name for name, _ in layout.shapes]
    state = layout.zeros(len(x))
    predicted = np.zeros((0,), np.float32)
    for t in range(x.shape[1]):
        out = session.run(None, {STEP_INPUT: x[:, t], **state})
        predicted = out[0]
        state = dict(zip(names, out[1:], strict=True))
    return predicted


def step_parity(
    step_onnx: bytes | Path, layout: StateLayout, windowed: Path, x: NDArray[np.float32]
) -> float:
    """Max |step graph over T frames from zero state - windowed graph| on ``x``."""
    return float(np.max(np.abs(run_steps(step_onnx, layout, x) - onnx_predict(windowed, x))))


def parity_frames(frames: int, frame_shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Test-split sequences where the model takes the project's frames, else uniform noise
    in [0, 1] of the model's shape (a model trained on a user's own data)."""
    if frame_shape == (data.CANVAS, data.CANVAS, data.CHANNELS):
        seqs = data.generate_split(STEP_PARITY_SEQUENCES, "test", frames=frames + 1)
        return data.inputs_and_targets(seqs, every_step=False)[0]
    rng = np.random.default_rng(data.SPLIT_SEEDS["test"])
    return rng.random((STEP_PARITY_SEQUENCES, frames, *frame_shape), dtype=np.float32)


@dataclass(frozen=True)
class StepGraphResult:
    path: Path
    max_abs_diff: float
    state_bytes: int


def stream_spec(layout: StateLayout, path: Path, diff: float, channels: int) -> StreamSpec:
    """The card's ``stream`` section for a step graph written at ``path``."""
    frame: list[int | str] = ["N", layout.height, layout.width, channels]
    return StreamSpec(
        step_graph=GraphFile(file=path.name, sha256=sha256_of(path), description=STEP_DESCRIPTION),
        frame=TensorSpec(name=STEP_INPUT, shape=frame, dtype="float32", range=(0.0, 1.0)),
        prediction=TensorSpec(name=OUTPUT_NAME, shape=frame, dtype="float32", range=(0.0, 1.0)),
        state=[
            TensorSpec(name=name, shape=["N", *shape], dtype="float32")
            for name, shape in layout.shapes
        ],
        state_bytes_per_stream=layout.bytes_per_stream,
        parity={
            "max_abs_diff": diff,
            "tolerance": STEP_PARITY_TOLERANCE,
            "sequences": STEP_PARITY_SEQUENCES,
            "split": "test",
            "against": "the windowed graph on the same frames, stepped from a zero state",
        },
    )


def export_step_graph(
    checkpoint: Path,
    onnx_path: Path | None = None,
    *,
    opset: int = 17,
    tolerance: float = STEP_PARITY_TOLERANCE,
) -> StepGraphResult:
    """Write the step graph of ``checkpoint`` beside its windowed graph ``onnx_path``
    (default: the checkpoint's ``.onnx``) and record it in that graph's card.

    Nothing is written unless the step graph, run over the test split's frames from a
    zero state, gives the windowed graph's prediction within ``tolerance``.
    """
    onnx_path = onnx_path or checkpoint.with_suffix(".onnx")
    card_file = card_path(onnx_path)
    if not card_file.is_file():
        raise StepGraphError(f"{card_file}: no card; export {checkpoint} first")
    trained = keras.models.load_model(checkpoint)
    model, layout = build_step_model(trained)
    frames, *frame_shape = (int(d) for d in trained.input.shape[1:])
    channels = frame_shape[-1]
    x = parity_frames(frames, tuple(frame_shape))
    step_bytes = to_step_onnx_bytes(model, layout, opset)
    diff = step_parity(step_bytes, layout, onnx_path, x)
    if not diff <= tolerance:
        raise StepGraphError(
            f"{checkpoint}: the step graph over {frames} frames differs from {onnx_path} "
            f"by {diff:.3g} (max allowed {tolerance:g})"
        )
    path = step_path(onnx_path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(step_bytes)
    tmp.replace(path)
    card = read_card(card_file)
    card.stream = stream_spec(layout, path, diff, channels)
    write_model_card(card_file, card)
    return StepGraphResult(path, diff, layout.bytes_per_stream)
