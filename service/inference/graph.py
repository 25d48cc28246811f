"""One ONNX graph as the service runs it: on onnxruntime or on the simulated device, with
one session per batch bucket where the device needs fixed shapes.

Why buckets: with cuDNN 9, onnxruntime's CUDA ``Conv`` keeps one execution plan per
node, for the last input shape that node ran, and rebuilds every Conv's plan when a run's
shape differs from the previous run's on that session (``UpdateState`` in
``core/providers/cuda/nn/conv.cc``; onnxruntime issue #23006). A scheduler that forms
batches of varying size on one session then pays that rebuild on most runs, and padding
on one session cannot help: there is no per-shape cache to warm. One session per batch
size, each batch padded to the smallest size that holds it, keeps every session on one
shape for its whole life; CUDA graphs need exactly that too. On the CPU provider a change
of shape costs nothing, so the CPU keeps one session unless asked otherwise.

The simulated device (``CONVLSTM_PROVIDER=simulated``) stands in for a fast accelerator
on any machine: every run takes ``batch_ms + item_ms * batch`` with the GIL released, a
change of input shape on one simulated session first costs ``shape_change_ms`` under a
lock held per session (as onnxruntime's per-node lock), and the outputs have the model's
real shapes and dtypes (one real CPU run's outputs, repeated). Its answers are not
predictions; it exists to measure and test the serving path against a device whose
speed and shape behaviour are known.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.errors import ModelLoadError, ModelRunFailed, ShuttingDown

log = logging.getLogger(__name__)

Feeds = dict[str, NDArray[Any]]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SIMULATED = "simulated"
"""The provider name the simulated device reports (``/readyz``, metrics, logs)."""

# onnxruntime's element types, for zero inputs of the right dtype.
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def bucket_for(buckets: Sequence[int], n: int) -> int:
    """The smallest bucket that holds ``n`` items (``buckets`` sorted, ``n`` no larger
    than the largest)."""
    return next(b for b in buckets if b >= n)


def first_line(err: Exception) -> str:
    """onnxruntime's message for ``err``, its first line only (the rest is a C++ trace)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def run_failed(provider: str, err: Exception) -> ModelRunFailed:
    """A device failure (CUDA out of memory, a lost device) fails its batch with a 503
    naming the provider; the process and the other models carry on."""
    return ModelRunFailed(f"the model run failed on {provider}: {first_line(err)}")


class Graph(Protocol):
    """A loaded graph: named inputs in, every output out, in the graph's order."""

    def run(self, feeds: Feeds) -> list[NDArray[Any]]: ...


@dataclass(frozen=True)
class SimulatedDevice:
    batch_ms: float = 80.0
    item_ms: float = 2.0
    shape_change_ms: float = 0.0

    def run_seconds(self, batch: int) -> float:
        return (self.batch_ms + self.item_ms * batch) / 1000.0


