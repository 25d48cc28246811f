"""The onnxruntime session: provider choice, load, warm-up, run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.config import PadBatches, Provider
from service.errors import ModelLoadError, ShuttingDown

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

_PREFERENCES: dict[str, tuple[str, ...]] = {
    "auto": (CUDA, CPU),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
    "cpu": (CPU,),
}


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def gpu_fallback_reason(requested: str) -> str:
    """Why onnxruntime did not start ``requested``, as far as can be told from outside:
    it logs its own error, but returns a CPU session without saying why."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return (
            f"{requested} did not start: no NVIDIA driver on this machine (libcuda.so.1 not found)"
        )
    return (
        f"{requested} did not start although an NVIDIA driver is present: CUDA or cuDNN "
        "libraries missing or mismatched (see onnxruntime's error above)"
    )


def provider_options(
    requested: list[str], *, cuda_tf32: bool
) -> list[str | tuple[str, dict[str, str]]]:
    """The providers with the options onnxruntime takes for each. TF32 (on by default
    from Ampere on) rounds convolution inputs to 10 mantissa bits: on an H100 the served
    graph then differed from the CPU by 2.2e-4 instead of 5.7e-7 (bench/results/gpu/)."""
    options: dict[str, dict[str, str]] = {CUDA: {"use_tf32": "1" if cuda_tf32 else "0"}}
    return [(p, options[p]) if p in options else p for p in requested]


def choose_providers(preference: Provider, available: list[str]) -> list[str]:
    """The providers to ask onnxruntime for, best first, limited to those installed."""
    chosen = [p for p in _PREFERENCES[preference] if p in available]
    return chosen or [CPU]


class OnnxSession:
    """One model file in one onnxruntime session; safe to ``run`` from several threads."""

    def __init__(
        self,
        path: Path,
        *,
        provider: Provider = "auto",
        intra_op_threads: int = 0,
        intra_op_spinning: bool = False,
        require_gpu: bool = False,
        pad_batches: PadBatches = "auto",
        max_batch: int = 1,
        cuda_tf32: bool = True,
    ) -> None:
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        self.path = path
        """The graph file, whose card may name files beside it (a step graph)."""
        available = ort.get_available_providers()
        requested = choose_providers(provider, available)
        if any(p in GPU_PROVIDERS for p in requested) and hasattr(ort, "preload_dlls"):
            # The GPU wheel finds CUDA and cuDNN from the nvidia-* pip packages this way.
            ort.preload_dlls()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if intra_op_spinning else "0"
        )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        start = time.perf_counter()
        try:
            self._session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=provider_options(requested, cuda_tf32=cuda_tf32),
            )
        except Exception as err:  # onnxruntime raises its own unexported classes
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ModelLoadError(f"model file {path} cannot be loaded: {first_line}") from None
        self.load_seconds = time.perf_counter() - start
        self.requested = requested
        self.available = available
        # onnxruntime falls back silently when a GPU provider fails to initialise:
        # the providers it reports are the truth, the request is only a wish.
        self.provider = self._session.get_providers()[0]
        self.fallback_reason: str | None = None
        if requested[0] in GPU_PROVIDERS and self.provider != requested[0]:
            self.fallback_reason = gpu_fallback_reason(requested[0])
        if require_gpu and self.provider not in GPU_PROVIDERS:
            why = self.fallback_reason or f"no GPU provider is installed ({available})"
            raise ModelLoadError(f"a GPU provider is required but {self.provider} is in use: {why}")
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"model file {path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "a next-frame model has one of each"
            )
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: list[int | str] = list(inputs[0].shape)
        self.output_shape: list[int | str] = list(outputs[0].shape)
        # cuDNN chooses convolution algorithms per input shape (an exhaustive search by
        # default), so on a GPU every new batch size the scheduler forms costs a search.
        # Padding each batch up to a few fixed sizes, all warmed before ready, keeps the
        # set of shapes small (and is what CUDA graphs need). On the CPU padding would
        # only add work, so "auto" pads on GPU providers only.
        dynamic_batch = not isinstance(self.input_shape[0], int)
        pad = pad_batches == "on" or (pad_batches == "auto" and self.provider in GPU_PROVIDERS)
        self.buckets: tuple[int, ...] = batch_buckets(max_batch) if pad and dynamic_batch else ()

    def close(self) -> None:
        """Let go of the onnxruntime session, and so of its memory, now: not whenever the
        cycle collector reaches this object's owners (a full collection stops the event
        loop for 100 ms and more). ``run`` is refused afterwards."""
        self._session = None

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._session is None:
            raise ShuttingDown("this model version was unloaded")
        n = len(batch)
        size = next((b for b in self.buckets if b >= n), n)
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        out: NDArray[np.float32] = self._session.run([self.output_name], {self.input_name: batch})[
            0
        ]
        return out[:n]

    def warm_up(self, runs: int, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Run ``runs`` zero batches of each size so that real requests pay no
        allocation or kernel-selection cost. Warming the largest batch the scheduler
        can form grows onnxruntime's memory arena to its working size before serving,
        instead of in steps under load. Returns the seconds spent."""
        start = time.perf_counter()
        for size in sorted(set(batch_sizes) | set(self.buckets)):
            dims = [d if isinstance(d, int) else size for d in self.input_shape]
            dummy = np.zeros(dims, dtype=np.float32)
            for _ in range(runs):
                self.run(dummy)
        return time.perf_counter() - start
