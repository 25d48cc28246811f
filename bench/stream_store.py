"""What keeping stream state outside the process costs: stream steps on three real servers
started side by side, ``memory``, ``redis`` + ``drain`` and ``redis`` + ``step``
(one real redis-server on loopback), measured in interleaved rounds so that all three
see the same machine load; at 4 and 16 concurrent streams, each client sending its next
frame when the last answer came. Target: ``redis`` + ``step`` step p50 at most 1.25x the
in-memory step at 4 streams on the committed model.

Where the time goes is measured beside it in this process: encoding and decoding one
stream's state blob, and a Redis round trip that writes it (save) and reads it (load).

``python -m bench.stream_store`` (``make bench-stream-store``) writes
``bench/results/stream_store.json`` and prints a summary; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.machine import describe
from bench.redis_server import running_redis
from bench.server import serve
from bench.streams import SERVER_ENV, tensor
from convlstm_card import read_card
from model_export.frames import data

# The stream bench's servers, with gRPC off: this bench steps streams over HTTP only.
BASE_ENV = {**SERVER_ENV, "CONVLSTM_GRPC_PORT": "0"}
TARGET = 1.25


async def _client(
    client: httpx.AsyncClient, frames: list[dict[str, Any]], steps: int
) -> list[float]:
    stream = (await client.post("/v1/streams", json={})).json()["stream_id"]
    out = []
    for i in range(steps):
        start = time.perf_counter()
        r = await client.post(f"/v1/streams/{stream}", json={"tensor": frames[i % len(frames)]})
        r.raise_for_status()
        out.append(time.perf_counter() - start)
    await client.delete(f"/v1/streams/{stream}")
    return out


async def burst(
    url: str, n: int, steps: int, frames: list[dict[str, Any]]
) -> tuple[list[float], float]:
    """``n`` streams stepping ``steps`` times each at once: every step's seconds, and the
    burst's wall time."""
    limits = httpx.Limits(max_connections=n + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(_client(client, frames, steps) for _ in range(n)))
        wall = time.perf_counter() - start
    return [x for r in results for x in r], wall


def components(redis_url: str, rounds: int) -> dict[str, Any]:
    """One stream's state: bytes, encode and decode, Redis save and load (ms, median)."""
    from service.streams.redis_store import RedisStore
    from service.streams.store import StoredStream, decode, encode

    card = read_card(Path("models/convlstm.json"))
    assert card.stream is not None
    state = {
        s.name: np.random.default_rng(0).standard_normal(
            tuple(int(d) for d in s.shape[1:] if isinstance(d, int)), dtype=np.float32
        )
        for s in card.stream.state
    }
    stored = StoredStream(
        "a" * 32, "convlstm", "1", "0" * 64, 1, 1, time.time(), time.time(), state
    )
    blob = encode(stored)

    def ms(f: Any) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) * 1000, 3)

    async def redis_ms() -> tuple[float, float]:
        store = RedisStore(redis_url, 5.0)
        save, load = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            await store.save(stored.id, blob, 60)
            save.append(time.perf_counter() - start)
            start = time.perf_counter()
            await store.load(stored.id)
            load.append(time.perf_counter() - start)
        await store.delete(stored.id)
        await store.close()
        return statistics.median(save) * 1000, statistics.median(load) * 1000

    save_ms, load_ms = asyncio.run(redis_ms())
    return {
        "state_bytes": sum(v.nbytes for v in state.values()),
        "blob_bytes": len(blob),
        "encode_ms": ms(lambda: encode(stored)),
        "decode_ms": ms(lambda: decode(blob, stored.id)),
        "redis_save_ms": round(save_ms, 3),
        "redis_load_ms": round(load_ms, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_store", description=__doc__)
    p.add_argument("--model", type=Path, default=Path("models/convlstm.onnx"))
    p.add_argument("--streams", type=int, nargs="+", default=[4, 16])
    p.add_argument("--steps", type=int, default=20, help="steps per stream per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per setting")
    p.add_argument("--out", type=Path, default=Path("bench/results/stream_store.json"))
    args = p.parse_args(argv)
    seq = data.generate(1, seed=data.SPLIT_SEEDS["test"], split="test", frames=30)[0]
    frames = [tensor(seq[i : i + 1]) for i in range(len(seq))]
    results: dict[str, Any] = {"machine": describe(), "load_average_at_start": os.getloadavg()}
    with ExitStack() as stack:
        redis = stack.enter_context(
            running_redis(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        )
        configs = {
            "memory": {},
            "redis_drain": {
                "CONVLSTM_STREAM_STORE": redis.url,
                "CONVLSTM_STREAM_DURABILITY": "drain",
            },
            "redis_step": {
                "CONVLSTM_STREAM_STORE": redis.url,
                "CONVLSTM_STREAM_DURABILITY": "step",
            },
        }
        servers = {
            name: stack.enter_context(serve(args.model, env={**BASE_ENV, **env}))
            for name, env in configs.items()
        }
        results["components"] = components(redis.url, 50)
        print("components:", results["components"])
        for server in servers.values():  # warm every path
            asyncio.run(burst(server.url, 2, 3, frames))
        table: dict[str, dict[int, dict[str, list[float]]]] = {
            name: {n: {"steps": [], "walls": []} for n in args.streams} for name in servers
        }
        for r in range(args.rounds):
            for n in args.streams:
                for name, server in servers.items():
                    steps, wall = asyncio.run(burst(server.url, n, args.steps, frames))
                    table[name][n]["steps"] += steps
                    table[name][n]["walls"].append(n * args.steps / wall)
            print(f"round {r + 1}/{args.rounds}, load average {os.getloadavg()[0]:.1f}")
        summary: dict[str, Any] = {}
        for n in args.streams:
            base = statistics.median(table["memory"][n]["steps"])
            base_rate = statistics.median(table["memory"][n]["walls"])
            for name in servers:
                steps = sorted(table[name][n]["steps"])
                p50 = statistics.median(steps)
                rate = statistics.median(table[name][n]["walls"])
                summary[f"{name}@{n}"] = {
                    "p50_ms": round(p50 * 1000, 2),
                    "p99_ms": round(steps[int(0.99 * (len(steps) - 1))] * 1000, 2),
                    "steps_per_s": round(rate, 1),
                    "p50_over_memory": round(p50 / base, 3),
                    "throughput_over_memory": round(rate / base_rate, 3),
                }
        results["runs"] = summary
        ratio = summary[f"redis_step@{args.streams[0]}"]["p50_over_memory"]
        results["target"] = {
            "redis_step_p50_over_memory": ratio,
            "at_streams": args.streams[0],
            "target": TARGET,
            "met": ratio <= TARGET,
        }
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