class OrtGraph:
    """An onnxruntime session, its run failures named by provider."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.provider = session.get_providers()[0]

    def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        try:
            out: list[NDArray[Any]] = self.session.run(None, feeds)
        except Exception as err:  # onnxruntime raises its own unexported classes
            raise run_failed(self.provider, err) from None
        return out


class SimulatedGraph:
    """One simulated session: sleeps as the device would, answers with fixed outputs."""

    def __init__(self, templates: list[NDArray[Any]], device: SimulatedDevice) -> None:
        self._templates = templates
        self._device = device
        self._plan_lock = threading.Lock()
        self._last_shapes: tuple[tuple[int, ...], ...] | None = None

    def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        shapes = tuple(v.shape for v in feeds.values())
        n = shapes[0][0]
        if self._device.shape_change_ms > 0:
            with self._plan_lock:  # held while rebuilding, as onnxruntime's per-node lock
                if shapes != self._last_shapes:
                    time.sleep(self._device.shape_change_ms / 1000.0)
                    self._last_shapes = shapes
        time.sleep(self._device.run_seconds(n))  # releases the GIL, as a device run does
        return [np.repeat(t, n, axis=0) for t in self._templates]


class BoundGraph:
    """One bucket's session run through IO binding: every input copied into a buffer bound
    on the device once, the outputs read back from buffers bound there too. With CUDA
    graphs the first run captures the whole graph and every later run replays it, which
    needs exactly this: fixed shapes, fixed buffers. The buffers belong to the session, so
    runs on it take turns."""

    def __init__(self, session: ort.InferenceSession, batch: int, device: str) -> None:
        self.session = session
        self.provider = session.get_providers()[0]
        self._lock = threading.Lock()
        self._on_cpu = device == "cpu"
        zeros = zero_feeds(session, batch)
        # One plain run learns the outputs' shapes and dtypes at this batch size.
        plain = session.run(None, zeros)
        self._binding = session.io_binding()
        self._inputs = {}
        for name, value in zeros.items():
            bound = ort.OrtValue.ortvalue_from_numpy(value, device, 0)
            self._binding.bind_ortvalue_input(name, bound)
            self._inputs[name] = bound
        self._outputs = []
        for meta, value in zip(session.get_outputs(), plain, strict=True):
            bound = ort.OrtValue.ortvalue_from_shape_and_type(
                list(value.shape), value.dtype, device, 0
            )
            self._binding.bind_ortvalue_output(meta.name, bound)
            self._outputs.append(bound)
        self.run(zeros)  # the first bound run (a CUDA graph's capture) before any request

    def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        with self._lock:
            try:
                for name, value in feeds.items():
                    self._inputs[name].update_inplace(np.ascontiguousarray(value))
                self.session.run_with_iobinding(self._binding)
            except Exception as err:  # onnxruntime raises its own unexported classes
                raise run_failed(self.provider, err) from None
            # On the CPU numpy() is a view of the bound buffer, which the next run
            # overwrites: the answer must be a copy. From a GPU it is a copy already.
            if self._on_cpu:
                return [o.numpy().copy() for o in self._outputs]
            return [o.numpy() for o in self._outputs]


@dataclass(frozen=True)
class GraphSpec:
    """What the service needs to open one graph file, and how to run its buckets."""

    path: str
    providers: list[str | tuple[str, dict[str, str]]]
    intra_op_threads: int = 0
    intra_op_spinning: bool = False
    simulated: SimulatedDevice | None = None
    """Set when the simulated device stands in for the providers' first choice."""
    io_binding: str = "off"
    """Run each bucket's session through IO binding (``BoundGraph``): ``on``, ``off``, or
    ``auto`` (on the CUDA provider only)."""
    cuda_graphs: bool = False
    """Capture a CUDA graph per bucket (with IO binding, on the CUDA provider)."""


