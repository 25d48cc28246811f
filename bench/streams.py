"""Streams against the windowed graph, on the real server over loopback, in one run:

- per-frame cost: one frame into a stream against one windowed ``/predict`` (target:
  the stream step at most 1/12 of it);
- horizon 8: ``/predict`` rolled out from state against the windowed roll-out (target:
  at least 5x faster);
- memory per open stream: the server's resident memory over many open streams, against
  the card's ``state_bytes_per_stream``;
- capacity: the most concurrent streams, each sending 5 frames a second, the server
  answers with p99 latency at most 250 ms.

The client runs on the same machine and takes its share of the cores: on a small shared
machine the figures are a floor. ``python -m bench.streams`` (``make bench-streams``)
writes ``bench/results/streams.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.machine import describe
from bench.server import Server, serve
from convlstm_card import read_card
from model_export.frames import data

SERVER_ENV = {
    "CONVLSTM_SERVE_MODEL_DIR": "false",
    "CONVLSTM_MAX_STREAMS": "512",
    "CONVLSTM_MAX_QUEUE": "512",
    "CONVLSTM_MAX_BATCH_SIZE": "32",
    "CONVLSTM_ACCESS_LOG": "false",
    "CONVLSTM_LOG_LEVEL": "warning",
}
PHASES = ("per_frame", "horizon8", "memory", "capacity")
FRAME_RATE = 5.0
P99_TARGET_S = 0.250


def tensor(frames: np.ndarray) -> dict[str, Any]:
    pixels = np.rint(frames * 255).astype(np.uint8)
    return {
        "data": base64.b64encode(pixels.tobytes()).decode(),
        "dtype": "uint8",
        "shape": list(pixels.shape),
    }


def timed(client: httpx.Client, path: str, body: dict[str, Any] | None) -> float:
    return timed_in_model(client, path, body)[0]


def timed_in_model(
    client: httpx.Client, path: str, body: dict[str, Any] | None
) -> tuple[float, float]:
    """The whole request's seconds, and the seconds in the model the answer reports."""
    start = time.perf_counter()
    r = client.post(path, json=body)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed, float(r.json()["inference_ms"]) / 1000.0


def per_frame(client: httpx.Client, seq: np.ndarray, rounds: int) -> dict[str, Any]:
    """Interleaved: one windowed /predict, then one single-frame stream step."""
    stream = client.post("/v1/streams", json={}).json()["stream_id"]
    window_body = {"tensor": tensor(seq[:15])}
    frames = [{"tensor": tensor(seq[i : i + 1])} for i in range(len(seq))]
    for i in range(3):  # warm both paths
        timed(client, "/predict", window_body)
        timed(client, f"/v1/streams/{stream}", frames[i])
    window, step = [], []
    for i in range(rounds):
        window.append(timed_in_model(client, "/predict", window_body))
        step.append(timed_in_model(client, f"/v1/streams/{stream}", frames[i % len(frames)]))
    w, s = statistics.median(x for x, _ in window), statistics.median(x for x, _ in step)
    wm, sm = statistics.median(x for _, x in window), statistics.median(x for _, x in step)
    return {
        "rounds": rounds,
        "window_predict_ms_min": round(min(x for x, _ in window) * 1000, 2),
        "stream_step_ms_min": round(min(x for x, _ in step) * 1000, 2),
        "window_predict_ms_median": round(w * 1000, 2),
        "stream_step_ms_median": round(s * 1000, 2),
        "window_in_model_ms_median": round(wm * 1000, 2),
        "stream_step_in_model_ms_median": round(sm * 1000, 2),
        "in_model_step_over_window": round(sm / wm, 4),
        "step_over_window": round(s / w, 4),
        "target_step_over_window": round(1 / 12, 4),
        "met": s / w <= 1 / 12,
    }


def horizon8(client: httpx.Client, seq: np.ndarray, rounds: int) -> dict[str, Any]:
    body = {"tensor": tensor(seq[:15]), "horizon": 8}
    timed(client, "/predict", {**body, "rollout": "state"})
    timed(client, "/predict", {**body, "rollout": "window"})
    window, state = [], []
    for _ in range(rounds):
        window.append(timed_in_model(client, "/predict", {**body, "rollout": "window"}))
        state.append(timed_in_model(client, "/predict", {**body, "rollout": "state"}))
    w, s = statistics.median(x for x, _ in window), statistics.median(x for x, _ in state)
    wm, sm = statistics.median(x for _, x in window), statistics.median(x for _, x in state)
    return {
        "rounds": rounds,
        "window_ms_median": round(w * 1000, 1),
        "state_ms_median": round(s * 1000, 1),
        "window_ms_min": round(min(x for x, _ in window) * 1000, 1),
        "state_ms_min": round(min(x for x, _ in state) * 1000, 1),
        "in_model_speedup": round(wm / sm, 2),
        "speedup": round(w / s, 2),
        "target_speedup": 5.0,
        "met": w / s >= 5.0,
    }


