"""Graphs as the service runs them: sessions per batch bucket, padding, the simulated
device and its cost of a change of shape, failed runs, and the settings that shape them.

The bucket plumbing runs on the CPU provider here (``pad_batches="on"``), the same code
path the CUDA provider takes by default; only the device's speed differs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from convlstm_card import read_card
from service.config import Settings
from service.errors import ModelRunFailed, ShuttingDown
from service.inference.graph import (
    SIMULATED,
    BoundGraph,
    OrtGraph,
    SimulatedDevice,
    SimulatedGraph,
)
from service.inference.session import CPU, GraphOptions, OnnxSession
from service.streams.session import StepSession
from tests.service.conftest import COMMITTED_MODEL

RNG = np.random.default_rng(0)
SEQUENCES = RNG.random((7, 15, 40, 40, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def plain() -> OnnxSession:
    return OnnxSession(COMMITTED_MODEL, GraphOptions(provider="cpu"))


@pytest.fixture(scope="module")
def bucketed() -> OnnxSession:
    return OnnxSession(
        COMMITTED_MODEL, GraphOptions(provider="cpu", pad_batches="on", buckets=(1, 2, 4))
    )


def test_the_cpu_keeps_one_session_unpadded_by_default(plain: OnnxSession) -> None:
    assert plain.provider == CPU
    assert plain.buckets == ()
    assert len(plain.graph.onnx_sessions) == 1


def test_a_session_per_bucket_answers_as_one_session(
    plain: OnnxSession, bucketed: OnnxSession
) -> None:
    assert bucketed.buckets == (1, 2, 4)
    sessions = bucketed.graph.onnx_sessions
    assert len(sessions) == 3 and len({id(s) for s in sessions}) == 3
    expected = plain.run(SEQUENCES)
    # 3 pads to 4; 7 is more than the largest bucket: split into 4 and 3 (padded to 4).
    for n in (1, 3, 4, 7):
        got = bucketed.run(SEQUENCES[:n])
        assert got.shape == (n, 40, 40, 3)
        np.testing.assert_allclose(got, expected[:n], atol=1e-5)


def test_warm_up_runs_every_bucket(bucketed: OnnxSession) -> None:
    shapes: list[int] = []
    for size, graph in bucketed.graph._graphs.items():
        original = graph.run

        def spy(feeds: dict[str, np.ndarray], run=original) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
            shapes.append(len(next(iter(feeds.values()))))
            return run(feeds)

        graph.run = spy  # type: ignore[method-assign]
        del size
    try:
        bucketed.warm_up(1)
    finally:
        for graph in bucketed.graph._graphs.values():
            del graph.run
    assert sorted(shapes) == [1, 2, 4]


def test_the_step_graph_pads_to_buckets_with_the_same_answers() -> None:
    spec = read_card(COMMITTED_MODEL.with_suffix(".json")).stream
    assert spec is not None
    settings = Settings(model_path=COMMITTED_MODEL, provider="cpu")
    plain = StepSession(COMMITTED_MODEL, spec, settings)
    padded = StepSession(
        COMMITTED_MODEL,
        spec,
        Settings(model_path=COMMITTED_MODEL, provider="cpu", pad_batches="on", max_batch_size=4),
    )
    assert padded.graph.buckets == (1, 2, 4) and plain.graph.buckets == ()
    frames = SEQUENCES[:3, 0]
    state = {n: RNG.random((3, *s), dtype=np.float32) for n, s in plain.state_shapes.items()}
    want_frame, want_state = plain.run(frames, state)
    got_frame, got_state = padded.run(frames, state)
    np.testing.assert_allclose(got_frame, want_frame, atol=1e-5)
    for name in want_state:
        assert got_state[name].shape == want_state[name].shape
        np.testing.assert_allclose(got_state[name], want_state[name], atol=1e-5)


def test_the_simulated_device_answers_the_models_shapes_in_its_time() -> None:
    device = SimulatedDevice(batch_ms=30.0, item_ms=5.0)
    session = OnnxSession(
        COMMITTED_MODEL, GraphOptions(provider="simulated", buckets=(1, 2, 4), simulated=device)
    )
    assert session.provider == SIMULATED and session.requested == [SIMULATED]
    assert session.buckets == (1, 2, 4)  # padded by default, as on a GPU
    assert session.graph.onnx_sessions == []  # no model runs, only sleeps
    start = time.perf_counter()
    out = session.run(SEQUENCES[:3])
    took = time.perf_counter() - start
    assert out.shape == (3, 40, 40, 3) and out.dtype == np.float32
    assert took >= device.run_seconds(4) * 0.95  # 3 was padded to 4


def test_a_change_of_shape_costs_the_simulated_session_under_its_lock() -> None:
    device = SimulatedDevice(batch_ms=1.0, item_ms=0.0, shape_change_ms=60.0)
    graph = SimulatedGraph([np.zeros((1, 2), np.float32)], device)
    one, two = {"x": np.zeros((1, 3), np.float32)}, {"x": np.zeros((2, 3), np.float32)}
    graph.run(one)
    start = time.perf_counter()
    for _ in range(3):
        graph.run(one)
    same = time.perf_counter() - start
    start = time.perf_counter()
    for feeds in (two, one, two):
        graph.run(feeds)
    changing = time.perf_counter() - start
    assert same < 0.06 and changing >= 3 * 0.06 * 0.95
    # Two threads changing shape on one session wait for each other's rebuilds.
    start = time.perf_counter()
    three = {"x": np.zeros((3, 3), np.float32)}
    threads = [threading.Thread(target=graph.run, args=(f,)) for f in (one, three)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - start >= 2 * 0.06 * 0.95


def test_buckets_remove_the_cost_of_a_change_of_shape() -> None:
    def alternating(pad: str) -> float:
        session = OnnxSession(
            COMMITTED_MODEL,
            GraphOptions(
                provider="simulated",
                pad_batches=pad,  # type: ignore[arg-type]
                buckets=(1, 2),
                simulated=SimulatedDevice(1.0, 0.0, shape_change_ms=50.0),
            ),
        )
        session.warm_up(1)
        start = time.perf_counter()
        for n in (1, 2, 1, 2, 1, 2):
            session.run(SEQUENCES[:n])
        return time.perf_counter() - start

    assert alternating("off") >= 5 * 0.05 * 0.95  # warmed at 1: five changes
    assert alternating("auto") < 0.05


def test_a_failed_run_is_a_503_naming_the_provider(plain: OnnxSession) -> None:
    graph = plain.graph.onnx_sessions[0]
    with pytest.raises(ModelRunFailed, match="failed on CPUExecutionProvider") as err:
        OrtGraph(graph).run({plain.input_name: np.zeros((1, 3), np.float32)})
    assert err.value.status_code == 503


def test_a_closed_graph_refuses_runs(tmp_path: Path) -> None:
    session = OnnxSession(COMMITTED_MODEL, GraphOptions(provider="cpu"))
    session.close()
    assert session.graph.onnx_sessions == []
    with pytest.raises(ShuttingDown):
        session.run(SEQUENCES[:1])


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"batch_buckets": []}, "at least one batch size"),
        ({"batch_buckets": [4, 2]}, "strictly ascending"),
        ({"batch_buckets": [1, 1]}, "strictly ascending"),
        ({"batch_buckets": [0, 2]}, "positive"),
        ({"batch_buckets": [1, 32], "max_batch_size": 16}, "exceeds max_batch_size=16"),
        ({"batch_buckets": list(range(1, 18)), "max_batch_size": 64}, "at most 16"),
        ({"provider": "simulated", "simulated_allowed": False}, "CONVLSTM_SIMULATED_ALLOWED"),
        ({"provider": "simulated", "require_gpu": True}, "contradicts provider=simulated"),
    ],
)
def test_bad_bucket_and_device_settings_are_refused(env: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words) as err:
        Settings(**env)  # type: ignore[arg-type]
    assert "batch_buckets" in str(err.value) or "simulated" in str(err.value)


def test_default_buckets_are_powers_of_two_and_the_max() -> None:
    assert Settings(max_batch_size=16).buckets == (1, 2, 4, 8, 16)
    assert Settings(max_batch_size=12).buckets == (1, 2, 4, 8, 12)
    assert Settings(max_batch_size=1).buckets == (1,)
    assert Settings(max_batch_size=16, batch_buckets=[4, 16]).buckets == (4, 16)


def test_io_binding_answers_as_plain_runs_and_takes_turns(plain: OnnxSession) -> None:
    bound = OnnxSession(
        COMMITTED_MODEL,
        GraphOptions(
            provider="cpu", pad_batches="on", io_binding="on", cuda_graphs=True, buckets=(1, 4)
        ),
    )
    assert bound.graph.cuda_graphs is False  # CUDA graphs are for the CUDA provider only
    assert all(isinstance(g, BoundGraph) for g in bound.graph._graphs.values())
    expected = plain.run(SEQUENCES)
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:  # two threads on one bucket share its bound buffers
        results[i] = bound.run(SEQUENCES[i : i + 3])

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        np.testing.assert_allclose(got, expected[i : i + 3], atol=1e-5)
    # The answer is a copy: the next run does not overwrite it.
    first = bound.run(SEQUENCES[:1])
    kept = first.copy()
    bound.run(SEQUENCES[1:2])
    np.testing.assert_array_equal(first, kept)


def test_the_step_graph_runs_bound_with_every_state() -> None:
    spec = read_card(COMMITTED_MODEL.with_suffix(".json")).stream
    assert spec is not None
    base = {"model_path": COMMITTED_MODEL, "provider": "cpu", "max_batch_size": 2}
    plain = StepSession(COMMITTED_MODEL, spec, Settings(**base))  # type: ignore[arg-type]
    bound = StepSession(
        COMMITTED_MODEL,
        spec,
        Settings(**base, pad_batches="on", io_binding="on"),  # type: ignore[arg-type]
    )
    frames = SEQUENCES[:1, 0]
    state = {n: RNG.random((1, *s), dtype=np.float32) for n, s in plain.state_shapes.items()}
    want_frame, want_state = plain.run(frames, state)
    got_frame, got_state = bound.run(frames, state)
    np.testing.assert_allclose(got_frame, want_frame, atol=1e-5)
    for name in want_state:
        np.testing.assert_allclose(got_state[name], want_state[name], atol=1e-5)


def test_a_bucket_session_that_cannot_be_made_leaves_fewer_buckets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of device memory at the third bucket (the GPU's failure, imitated here: no GPU
    on this machine): the model serves with the two that fit, and says so."""
    from service.inference import graph

    real = graph.open_session
    calls = {"n": 0}

    def failing(spec: graph.GraphSpec, **kwargs: bool) -> object:
        calls["n"] += 1
        if calls["n"] == 4:  # the first session, then buckets 1 and 2; bucket 4 fails
            raise graph.ModelLoadError("CUDA failure 2: out of memory")
        return real(spec, **kwargs)

    monkeypatch.setattr(graph, "open_session", failing)
    monkeypatch.setattr("service.inference.session.open_session", failing)
    session = OnnxSession(
        COMMITTED_MODEL, GraphOptions(provider="cpu", pad_batches="on", buckets=(1, 2, 4, 8))
    )
    assert session.buckets == (1, 2)
    assert "2 of 4 bucket sessions created" in caplog.text and "out of memory" in caplog.text
    assert session.run(SEQUENCES[:5]).shape == (5, 40, 40, 3)  # split into runs of 2
