"""Plain vs fast ONNX graph of the ConvLSTM: time per sequence at several batch sizes.

Both graphs run on onnxruntime's CPU provider with the service's session
options, in one process, interleaved: every round times each graph once,
alternating which goes first, so that load from elsewhere on the machine
falls on both alike. The figure that matters is the ratio, fast / plain.

    python -m bench.graph [--models models] [--batches 1 8 32] [--rounds 5]

Prints a markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.workload import flops_per_sequence, sequence_shape
from convlstm_card import card_path, read_card
from model_export.host import describe_machine


@dataclass(frozen=True)
class Timing:
    """Seconds per sequence of one graph at one batch size, one figure per round."""

    per_sequence: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_sequence)

    @property
    def best(self) -> float:
        return min(self.per_sequence)


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_interleaved(
    sessions: dict[str, Any], x: NDArray[np.float32], rounds: int
) -> dict[str, Timing]:
    names = list(sessions)
    for s in sessions.values():  # warm-up: allocations, thread pool
        s.run(None, {"frames": x})
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            sessions[name].run(None, {"frames": x})
            times[name].append((time.perf_counter() - start) / len(x))
    return {name: Timing(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.graph", description=__doc__)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=5, help="timed runs of each graph per batch")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = p.parse_args(argv)

    import onnxruntime as ort

    fast_path = args.models / "convlstm.onnx"
    card = read_card(card_path(fast_path))
    graph = card.graph
    if graph is None or graph.plain is None:
        p.error(f"{card_path(fast_path)} names no plain graph; run `python -m model_export export`")
    plain = graph.plain
    sessions = {
        "plain": session(args.models / plain.file, args.threads),
        "fast": session(fast_path, args.threads),
    }
    gflop = flops_per_sequence(card) / 1e9
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    rows = []
    for batch in args.batches:
        x = rng.random((batch, *sequence_shape(card)), dtype=np.float32)
        t = time_interleaved(sessions, x, args.rounds)
        plain_t, fast_t = t["plain"], t["fast"]
        rows.append(
            f"| {batch} | {plain_t.median * 1e3:.1f} | {fast_t.median * 1e3:.1f} "
            f"| **{fast_t.median / plain_t.median:.2f}×** | {fast_t.best / plain_t.best:.2f}× "
            f"| {gflop / plain_t.median:.0f} | {gflop / fast_t.median:.0f} |"
        )
    load_after = os.getloadavg()[0]

    print(
        f"Machine: {describe_machine()}; onnxruntime {ort.__version__}, CPUExecutionProvider, "
        f"intra-op threads {args.threads or 'all'}, ORT_ENABLE_ALL; "
        f"{args.rounds} interleaved rounds per batch; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after."
    )
    print(f"Plain: {plain.file} (Loop per layer). Fast: {fast_path.name} ({graph.kind}).")
    print(f"Nominal work: {gflop:.1f} GFLOP per sequence.\n")
    print(
        "| batch | plain ms/seq (median) | fast ms/seq (median) | fast / plain "
        "| fast / plain (best runs) | plain GFLOP/s | fast GFLOP/s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
