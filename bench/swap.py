"""Swapping model versions under load, and what repeated loads cost in memory.

    python -m bench.swap [--swaps 5] [--cycles 20] [--concurrency 8] [--seconds 20]
                         [--graph models/cnn_lstm.onnx] [--out bench/results]

The real server serves a repository in Triton's layout (``convlstm/VERSION/model.onnx``,
the default model, and ``spare/1/model.onnx``) with ``CONVLSTM_MODEL_CONTROL=explicit``.

1. Baseline: a closed loop of ``concurrency`` clients sends Open Inference Protocol
   requests (binary tensors) to the default model for ``seconds``.
2. Swaps: the same load runs while, ``swaps`` times in a row, a new version directory is
   added and ``POST /v2/repository/models/convlstm/load`` called; each swap lasts from
   that call until the index shows the old version released. Every answer must be a
   200; the p99 of the requests that overlapped a swap is reported against the
   baseline's. The server's RSS is sampled every 20 ms: before, at its peak (two
   versions loaded at once), after.
3. Cycles: ``spare`` is unloaded and loaded again ``cycles`` times (no traffic); the
   RSS after the last cycle must not exceed the RSS after the first by 5% or more.

The server runs with ``MALLOC_ARENA_MAX=2`` unless ``--arena-max ""``: every load starts
new threads (the scheduler's, onnxruntime's), and glibc gives new threads new malloc
arenas, up to eight per core, each keeping the pages it once held. Without the cap the
RSS climbs in steps of one session's size until that many arenas exist, then stays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.machine import describe
from bench.server import REPO, rss_mb, serve
from bench.workload import oip_binary_request
from convlstm_card import card_path, read_card

MEMORY_GROWTH_LIMIT = 0.05
DEFAULT = "convlstm"
SPARE = "spare"


def add_version(repository: Path, name: str, version: int, graph: Path) -> None:
    """``repository/name/version/model.onnx`` and its card, copied from ``graph``."""
    directory = repository / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(graph, directory / "model.onnx")
    shutil.copy(card_path(graph), directory / "model.json")


@dataclass(frozen=True)
class Answer:
    start: float
    seconds: float
    status: int
    version: str


@dataclass
class ClosedLoop:
    """``concurrency`` threads, each with its own connection, each sending its next
    request when the last is answered, until stopped or ``max_requests`` are sent."""

    url: str
    model: str
    body: bytes
    headers: dict[str, str]
    concurrency: int
    max_requests: int = 10**9
    answers: list[Answer] = field(default_factory=list)
    transport_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _issued: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._issued >= self.max_requests:
                return False
            self._issued += 1
            return True

    def _worker(self) -> None:
        path = f"/v2/models/{self.model}/infer"
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while self._take():
                start = time.perf_counter()
                try:
                    r = client.post(path, content=self.body, headers=self.headers)
                except httpx.TransportError:
                    self.transport_errors += 1
                    continue
                seconds = time.perf_counter() - start
                version = ""
                if r.status_code == 200:
                    n = int(r.headers["inference-header-content-length"])
                    version = json.loads(r.content[:n])["model_version"]
                self.answers.append(Answer(start, seconds, r.status_code, version))

    @contextmanager
    def running(self) -> Iterator[ClosedLoop]:
        threads = [threading.Thread(target=self._worker) for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in threads:
                t.join()


def request_for(graph: Path) -> tuple[bytes, dict[str, str]]:
    card = read_card(card_path(graph))
    shape = (1, *(int(d) for d in card.input.shape[1:]))
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    return oip_binary_request(card.input.name, card.output.name, batch)


def wait_released(client: httpx.Client, within: float = 60.0) -> None:
    """Until the repository index shows no version being drained."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = client.post("/v2/repository/index").json()
        if not any(row["state"] == "UNLOADING" for row in rows):
            return
        time.sleep(0.01)
    raise TimeoutError(f"a version was still draining after {within} s")


def swap(client: httpx.Client, repository: Path, version: int, graph: Path) -> tuple[float, float]:
    """Add ``version`` of the default model and load it; the seconds the load call took
    and the seconds until the old version was released."""
    add_version(repository, DEFAULT, version, graph)
    start = time.perf_counter()
    r = client.post(f"/v2/repository/models/{DEFAULT}/load", json={})
    if r.status_code != 200:
        raise RuntimeError(f"load of version {version} answered {r.status_code}: {r.text}")
    loaded = time.perf_counter() - start
    wait_released(client)
    return loaded, time.perf_counter() - start


class RssSampler:
    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid))
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def p99_ms(seconds: list[float]) -> float:
    if len(seconds) < 2:
        return float("nan")
    return statistics.quantiles(seconds, n=100, method="inclusive")[98] * 1000.0


def summary(answers: list[Answer]) -> dict[str, Any]:
    seconds = [a.seconds for a in answers]
    return {
        "requests": len(answers),
        "statuses": {str(k): v for k, v in sorted(Counter(a.status for a in answers).items())},
        "p50_ms": round(statistics.median(seconds) * 1000.0, 2) if seconds else None,
        "p99_ms": round(p99_ms(seconds), 2),
    }