def open_session(
    spec: GraphSpec, *, shared_arena: bool = False, cuda_graph: bool = False
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if spec.intra_op_spinning else "0"
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if shared_arena:
        options.add_session_config_entry("session.use_env_allocators", "1")
    providers = spec.providers
    if cuda_graph:
        providers = [
            (p[0], {**p[1], "enable_cuda_graph": "1"})
            if isinstance(p, tuple) and p[0] == CUDA
            else p
            for p in providers
        ]
    try:
        return ort.InferenceSession(spec.path, sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own unexported classes
        raise ModelLoadError(
            f"model file {spec.path} cannot be loaded: {first_line(err)}"
        ) from None


_shared_arenas: set[str] = set()
_shared_arenas_lock = threading.Lock()


def share_arena(provider: str) -> bool:
    """One memory arena for every bucket session of ``provider`` in this process,
    registered once (onnxruntime's environment allocators). Without it each session grows
    an arena of its own to its bucket's working size: on the CPU, five warmed sessions of
    the seed model held 513 MB, with one shared arena 298 MB. False where onnxruntime
    refuses it; the sessions then keep their own."""
    with _shared_arenas_lock:
        if provider in _shared_arenas:
            return True
        try:
            arena = ort.OrtArenaCfg(0, -1, -1, -1)  # onnxruntime's defaults
            if provider == CPU:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(info, arena)
            elif provider == CUDA:
                info = ort.OrtMemoryInfo(
                    "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator_v2(CUDA, info, {}, arena)
            else:
                return False
        except Exception as err:  # onnxruntime raises its own unexported classes
            log.warning("bucket sessions on %s keep an arena each: %s", provider, err)
            return False
        _shared_arenas.add(provider)
        return True


def zero_feeds(session: ort.InferenceSession, batch: int) -> Feeds:
    """Zeros of every input's shape and dtype at ``batch`` (other free dimensions 1)."""
    feeds: Feeds = {}
    for inp in session.get_inputs():
        dims = [
            d if isinstance(d, int) else batch if j == 0 else 1 for j, d in enumerate(inp.shape)
        ]
        feeds[inp.name] = np.zeros(dims, _DTYPES.get(inp.type, np.float32))
    return feeds


class BucketedGraph:
    """A graph whose runs are padded to fixed batch sizes, with one session per size.
    Without buckets, runs go through one session at their own size. Runs on different
    buckets share nothing; runs on one bucket share its session (and take turns where it
    is bound)."""

    def __init__(
        self,
        first: ort.InferenceSession,
        spec: GraphSpec,
        *,
        buckets: tuple[int, ...],
    ) -> None:
        self.buckets = buckets
        self._zeros = zero_feeds(first, 1)
        self._graphs: dict[int, Graph] = {}
        self._fallback: Graph
        self.cuda_graphs = False
        device = spec.simulated
        if device is not None:
            templates = first.run(None, self._zeros)
            self._fallback = SimulatedGraph(templates, device)
            for size in buckets:
                self._graphs[size] = SimulatedGraph(templates, device)
            return
        self._fallback = OrtGraph(first)
        if not buckets:
            return
        provider = first.get_providers()[0]
        shared = share_arena(provider)
        bound = (spec.io_binding == "on" and provider in (CPU, CUDA)) or (
            spec.io_binding == "auto" and provider == CUDA
        )
        self.cuda_graphs = spec.cuda_graphs and bound and provider == CUDA
        where = "cuda" if provider == CUDA else "cpu"
        for size in buckets:
            try:
                self._graphs[size] = self._open_bucket(spec, size, shared, bound, where)
            except ModelLoadError as err:
                # Out of device memory for one more session: serve with the buckets that
                # fit rather than fail (or crash-loop) the model; larger batches split.
                if not self._graphs:
                    raise
                self.buckets = tuple(b for b in buckets if b in self._graphs)
                log.warning(
                    "%s: %d of %d bucket sessions created (batch sizes %s); the rest failed: %s",
                    spec.path,
                    len(self.buckets),
                    len(buckets),
                    list(self.buckets),
                    err.message,
                )
                break
        # The first session only told the graph's inputs; the buckets' own serve.
        self._fallback = self._graphs[self.buckets[0]]

    def _open_bucket(
        self, spec: GraphSpec, size: int, shared: bool, bound: bool, where: str
    ) -> Graph:
        if not bound:
            return OrtGraph(open_session(spec, shared_arena=shared))
        if self.cuda_graphs:
            try:
                session = open_session(spec, shared_arena=shared, cuda_graph=True)
                return BoundGraph(session, size, where)
            except Exception as err:  # a graph CUDA graphs cannot capture (Loop, CPU nodes)
                log.warning(
                    "%s: no CUDA graph for batch %d, running it without: %s", spec.path, size, err
                )
        try:
            return BoundGraph(open_session(spec, shared_arena=shared), size, where)
        except ModelRunFailed as err:
            raise ModelLoadError(f"batch bucket {size} cannot run: {err.message}") from None

    @property
    def onnx_sessions(self) -> list[ort.InferenceSession]:
        """The onnxruntime sessions held: the first, and one per bucket (none on the
        simulated device, none once closed)."""
        graphs = {id(g): g for g in [self._fallback, *self._graphs.values()]}
        return [g.session for g in graphs.values() if isinstance(g, OrtGraph | BoundGraph)]

    def close(self) -> None:
        self._graphs = {}
        self._fallback = _Closed()

    def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        """Every output for a batch of ``n`` items (all inputs share axis 0)."""
        if not self.buckets:
            return self._fallback.run(feeds)
        n = len(next(iter(feeds.values())))
        largest = self.buckets[-1]
        if n > largest:  # never an unwarmed shape: split into runs the buckets hold
            parts = [
                self.run({k: v[i : i + largest] for k, v in feeds.items()})
                for i in range(0, n, largest)
            ]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        size = bucket_for(self.buckets, n)
        if size > n:
            feeds = {k: _pad(v, size) for k, v in feeds.items()}
        out = self._graphs[size].run(feeds)
        return [o[:n] for o in out] if size > n else out

    def warm_up(self, runs: int, sizes: tuple[int, ...] = (1,)) -> float:
        """``runs`` zero batches on every bucket's session (and of ``sizes`` where there
        are no buckets), so that no request pays a first run's allocation and plan
        building; the seconds spent."""
        start = time.perf_counter()
        for size in self.buckets or tuple(sorted(set(sizes))):
            feeds = {k: np.zeros((size, *v.shape[1:]), v.dtype) for k, v in self._zeros.items()}
            for _ in range(runs):
                self.run(feeds)
        return time.perf_counter() - start


def _pad(value: NDArray[Any], size: int) -> NDArray[Any]:
    pad = np.zeros((size - len(value), *value.shape[1:]), value.dtype)
    return np.concatenate([value, pad])


class _Closed:
    def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        raise ShuttingDown("this model version was unloaded")
