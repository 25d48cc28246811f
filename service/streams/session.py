"""The onnxruntime session of a model's step graph: one frame and every layer's state
in, the prediction and the new states out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from convlstm_card import StreamSpec, sha256_of
from service.config import Settings
from service.errors import ModelLoadError
from service.inference.session import GraphOptions, LoadedGraph

State = dict[str, NDArray[np.float32]]
"""Every state tensor by name: (N, F, H, W) for a batch, (F, H, W) for one stream."""


def step_graph_path(model_path: Path, spec: StreamSpec) -> Path:
    """The step graph file the card names, beside the model's file."""
    return model_path.parent / spec.step_graph.file


class StepSession:
    """A model's step graph, checked against its card (file, sha256, inputs, outputs)."""

    def __init__(self, model_path: Path, spec: StreamSpec, settings: Settings) -> None:
        path = step_graph_path(model_path, spec)
        if not path.is_file():
            raise ModelLoadError(f"step graph {path} named by the card does not exist")
        sha = sha256_of(path)
        if sha != spec.step_graph.sha256:
            raise ModelLoadError(
                f"step graph {path}: sha256 {sha} but the card records {spec.step_graph.sha256}"
            )
        loaded = LoadedGraph(path, GraphOptions.from_settings(settings), what="step graph")
        self.graph = loaded.graph
        self.provider = loaded.provider
        self.load_seconds = loaded.load_seconds
        self.path = path
        self.spec = spec
        self.frame_name = spec.frame.name
        self.state_names = [s.name for s in spec.state]
        self.state_shapes = {
            s.name: tuple(int(d) for d in s.shape[1:] if isinstance(d, int)) for s in spec.state
        }
        inputs = [i.name for i in loaded.inputs]
        outputs = [o.name for o in loaded.outputs]
        expected_in = [self.frame_name, *self.state_names]
        expected_out = [spec.prediction.name, *(f"next_{n}" for n in self.state_names)]
        if inputs != expected_in or outputs != expected_out:
            raise ModelLoadError(
                f"step graph {path}: inputs {inputs} and outputs {outputs}, but the card "
                f"states {expected_in} and {expected_out}"
            )
        self.frame_shape = tuple(int(d) for d in spec.frame.shape[1:] if isinstance(d, int))
        self.state_bytes = spec.state_bytes_per_stream

    def zero_state(self) -> State:
        """One stream's state before its first frame."""
        return {n: np.zeros(shape, np.float32) for n, shape in self.state_shapes.items()}

    def run(self, frames: NDArray[np.float32], state: State) -> tuple[NDArray[np.float32], State]:
        """One step of a batch: frames (N, H, W, C) and states (N, F, H, W) -> the
        predicted frames (N, H, W, C) and the new states."""
        out = self.graph.run({self.frame_name: frames, **state})
        return out[0], dict(zip(self.state_names, out[1:], strict=True))

    def warm_up(self, runs: int) -> float:
        """``runs`` steps of zero frames on every bucket (at batch 1 where there are no
        buckets); the seconds spent."""
        return self.graph.warm_up(runs)
