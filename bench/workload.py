"""What one request asks of a model, from its card: the sequence shape, the work per
sequence, and a request body of the right size. Nothing here assumes the demo model's
15 frames of 40 x 40."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard, card_path, read_card
from service.api.examples import moving_square_frames


def sequence_shape(card: ModelCard) -> tuple[int, ...]:
    """One input sequence's shape (T, H, W, C), as the card states it."""
    return tuple(int(d) for d in card.input.shape[1:])


def flops_per_sequence(card: ModelCard) -> float:
    """Nominal FLOPs of one sequence: 2 x the multiply-adds of every convolution.

    Per pixel and step, a ConvLSTM layer does 9·(in + f)·4f multiply-adds, its
    parameter count less its 4f biases; the head does its count less its biases, once.
    """
    frames, height, width = sequence_shape(card)[:3]
    total = 0
    for row in card.layers:
        filters = int(row.output_shape.strip("()").split(",")[-1])
        if row.kind == "ConvLSTM2D":
            total += (row.params - 4 * filters) * frames * height * width
        elif row.kind == "Conv2D":
            total += (row.params - filters) * height * width
    return 2.0 * total


def example_frames(model: Path) -> list[str]:
    """PNG frames of a moving square, as many and as large as ``model``'s card says."""
    frames, height, width, _ = sequence_shape(read_card(card_path(model)))
    return moving_square_frames(frames, height, width)


def oip_binary_request(
    input_name: str, output_name: str, batch: NDArray[np.float32]
) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request with the binary tensor extension: the JSON
    header, then ``batch``'s raw bytes; the output asked for as raw bytes too."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + batch.tobytes(), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def test_sequence(model: Path) -> NDArray[np.float32]:
    """One real input for ``model``, a batch of 1: the first sequence of the held-out
    test split (moving digits), cut to the number of frames its card asks for."""
    from model_export.frames.data import generate_split, inputs_and_targets

    shape = sequence_shape(read_card(card_path(model)))
    x, _ = inputs_and_targets(generate_split(1, "test"), every_step=False)
    if x.shape[2:] != shape[1:] or x.shape[1] < shape[0]:
        raise ValueError(f"{model.name} takes {shape}; the test split has {x.shape[1:]}")
    return np.ascontiguousarray(x[:, x.shape[1] - shape[0] :])


def oip_json_request(input_name: str, batch: NDArray[np.float32]) -> bytes:
    """An Open Inference Protocol request with the tensor as a JSON ``data`` list."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "data": batch.reshape(-1).tolist(),
                }
            ]
        }
    ).encode()