def measure(
    graph: Path, swaps: int, cycles: int, concurrency: int, seconds: float, arena_max: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        add_version(repository, DEFAULT, 1, graph)
        add_version(repository, SPARE, 1, graph)
        env = {"CONVLSTM_MODEL_CONTROL": "explicit", "CONVLSTM_ACCESS_LOG": "false"}
        if arena_max:
            env["MALLOC_ARENA_MAX"] = arena_max
        body, headers = request_for(graph)
        with serve(repository / DEFAULT, env=env) as server, server.client() as client:

            def load() -> ClosedLoop:
                return ClosedLoop(server.url, DEFAULT, body, headers, concurrency)

            with load().running():  # warm-up: arenas grow to the load's batch sizes
                time.sleep(3.0)
            with load().running() as baseline:
                time.sleep(seconds)
            rss_before = server.rss_mb
            windows: list[tuple[float, float]] = []
            timings: list[dict[str, float]] = []
            with RssSampler(server.process.pid) as rss, load().running() as swapping:
                time.sleep(1.0)
                for i in range(swaps):
                    begin = time.perf_counter()
                    loaded, released = swap(client, repository, i + 2, graph)
                    windows.append((begin, time.perf_counter()))
                    timings.append(
                        {"load_call_s": round(loaded, 3), "released_after_s": round(released, 3)}
                    )
                    print(f"swap {i + 1}: loaded in {loaded:.2f} s, released in {released:.2f} s")
                    time.sleep(1.0)
            rss_after = server.rss_mb
            during = [
                a
                for a in swapping.answers
                if any(a.start < end and a.start + a.seconds > begin for begin, end in windows)
            ]
            rss_cycles: list[float] = []
            for _ in range(cycles):
                r = client.post(f"/v2/repository/models/{SPARE}/unload")
                assert r.status_code == 200, r.text
                wait_released(client)
                r = client.post(f"/v2/repository/models/{SPARE}/load")
                assert r.status_code == 200, r.text
                rss_cycles.append(round(server.rss_mb, 1))
    failures = sum(1 for a in baseline.answers + swapping.answers if a.status != 200)
    failures += baseline.transport_errors + swapping.transport_errors
    growth = (rss_cycles[-1] - rss_cycles[0]) / rss_cycles[0] if rss_cycles else 0.0
    # A leak grows with every cycle; the slope over all cycles tells it from one step.
    slope = float(np.polyfit(range(len(rss_cycles)), rss_cycles, 1)[0]) if cycles > 1 else 0.0
    base_p99 = p99_ms([a.seconds for a in baseline.answers])
    swap_p99 = p99_ms([a.seconds for a in during])
    versions = Counter(a.version for a in swapping.answers)
    return {
        # Whether other work shared the machine: the 1-minute load average at the end.
        "machine": {**describe(), "load_average_1min": round(os.getloadavg()[0], 2)},
        "graph": str(graph.relative_to(REPO) if graph.is_relative_to(REPO) else graph),
        "concurrency": concurrency,
        "malloc_arena_max": arena_max or "glibc default",
        "baseline": summary(baseline.answers),
        "during_swaps": summary(during),
        "whole_swap_phase": summary(swapping.answers),
        "answers_by_version": dict(sorted(versions.items())),
        "non_200": failures,
        "p99_ratio": round(swap_p99 / base_p99, 3),
        "swaps": timings,
        "rss_mb": {
            "before_swaps": round(rss_before, 1),
            "peak_during_swaps": round(max(rss.samples), 1),
            "after_swaps": round(rss_after, 1),
        },
        "rss_mb_per_cycle": rss_cycles,
        "rss_growth_first_to_last_cycle": round(growth, 4),
        "rss_mb_per_cycle_slope": round(slope, 3),
        # As the soak test: memory that shrinks is no leak.
        "passed": failures == 0 and growth < MEMORY_GROWTH_LIMIT,
    }


def markdown(report: dict[str, Any]) -> str:
    m, rss = report["machine"], report["rss_mb"]
    b, d = report["baseline"], report["during_swaps"]
    cycles = report["rss_mb_per_cycle"]
    return (
        f"Swap under load: {len(report['swaps'])} version swaps of `{report['graph']}` at "
        f"concurrency {report['concurrency']}, on {m['cpu']} ({m['cores']} cores, 1-minute "
        f"load average {m['load_average_1min']} at the end), {m['provider']}, "
        f"MALLOC_ARENA_MAX {report['malloc_arena_max']}.\n\n"
        "| | requests | statuses | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |\n"
        f"| without a swap | {b['requests']} | {b['statuses']} | {b['p50_ms']} | {b['p99_ms']} |\n"
        f"| overlapping a swap | {d['requests']} | {d['statuses']} | {d['p50_ms']} | "
        f"{d['p99_ms']} |\n\n"
        f"Non-200 answers: {report['non_200']}; p99 during a swap / without: "
        f"{report['p99_ratio']}x; answers by version: {report['answers_by_version']}.\n"
        f"Load call and release (s): "
        + ", ".join(f"{s['load_call_s']} / {s['released_after_s']}" for s in report["swaps"])
        + f".\nRSS: {rss['before_swaps']} MB before, {rss['peak_during_swaps']} MB at the peak "
        f"(two versions loaded), {rss['after_swaps']} MB after.\n"
        f"Unload/load cycles of a second model: RSS {cycles[0]} MB after the first, "
        f"{cycles[-1]} MB after cycle {len(cycles)} "
        f"({report['rss_growth_first_to_last_cycle']:+.2%}; fitted slope "
        f"{report['rss_mb_per_cycle_slope']:+.2f} MB per cycle); "
        f"{'passed' if report['passed'] else 'FAILED'}.\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--graph", type=Path, default=REPO / "models" / "cnn_lstm.onnx")
    p.add_argument("--swaps", type=int, default=5)
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="baseline load, seconds")
    p.add_argument(
        "--arena-max", default="2", help="the server's MALLOC_ARENA_MAX; \"\" for glibc's"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    report = measure(
        args.graph, args.swaps, args.cycles, args.concurrency, args.seconds, args.arena_max
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "swap" if args.arena_max else "swap_glibc_arenas"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
