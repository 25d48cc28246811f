"""The onnxruntime session: provider choice, load, warm-up, run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.config import ConvAlgoSearch, IoBinding, PadBatches, Provider, Settings
from service.errors import GpuUnavailable, ModelLoadError
from service.inference.cuda_driver import describe, probe_driver
from service.inference.graph import (
    CPU,
    CUDA,
    SIMULATED,
    BucketedGraph,
    GraphSpec,
    SimulatedDevice,
    open_session,
)

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

_PREFERENCES: dict[str, tuple[str, ...]] = {
    "auto": (CUDA, CPU),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
    "cpu": (CPU,),
    # The simulated device reads the graph's shapes and one set of real outputs from a
    # CPU session; it runs nothing else.
    "simulated": (CPU,),
}


def gpu_fallback_reason(requested: str) -> str:
    """Why onnxruntime did not start ``requested``, as far as can be told from outside:
    it logs its own error, but returns a CPU session without saying why."""
    from onnxruntime.capi import build_and_package_info

    needed = getattr(build_and_package_info, "cuda_version", None) or None
    return describe(probe_driver(), requested, needed)


def provider_options(
    requested: list[str], *, cuda_tf32: bool, conv_algo_search: str = "EXHAUSTIVE"
) -> list[str | tuple[str, dict[str, str]]]:
    """The providers with the options onnxruntime takes for each. TF32 (on by default
    from Ampere on) rounds convolution inputs to 10 mantissa bits: on an H100 the served
    graph then differed from the CPU by 2.2e-4 instead of 5.7e-7 (bench/results/gpu/).
    ``conv_algo_search`` is cuDNN's algorithm search for each Conv plan it builds."""
    options: dict[str, dict[str, str]] = {
        CUDA: {"use_tf32": "1" if cuda_tf32 else "0", "cudnn_conv_algo_search": conv_algo_search}
    }
    return [(p, options[p]) if p in options else p for p in requested]


def choose_providers(preference: Provider, available: list[str]) -> list[str]:
    """The providers to ask onnxruntime for, best first, limited to those installed."""
    chosen = [p for p in _PREFERENCES[preference] if p in available]
    return chosen or [CPU]


@dataclass(frozen=True)
class GraphOptions:
    """How a graph is opened: the settings that shape a session, in one place, for the
    model's graph and its step graph alike."""

    provider: Provider = "auto"
    intra_op_threads: int = 0
    intra_op_spinning: bool = False
    require_gpu: bool = False
    cuda_tf32: bool = True
    conv_algo_search: ConvAlgoSearch = "EXHAUSTIVE"
    pad_batches: PadBatches = "auto"
    buckets: tuple[int, ...] = (1, 2, 4, 8)  # those of the default max batch, 8
    io_binding: IoBinding = "auto"
    cuda_graphs: bool = False
    simulated: SimulatedDevice = SimulatedDevice()

    @classmethod
    def from_settings(cls, settings: Settings) -> GraphOptions:
        return cls(
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
            intra_op_spinning=settings.intra_op_spinning,
            require_gpu=settings.require_gpu,
            cuda_tf32=settings.cuda_tf32,
            conv_algo_search=settings.cudnn_conv_algo_search,
            pad_batches=settings.pad_batches,
            buckets=settings.buckets,
            io_binding=settings.io_binding,
            cuda_graphs=settings.cuda_graphs,
            simulated=SimulatedDevice(
                settings.simulated_batch_ms,
                settings.simulated_item_ms,
                settings.simulated_shape_change_ms,
            ),
        )


