"""This project's server beside MLServer, KServe and BentoML, ``make bench-peers``: the
same model, the same session (onnxruntime, 2 intra-op threads, no spinning), the same
real test sequence, on loopback.

    python -m bench.peers.run [--rounds 3] [--requests 150] [--slow-requests 12]
        [--concurrency 1 8 32] [--peers mlserver kserve bentoml] [--out bench/results]

Each server is started in turn from its own venv (``.venv-peers/NAME``, made by ``make
bench-peers``) and every answer is checked against raw onnxruntime before any load.
Then, in each round, for each model and concurrency: wait (bounded) for a quiet
machine, run raw onnxruntime in this process at that concurrency (the baseline), and
drive every arm with a closed loop of a bounded number of requests, the arms' order
rotating from round to round. Figures per arm: req/s, p50, p99, the server's CPU per
request (its whole process tree, ``/proc``), and req/s over raw onnxruntime's in the
same round. Writes ``peers.json``, ``peers.md`` and ``peers.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.load import closed_loop
from bench.machine import describe
from bench.peers.report import RAW, markdown, plot, summarise, targets
from bench.peers.runtimes.onnx_session import session
from bench.peers.servers import (
    PEER_LABELS,
    PEERS,
    Arm,
    ModelInput,
    installed,
    model_input,
    peer_version,
    scratch,
    start_arms,
    tree_cpu_seconds,
)
from bench.server import REPO
from bench.workload import test_sequence

MODELS = {
    "cnn_lstm": REPO / "models" / "cnn_lstm.onnx",
    "convlstm": REPO / "models" / "convlstm.onnx",
}
# The ConvLSTM takes ~140 ms a sequence here: it gets fewer requests per cell.
SLOW = {"convlstm"}
# Max. absolute difference from raw onnxruntime an answer may have (float32 outputs in
# [0, 1]; the project may batch, which changes summation order, never more than this).
ATOL = 1e-4


class AnswerMismatch(AssertionError):
    """A server's answer differs from raw onnxruntime's on the same input."""


def check_answer(
    label: str, got: NDArray[np.float32], want: NDArray[np.float32], atol: float = ATOL
) -> float:
    """The largest difference of ``got`` from ``want``; raises when shapes differ or
    it is over ``atol``."""
    if got.shape != want.shape:
        raise AnswerMismatch(f"{label}: shape {got.shape}, raw onnxruntime {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not diff <= atol:
        raise AnswerMismatch(f"{label}: differs from raw onnxruntime by {diff:.3g} > {atol}")
    return diff


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over ``seconds`` (/proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(max_wait: float, threshold: float) -> dict[str, float]:
    """Wait until the machine (this process idle, the servers idle) keeps under
    ``threshold`` cores busy, at most ``max_wait`` s. Busy cores over a second, not the
    1-minute load average, decide: the block just measured holds the load average up
    for a minute. Both are recorded."""
    start = time.monotonic()
    busy = busy_cores()
    while busy > threshold and time.monotonic() - start < max_wait:
        busy = busy_cores()
    return {
        "load1": round(os.getloadavg()[0], 2),
        "busy_cores": round(busy, 2),
        "waited_s": round(time.monotonic() - start, 1),
    }


def raw_cell(m: ModelInput, sess: Any, concurrency: int, requests: int) -> dict[str, float | int]:
    """Raw onnxruntime in this process: ``concurrency`` threads each running one
    sequence after another on the shared session, ``requests`` runs in all."""
    feed = {m.input_name: m.batch}
    sess.run(None, feed)
    latencies: list[float] = []
    issued = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= requests:
                    return
                issued += 1
            t = time.perf_counter()
            sess.run(None, feed)
            latencies.append(1000.0 * (time.perf_counter() - t))

    cpu, start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "ok": len(latencies),
        "errors": 0,
        "rps": len(latencies) / seconds,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "cpu_ms_per_request": 1000.0 * (time.process_time() - cpu) / max(len(latencies), 1),
    }


def arm_cell(arm: Arm, m: ModelInput, concurrency: int, requests: int) -> dict[str, Any]:
    """A closed loop of ``requests`` on one arm after a short warm-up; the server's
    process-tree CPU over the requests it answered 200."""
    req = arm.requests[m.name]
    warm = min(concurrency, 8)
    load = {"path": req.path, "headers": req.headers, "max_seconds": 300.0}
    closed_loop(arm.url, req.body, concurrency=warm, max_requests=warm, **load)  # type: ignore[arg-type]
    cpu = tree_cpu_seconds(arm.pid)
    result = closed_loop(arm.url, req.body, concurrency=concurrency, max_requests=requests, **load)  # type: ignore[arg-type]
    used = tree_cpu_seconds(arm.pid) - cpu
    return {
        "requests": requests,
        "ok": result.ok,
        "errors": requests - result.ok,
        # Which errors: a 504 is the server's own deadline, a 503 its full queue.
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "transport_errors": result.transport_errors,
        "rps": result.throughput,
        "p50_ms": result.percentile(50),
        "p99_ms": result.percentile(99),
        "cpu_ms_per_request": 1000.0 * used / max(result.ok, 1),
    }


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def check_arms(
    arms: list[Arm], models: list[ModelInput], sessions: dict[str, Any]
) -> dict[str, float]:
    """Every arm's answer for every model it serves, against raw onnxruntime."""
    worst: dict[str, float] = {}
    with httpx.Client(timeout=120) as client:
        for m in models:
            (want,) = sessions[m.name].run(None, {m.input_name: m.batch})
            for arm in arms:
                if m.name not in arm.requests:
                    continue
                req = arm.requests[m.name]
                r = client.post(arm.url + req.path, content=req.body, headers=req.headers)
                label = f"{arm.name} on {m.name}"
                if r.status_code != 200:
                    raise AnswerMismatch(f"{label}: HTTP {r.status_code}: {r.text[:300]}")
                worst[label] = check_answer(label, arm.decode(r), want)
    return worst


