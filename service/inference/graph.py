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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.errors import ModelLoadError, ModelRunFailed, ShuttingDown

log = logging.getLogger(__name__)

Feeds = dict[str, NDArray[Any]]

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
            # A device failure (CUDA out of memory, a lost device) fails this batch with
            # a 503 naming the provider; the process and the other models carry on.
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ModelRunFailed(f"the model run failed on {self.provider}: {first}") from None
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


@dataclass(frozen=True)
class GraphSpec:
    """What the service needs to open one graph file."""

    path: str
    providers: list[str | tuple[str, dict[str, str]]]
    options: ort.SessionOptions
    simulated: SimulatedDevice | None
    """Set when the simulated device stands in for the providers' first choice."""


def open_session(spec: GraphSpec) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(spec.path, sess_options=spec.options, providers=spec.providers)
    except Exception as err:  # onnxruntime raises its own unexported classes
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelLoadError(f"model file {spec.path} cannot be loaded: {first}") from None


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
    Without buckets, runs go through one session at their own size. Thread-safe as onnxruntime sessions are: runs on different buckets share
    nothing; runs on one bucket share its session."""

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
        device = spec.simulated
        if device is not None:
            templates = first.run(None, self._zeros)
            make: Callable[[], Graph] = lambda: SimulatedGraph(templates, device)  # noqa: E731
            self._fallback = make()
        else:
            self._fallback = OrtGraph(first)
            make = lambda: OrtGraph(open_session(spec))  # noqa: E731
        for i, size in enumerate(buckets):
            try:
                self._graphs[size] = self._fallback if i == 0 else make()
            except ModelLoadError as err:
                # Out of device memory for one more session: serve with the buckets that
                # fit rather than fail (or crash-loop) the model; larger batches split.
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

    @property
    def onnx_sessions(self) -> list[ort.InferenceSession]:
        """The onnxruntime sessions held, one per bucket (none on the simulated device,
        none once closed)."""
        graphs = {id(g): g for g in [self._fallback, *self._graphs.values()]}
        return [g.session for g in graphs.values() if isinstance(g, OrtGraph)]

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