class LoadedGraph:
    """One graph file opened as ``options`` say: the provider really in use (and why it
    is not the one asked for), the inputs and outputs, and the bucketed graph that runs
    it."""

    def __init__(self, path: Path, options: GraphOptions, *, what: str = "model file") -> None:
        if not path.is_file():
            raise ModelLoadError(f"{what} {path} does not exist")
        self.path = path
        available = ort.get_available_providers()
        simulated = options.provider == "simulated"
        requested = choose_providers(options.provider, available)
        if any(p in GPU_PROVIDERS for p in requested) and hasattr(ort, "preload_dlls"):
            # The GPU wheel finds CUDA and cuDNN from the nvidia-* pip packages this way.
            ort.preload_dlls()
        spec = GraphSpec(
            str(path),
            provider_options(
                requested,
                cuda_tf32=options.cuda_tf32,
                conv_algo_search=options.conv_algo_search,
            ),
            intra_op_threads=options.intra_op_threads,
            intra_op_spinning=options.intra_op_spinning,
            simulated=options.simulated if simulated else None,
            io_binding=options.io_binding,
            cuda_graphs=options.cuda_graphs,
        )
        start = time.perf_counter()
        first = open_session(spec)
        self.requested = [SIMULATED] if simulated else requested
        self.available = available
        # onnxruntime falls back silently when a GPU provider fails to initialise:
        # the providers it reports are the truth, the request is only a wish.
        self.provider = SIMULATED if simulated else first.get_providers()[0]
        self.fallback_reason: str | None = None
        if requested[0] in GPU_PROVIDERS and self.provider != requested[0]:
            self.fallback_reason = gpu_fallback_reason(requested[0])
        if options.require_gpu and self.provider not in GPU_PROVIDERS:
            why = self.fallback_reason or f"no GPU provider is installed ({available})"
            raise GpuUnavailable(f"a GPU provider is required but {self.provider} is in use: {why}")
        self.inputs = first.get_inputs()
        self.outputs = first.get_outputs()
        # Fixed shapes per session where the device rebuilds its plans on a change of
        # shape (module docstring of service.inference.graph); a graph with a fixed batch
        # size has one shape already.
        dynamic_batch = all(not isinstance(i.shape[0], int) for i in self.inputs)
        shape_bound = self.provider in GPU_PROVIDERS or simulated
        pad = options.pad_batches == "on" or (options.pad_batches == "auto" and shape_bound)
        self.graph = BucketedGraph(
            first,
            spec,
            buckets=options.buckets if pad and dynamic_batch else (),
        )
        self.load_seconds = time.perf_counter() - start


class OnnxSession:
    """A model's graph: one input, one output; safe to ``run`` from several threads."""

    def __init__(self, path: Path, options: GraphOptions | None = None) -> None:
        loaded = LoadedGraph(path, options or GraphOptions())
        self.path = path
        """The graph file, whose card may name files beside it (a step graph)."""
        self.provider = loaded.provider
        self.requested = loaded.requested
        self.available = loaded.available
        self.fallback_reason = loaded.fallback_reason
        self.load_seconds = loaded.load_seconds
        self.graph = loaded.graph
        inputs, outputs = loaded.inputs, loaded.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"model file {path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "a served model has one of each"
            )
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: list[int | str] = list(inputs[0].shape)
        self.output_shape: list[int | str] = list(outputs[0].shape)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes runs are padded to, each on a session of its own; empty when
        runs go through at their own size."""
        return self.graph.buckets

    def close(self) -> None:
        """Let go of the onnxruntime sessions, and so of their memory, now: not whenever
        the cycle collector reaches this object's owners (a full collection stops the
        event loop for 100 ms and more). ``run`` is refused afterwards."""
        self.graph.close()

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = self.graph.run({self.input_name: batch})[0]
        return out

    def warm_up(self, runs: int, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Run ``runs`` zero batches on every bucket (or of each of ``batch_sizes`` where
        there are no buckets) so that real requests pay no allocation or plan-building
        cost. Warming the largest batch the scheduler can form grows onnxruntime's memory
        arena to its working size before serving, instead of in steps under load.
        Returns the seconds spent."""
        return self.graph.warm_up(runs, batch_sizes)