def versions(peers: list[str]) -> dict[str, str]:
    import importlib.metadata as md

    out = {
        "this project": md.version("convlstm-serve") if _has("convlstm-serve") else "checkout",
        **{name: md.version(name) for name in ("uvicorn", "fastapi", "onnxruntime", "orjson")},
    }
    out |= {PEER_LABELS[p]: peer_version(p) for p in peers}
    return out


def _has(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


def write_report(
    args: argparse.Namespace,
    answers: dict[str, float],
    blocks: list[dict[str, Any]],
    cells: list[dict[str, Any]],
    rounds: int,
) -> str:
    """``peers.json``, ``peers.md`` and ``peers.png`` under ``args.out``; the Markdown."""
    summary = summarise(cells)
    report = {
        "machine": describe() | {"shared": True},
        "versions": versions(args.peers),
        "settings": {
            "rounds": rounds,
            "requests": args.requests,
            "slow_requests": args.slow_requests,
            "concurrency": args.concurrency,
            "models": args.models,
            "session": "onnxruntime CPU, 2 intra-op threads, spinning off, ORT_ENABLE_ALL",
            "answer_tolerance": ATOL,
        },
        "answers_max_abs_diff": answers,
        "load_seen": blocks,
        "cells": cells,
        "summary": summary,
        "targets": targets(cells),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (args.out / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "peers.md").write_text(text)
    plot(summary, args.out / "peers.png")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.run", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=150, help="per cell, fast models")
    ap.add_argument("--slow-requests", type=int, default=12, help="per cell, the ConvLSTM")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--max-wait", type=float, default=30.0, help="s, for a quiet machine")
    ap.add_argument("--quiet-cores", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    missing = [p for p in args.peers if not installed(p)]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (make bench-peers installs them)")
    models = [model_input(MODELS[n], test_sequence(MODELS[n])) for n in args.models]
    sessions = {m.name: session(str(m.path)) for m in models}
    cells: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    text = ""
    with scratch() as tmp, ExitStack() as stack:
        arms = start_arms(stack, models, args.peers, Path(tmp), floor="cnn_lstm" in args.models)
        answers = check_arms(arms, models, sessions)
        print(f"answers checked: worst difference {max(answers.values()):.2g}", flush=True)
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for m in models:
                n = args.slow_requests if m.name in SLOW else args.requests
                for c in args.concurrency:
                    count = max(n, c)
                    seen = wait_quiet(args.max_wait, args.quiet_cores)
                    blocks.append({"round": r, "model": m.name, "concurrency": c, **seen})
                    key = {"round": r, "model": m.name, "concurrency": c}
                    raw = raw_cell(m, sessions[m.name], c, count)
                    cells.append({**key, "arm": RAW, **raw})
                    for arm in order:
                        if m.name in arm.requests:
                            got = arm_cell(arm, m, c, count)
                            cells.append({**key, "arm": arm.name, **got})
                    print(
                        f"round {r + 1}/{args.rounds} {m.name} c={c}: load {seen['load1']}, "
                        f"busy {seen['busy_cores']} cores, raw {raw['rps']:.1f}/s",
                        flush=True,
                    )
            # Written after every round, so a run cut short still leaves its rounds.
            text = write_report(args, answers, blocks, cells, r + 1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
