"""Task adapters: what a model's inputs and outputs mean, chosen by its card's ``task``.

An adapter decodes a client's request into model inputs and shapes the runner's outputs
into an answer; the runner (``service.inference.runner``) only runs arrays.
"""

from __future__ import annotations

from convlstm_card import ModelCard
from service.config import Settings
from service.tasks.adapter import TaskAdapter
from service.tasks.next_frame import NextFrameTask
from service.tasks.series import SeriesTask
from service.tasks.tensor import TensorTask


def adapter_for(card: ModelCard, settings: Settings) -> TaskAdapter:
    """The adapter for ``card``'s task and output kind; ``ModelLoadError`` if the model
    does not fit it. A next-frame model whose output is no frame (output kind ``tensor``)
    is served as plain tensors: over the Open Inference Protocol, not ``/predict``. A
    series model is rolled out at most ``max_horizon`` runs."""
    if card.task == "next_frame" and card.output_kind != "tensor":
        return NextFrameTask.from_card(card, settings.max_horizon)
    if card.task == "series":
        return SeriesTask.from_card(card, settings.max_horizon)
    return TensorTask.from_card(card)


__all__ = ["NextFrameTask", "SeriesTask", "TaskAdapter", "TensorTask", "adapter_for"]
