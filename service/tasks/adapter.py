"""What every task adapter offers the protocol fronts: checking and converting a
client's tensor into model inputs, the number of model steps a request asks for, the
rollout that runs those steps, and the shape of the answer."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from convlstm_card import Task
from service.inference.scheduler import RunBatch


class TaskAdapter(Protocol):
    @property
    def task(self) -> Task:
        """The card's task this adapter serves."""
        ...

    def rollout(
        self, run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
    ) -> tuple[list[NDArray[np.float32]], list[int]]:
        """How the runner turns a batch of jobs into answers (a ``Rollout``)."""
        ...

    def check_batch_shape(self, shape: list[int], where: str) -> None:
        """Raise ``InvalidInput`` unless ``shape`` is a batch (N, ...) of model inputs."""
        ...

    def model_input(self, array: NDArray[np.generic], where: str) -> NDArray[np.float32]:
        """A batch as the client sent it (uint8 or float32) -> the model's float32 values."""
        ...

    def steps(self, horizon: int) -> int:
        """Model steps for a request that asks for ``horizon``; ``InvalidInput`` if none."""
        ...

    def batch_output(self, outputs: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
        """The runner's stacked outputs as the protocol returns them."""
        ...
