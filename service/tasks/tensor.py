"""Plain tensors: a batch (N, ...) in, the graph's output (N, ...) out, in one model run.
Served through the Open Inference Protocol; the input's shape and value range come from
the model's card."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard
from service.errors import InvalidInput, ModelLoadError
from service.inference.codec import ValueRange, check_shape, to_model_values
from service.inference.scheduler import RunBatch, run_once


class TensorTask:
    """The adapter for ``task: tensor`` cards."""

    task: Literal["tensor"] = "tensor"

    def __init__(self, item_shape: tuple[int, ...], value_range: ValueRange | None) -> None:
        self.item_shape = item_shape
        self.value_range = value_range

    @classmethod
    def from_card(cls, card: ModelCard) -> TensorTask:
        shape = card.input.shape
        if len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
            raise ModelLoadError(
                f"model input shape {shape} is not (N, ...) with every size after N fixed"
            )
        return cls(tuple(int(d) for d in shape[1:]), card.input.range)

    def rollout(
        self, run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
    ) -> tuple[list[NDArray[np.float32]], list[int]]:
        return run_once(run_batch, inputs, steps)

    def check_batch_shape(self, shape: list[int], where: str) -> None:
        check_shape(shape, self.item_shape, where, batched=True)

    def model_input(self, array: NDArray[np.generic], where: str) -> NDArray[np.float32]:
        return to_model_values(array, where, self.value_range)

    def steps(self, horizon: int) -> int:
        if horizon != 1:
            raise InvalidInput(
                f"horizon: this model answers in one step, got {horizon}", location="horizon"
            )
        return 1

    def batch_output(self, outputs: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
        return outputs
