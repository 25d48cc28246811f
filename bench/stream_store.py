"""What keeping stream state outside the process costs: stream steps on three real servers
started side by side, ``memory``, ``redis`` + ``drain`` and ``redis`` + ``step``
(one real redis-server on loopback), measured in interleaved rounds so that all three
see the same machine load; at 4 and 16 concurrent streams, each client sending its next
frame when the last answer came. Target: ``redis`` + ``step`` step p50 at most 1.25x the
in-memory step at 4 streams on the committed model.

Where the time goes is measured beside it in this process: encoding and decoding one
stream's state blob, a Redis round trip that writes it as the store does (a SET to a
staging key and a script that renames it in place, pipelined), the same write with the
blob as a Lua script's argument (the store's earlier way, for comparison), and a read.

A section of ``make bench`` (``bench.suite``; ``--smoke`` at a size that takes seconds),
and on its own ``python -m bench.stream_store [--smoke]`` (``make bench-stream-store``):
``bench/results/stream_store.json`` and ``.md``; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.machine import describe
from bench.record import write_record
from bench.redis_server import REDIS_SERVER, running_redis
from bench.server import REPO, serve
from bench.streams import SERVER_ENV, tensor
from convlstm_card import read_card
from model_export.frames import data

# The stream bench's servers, with gRPC off: this bench steps streams over HTTP only.
BASE_ENV = {**SERVER_ENV, "CONVLSTM_GRPC_PORT": "0"}
TARGET = 1.25
MODEL = REPO / "models" / "convlstm.onnx"

# The store's write before it staged the blob: the blob a script argument, copied into
# Lua and again into a hash field. Measured beside today's write, not used by the store.
LUA_ARGUMENT_WRITE = """
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'blob', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Plan:
    streams: tuple[int, ...]
    steps: int
    """Steps per stream per round."""
    rounds: int
    """Interleaved rounds per setting."""
    component_rounds: int
    env: tuple[tuple[str, str], ...] = ()
    """More server settings."""


FULL = Plan(streams=(4, 16), steps=20, rounds=5, component_rounds=50)
# No warm-up of every batch size: three servers start in seconds, not minutes.
SMOKE = Plan(
    streams=(2,), steps=3, rounds=1, component_rounds=3, env=(("CONVLSTM_WARMUP_RUNS", "0"),)
)


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

    async def redis_ms() -> tuple[float, float, float]:
        import redis.asyncio as aioredis

        store = RedisStore(redis_url, 5.0)
        plain = aioredis.Redis.from_url(redis_url)
        save, load, lua = [], [], []
        for _ in range(rounds):  # the three interleaved
            start = time.perf_counter()
            await store.save(stored.id, blob, 60)
            save.append(time.perf_counter() - start)
            start = time.perf_counter()
            await store.load(stored.id)
            load.append(time.perf_counter() - start)
            start = time.perf_counter()
            await plain.eval(LUA_ARGUMENT_WRITE, 1, "bench:lua-argument", 1, blob, 60_000)
            lua.append(time.perf_counter() - start)
        await store.delete(stored.id)
        await plain.delete("bench:lua-argument")
        await plain.aclose()
        await store.close()
        return tuple(statistics.median(x) * 1000 for x in (save, load, lua))  # type: ignore[return-value]

    save_ms, load_ms, lua_ms = asyncio.run(redis_ms())
    return {
        "state_bytes": sum(v.nbytes for v in state.values()),
        "blob_bytes": len(blob),
        "encode_ms": ms(lambda: encode(stored)),
        "decode_ms": ms(lambda: decode(blob, stored.id)),
        "redis_save_ms": round(save_ms, 3),
        "redis_load_ms": round(load_ms, 3),
        "redis_lua_argument_write_ms": round(lua_ms, 3),
    }


def run(plan: Plan, smoke: bool = False, model: Path = MODEL) -> dict[str, Any]:
    """The section's record; ``{"skipped": why}`` where Debian's redis-server is missing."""
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": smoke,
        "machine": describe(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if not Path(REDIS_SERVER).is_file():
        return {**results, "skipped": "redis-server is not installed (make stream-tools)"}
    seq = data.generate_split(1, "test", frames=30)[0]
    frames = [tensor(seq[i : i + 1]) for i in range(len(seq))]
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
            name: stack.enter_context(serve(model, env={**BASE_ENV, **dict(plan.env), **env}))
            for name, env in configs.items()
        }
        results["components"] = components(redis.url, plan.component_rounds)
        print("components:", results["components"])
        for server in servers.values():  # warm every path
            asyncio.run(burst(server.url, 2, 3, frames))
        table: dict[str, dict[int, dict[str, list[float]]]] = {
            name: {n: {"steps": [], "walls": []} for n in plan.streams} for name in servers
        }
        names = list(servers)
        for r in range(plan.rounds):
            # Each round starts with the next setting: none always runs first or last.
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in plan.streams:
                for name in order:
                    server = servers[name]
                    steps, wall = asyncio.run(burst(server.url, n, plan.steps, frames))
                    table[name][n]["steps"] += steps
                    table[name][n]["walls"].append(n * plan.steps / wall)
            print(f"round {r + 1}/{plan.rounds}, load average {os.getloadavg()[0]:.1f}")
    summary: dict[str, Any] = {}
    for n in plan.streams:
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
    ratio = summary[f"redis_step@{plan.streams[0]}"]["p50_over_memory"]
    results["target"] = {
        "redis_step_p50_over_memory": ratio,
        "at_streams": plan.streams[0],
        "target": TARGET,
        "met": ratio <= TARGET,
    }
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    title = f"# Stream state in Redis: what it costs ({results['date']})"
    if "skipped" in results:
        return f"{title}\n\nSkipped: {results['skipped']}.\n"
    c, t = results["components"], results["target"]
    lines = [
        title,
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['provider']}, onnxruntime {m['onnxruntime']}; "
        f"load average {results['load_average_at_start'][0]} at the start, "
        f"{results['load_average_at_end'][0]} at the end. Step p50 and throughput as ratios "
        "to the in-memory server in the same interleaved rounds."
        + (" **Smoke run: the figures mean nothing.**" if results["smoke"] else ""),
        "",
        "| streams | store | step p50 ms | p99 ms | steps/s | p50 / memory | steps/s / memory |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, r in results["runs"].items():
        name, n = key.split("@")
        lines.append(
            f"| {n} | {name} | {r['p50_ms']} | {r['p99_ms']} | {r['steps_per_s']} | "
            f"{r['p50_over_memory']} | {r['throughput_over_memory']} |"
        )
    lines += [
        "",
        f"Target: `redis` + `step` p50 at most {t['target']}x the in-memory step at "
        f"{t['at_streams']} streams: {t['redis_step_p50_over_memory']}x, "
        f"{'met' if t['met'] else 'not met'}.",
        "",
        f"One stream's state: {c['state_bytes']:,} bytes in a {c['blob_bytes']:,}-byte blob; "
        f"encode {c['encode_ms']} ms, decode {c['decode_ms']} ms; Redis write (staged SET "
        f"and rename) {c['redis_save_ms']} ms, the same blob as a Lua argument "
        f"{c['redis_lua_argument_write_ms']} ms, read {c['redis_load_ms']} ms (medians).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_store", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="seconds-long run: figures mean nothing")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    write_record(args.out, "stream_store", run(SMOKE if args.smoke else FULL, args.smoke), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
