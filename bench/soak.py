"""The soak test: the real server under steady load for minutes, on loopback.

    python -m bench.soak [--minutes 5] [--concurrency 4] [--out bench/results]

Reports requests served, answers by status, p99 latency per window and the server's
resident memory at the start and the end. A warm-up of the same load runs first, not
counted: onnxruntime's memory arena grows to the batch sizes the load produces and then
stays. Passes when every answer, warm-up included, is a 200 and memory grew by less
than 5% from the end of the warm-up to the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.load import closed_loop
from bench.machine import describe
from bench.server import REPO, serve
from bench.workload import example_frames

MEMORY_GROWTH_LIMIT = 0.05
# One log line per request would only slow the measured server down.
QUIET = {"CONVLSTM_ACCESS_LOG": "false"}


def soak(
    model: Path,
    minutes: float,
    concurrency: int,
    window_s: float,
    horizon: int,
    warmup_s: float = 60.0,
) -> dict[str, Any]:
    body = {"frames": example_frames(model), "horizon": horizon}
    windows: list[dict[str, Any]] = []
    with serve(model, env=QUIET) as server:
        rss_start = server.rss_mb
        warmup = closed_loop(
            server.url, body, concurrency=concurrency, max_requests=10**9, max_seconds=warmup_s
        ).summary()
        rss_warm = server.rss_mb
        print(f"warm-up: {warmup['ok']} ok, statuses {warmup['statuses']}", flush=True)
        end = time.monotonic() + minutes * 60.0
        while time.monotonic() < end:
            span = min(window_s, end - time.monotonic())
            result = closed_loop(
                server.url, body, concurrency=concurrency, max_requests=10**9, max_seconds=span
            )
            windows.append({**result.summary(), "rss_mb": round(server.rss_mb, 1)})
            w = windows[-1]
            print(
                f"window {len(windows)}: {w['ok']} ok, statuses {w['statuses']}, "
                f"p99 {w['p99_ms']} ms, rss {w['rss_mb']} MB",
                flush=True,
            )
    statuses: dict[str, int] = {}
    for w in windows:
        for k, v in w["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    errors = (
        sum(v for k, v in statuses.items() if k != "200")
        + sum(w["transport_errors"] for w in windows)
        + (warmup["requests"] - warmup["ok"])
    )
    baseline = round(rss_warm, 1)
    growth = (windows[-1]["rss_mb"] - baseline) / baseline
    return {
        "machine": describe(),
        "model": str(model.relative_to(REPO) if model.is_relative_to(REPO) else model),
        "minutes": minutes,
        "concurrency": concurrency,
        "horizon": horizon,
        "requests_ok": sum(w["ok"] for w in windows),
        "statuses": statuses,
        "unexpected_errors": errors,
        "warmup_seconds": warmup_s,
        "warmup": warmup,
        "rss_mb_at_start": round(rss_start, 1),
        "rss_mb_after_warmup": baseline,
        "rss_mb_at_end": windows[-1]["rss_mb"],
        "memory_growth": round(growth, 4),
        "passed": errors == 0 and growth < MEMORY_GROWTH_LIMIT,
        "windows": windows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Soak: {report['minutes']} min at concurrency {report['concurrency']}, horizon "
        f"{report['horizon']}, on {report['machine']['cpu']} ({report['machine']['cores']} "
        f"cores), {report['machine']['provider']}.",
        "",
        "| window | ok | statuses | p99 ms | RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, w in enumerate(report["windows"], 1):
        lines.append(f"| {i} | {w['ok']} | {w['statuses']} | {w['p99_ms']} | {w['rss_mb']} |")
    lines += [
        "",
        f"Requests served: {report['requests_ok']}; unexpected errors: "
        f"{report['unexpected_errors']}; RSS {report['rss_mb_at_start']} MB at start, "
        f"{report['rss_mb_after_warmup']} MB after the {report['warmup_seconds']:g} s warm-up, "
        f"{report['rss_mb_at_end']} MB at the end ({report['memory_growth']:+.2%}); "
        f"{'passed' if report['passed'] else 'FAILED'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=REPO / "models" / "convlstm.onnx")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--window", type=float, default=30.0, help="seconds per reporting window")
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of uncounted load first")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    report = soak(
        args.model, args.minutes, args.concurrency, args.window, args.horizon, args.warmup
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