def memory(server: Server, client: httpx.Client, seq: np.ndarray, streams: int) -> dict[str, Any]:
    frame = {"tensor": tensor(seq[:1])}
    # Warm the step path at batch 1 first, so that the arena it grows is not counted.
    warm = client.post("/v1/streams", json={}).json()["stream_id"]
    client.post(f"/v1/streams/{warm}", json=frame).raise_for_status()
    client.delete(f"/v1/streams/{warm}")
    before = server.rss_mb
    for _ in range(streams):
        sid = client.post("/v1/streams", json={}).json()["stream_id"]
        client.post(f"/v1/streams/{sid}", json=frame).raise_for_status()
    after = server.rss_mb
    card = read_card(Path("models/convlstm.json"))
    stated = card.stream.state_bytes_per_stream if card.stream else 0
    per = (after - before) * 1024 * 1024 / streams
    return {
        "streams": streams,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "measured_bytes_per_stream": int(per),
        "card_bytes_per_stream": stated,
        "measured_over_card": round(per / stated, 3) if stated else None,
    }


async def _feed(
    client: httpx.AsyncClient, stream: str, frames: list[dict[str, Any]], until: float
) -> list[float]:
    """One camera: a frame every 1/FRAME_RATE s (at once when the previous answer came
    late), each answer awaited before the next frame."""
    latencies = []
    period = 1.0 / FRAME_RATE
    next_at = time.perf_counter()
    i = 0
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        start = time.perf_counter()
        r = await client.post(f"/v1/streams/{stream}", json=frames[i % len(frames)])
        r.raise_for_status()
        latencies.append(time.perf_counter() - start)
        next_at = max(next_at + period, time.perf_counter())
        i += 1
    return latencies


async def _capacity_at(url: str, n: int, seconds: float, seq: np.ndarray) -> dict[str, Any]:
    frames = [{"tensor": tensor(seq[i : i + 1])} for i in range(len(seq))]
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        ids = [(await client.post("/v1/streams", json={})).json()["stream_id"] for _ in range(n)]
        until = time.perf_counter() + seconds
        results = await asyncio.gather(*(_feed(client, s, frames, until) for s in ids))
        for s in ids:
            await client.delete(f"/v1/streams/{s}")
    latencies = sorted(x for r in results for x in r)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    rate = len(latencies) / seconds
    return {
        "streams": n,
        "frames": len(latencies),
        "frames_per_s": round(rate, 1),
        "offered_per_s": n * FRAME_RATE,
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "met": p99 <= P99_TARGET_S and rate >= 0.9 * n * FRAME_RATE,
    }


def capacity(url: str, seconds: float, seq: np.ndarray, counts: list[int]) -> dict[str, Any]:
    steps = []
    best = 0
    for n in counts:
        result = asyncio.run(_capacity_at(url, n, seconds, seq))
        steps.append(result)
        print(f"  {n} streams: p99 {result['p99_ms']} ms, {result['frames_per_s']} frames/s")
        if result["met"]:
            best = n
        # One slow answer on a shared machine fails a count: go on until the server no
        # longer keeps up with the frames offered.
        elif result["frames_per_s"] < 0.5 * n * FRAME_RATE:
            break
    return {
        "frame_rate": FRAME_RATE,
        "p99_target_ms": P99_TARGET_S * 1000,
        "largest_met": best,
        "runs": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    p.add_argument("--model", type=Path, default=Path("models/convlstm.onnx"))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--memory-streams", type=int, default=40)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16, 24, 32])
    p.add_argument("--out", type=Path, default=Path("bench/results/streams.json"))
    p.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="which measurements to make (default: all)",
    )
    args = p.parse_args(argv)
    seq = data.generate_split(1, "test", frames=30)[0]
    results: dict[str, Any] = {
        "machine": describe(),
        "load_average_at_start": os.getloadavg(),
        "server_env": SERVER_ENV,
    }
    with serve(args.model, env=SERVER_ENV) as server, server.client() as client:
        if "per_frame" in args.phases:
            print("per-frame cost ...")
            results["per_frame"] = per_frame(client, seq, args.rounds)
            print(" ", results["per_frame"])
        if "horizon8" in args.phases:
            print("horizon 8 ...")
            results["horizon8"] = horizon8(client, seq, max(3, args.rounds // 2))
            print(" ", results["horizon8"])
        if "memory" in args.phases:
            print("memory per stream ...")
            results["memory"] = memory(server, client, seq, args.memory_streams)
            print(" ", results["memory"])
        if "capacity" in args.phases:
            print("capacity at 5 frames/s per stream ...")
            results["capacity"] = capacity(server.url, args.seconds, seq, args.streams)
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
