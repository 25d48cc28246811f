"""The serving path against the simulated device (``CONVLSTM_PROVIDER=simulated``): a fast
accelerator of known speed, 80 ms + 2 ms per item per run, max batch 16, so that what is
measured is the server's share. One run, one machine, every figure beside its baseline:

1. **Against the ideal** (one worker): requests/s at 1, 16 and 64 clients over the Open
   Inference Protocol's binary tensors and ``POST /predict`` with PNG frames, as a ratio
   of the device's ideal ``min(c, 16) / (80 + 2 * bucket)`` ms; p50 at 1 client beside
   80 + 2 + 5 ms. Target: >= 0.8 of the ideal at 16 and 64 clients.
2. **A change of batch size that costs 700 ms** (``CONVLSTM_SIMULATED_SHAPE_CHANGE_MS``,
   what onnxruntime's CUDA provider pays to rebuild its Conv plans), with one and two
   workers: OIP binary at 4, 16 and 64 clients, ``/predict`` with horizon 3 from 8
   clients, and 8 streams stepping at once, each as a ratio of the same server with no
   change cost. Target: >= 0.9. Beside it, at 16 clients, the path before (one session,
   ``CONVLSTM_PAD_BATCHES=off``, no wait for the cohort) and each fix alone.

Load comes from ``wrk`` (Debian's package; C, one thread per core) where it is installed,
else from the Python generator (``bench.load``), which is then named as the generator;
streams are driven by the Python generator (8 clients). ``python -m bench.sim`` writes
``bench/results/sim.json`` and ``sim.md``; ``bench.suite`` runs it as its ``sim`` section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import wrk
from bench.load import LoadResult, closed_loop
from bench.machine import describe
from bench.record import write_record
from bench.server import REPO, serve
from bench.workload import example_frames, oip_binary_request
from convlstm_card import card_path, read_card

MODEL = REPO / "models" / "convlstm.onnx"
BATCH_MS, ITEM_MS, MAX_BATCH = 80.0, 2.0, 16
CHANGE_MS = 700.0
P50_SLACK_MS = 5.0


@dataclass(frozen=True)
class SimPlan:
    seconds: float
    clients: tuple[int, ...]
    change_clients: tuple[int, ...]
    workers: tuple[int, ...]
    horizon_clients: int
    streams: int
    change_ms: float


FULL = SimPlan(8.0, (1, 16, 64), (4, 16, 64), (1, 2), 8, 8, CHANGE_MS)
SMOKE = SimPlan(1.0, (1, 4), (4,), (1,), 2, 2, 50.0)


def bucket(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return min(size, MAX_BATCH)


def ideal_rps(clients: int) -> float:
    """The device's rate with every run as full as the clients allow (one worker)."""
    n = min(clients, MAX_BATCH)
    return n / ((BATCH_MS + ITEM_MS * bucket(n)) / 1000.0)


def server_env(
    workers: int, change_ms: float, pad: str = "auto", cohort: str = "0.25"
) -> dict[str, str]:
    return {
        "CONVLSTM_BATCH_COHORT_WAIT": cohort,
        "CONVLSTM_PROVIDER": "simulated",
        "CONVLSTM_SIMULATED_ALLOWED": "true",
        "CONVLSTM_SIMULATED_BATCH_MS": str(BATCH_MS),
        "CONVLSTM_SIMULATED_ITEM_MS": str(ITEM_MS),
        "CONVLSTM_SIMULATED_SHAPE_CHANGE_MS": str(change_ms),
        "CONVLSTM_MAX_BATCH_SIZE": str(MAX_BATCH),
        "CONVLSTM_INFERENCE_WORKERS": str(workers),
        "CONVLSTM_PAD_BATCHES": pad,
        "CONVLSTM_MAX_QUEUE": "512",
        "CONVLSTM_MAX_STREAMS": "64",
        "CONVLSTM_SERVE_MODEL_DIR": "false",
        "CONVLSTM_ACCESS_LOG": "false",
        "CONVLSTM_LOG_LEVEL": "warning",
    }


@dataclass(frozen=True)
class Bodies:
    oip: tuple[bytes, dict[str, str]]
    png: bytes
    horizon3: bytes
    frame: dict[str, Any]


def bodies(model: Path) -> Bodies:
    card = read_card(card_path(model))
    shape = tuple(int(d) for d in card.input.shape[1:])
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    frames = example_frames(model)
    return Bodies(
        oip_binary_request(card.input.name, card.output.name, x),
        json.dumps({"frames": frames}).encode(),
        json.dumps({"frames": frames, "horizon": 3}).encode(),
        {"frames": frames[:1]},
    )


def drive(
    url: str, path: str, body: bytes, headers: dict[str, str], c: int, s: float
) -> LoadResult:
    if wrk.available():
        return wrk.run(url, body, headers, connections=c, seconds=s, path=path)
    return closed_loop(
        url, body, concurrency=c, max_requests=10**6, max_seconds=s, path=path, headers=headers
    )


async def _streams(url: str, n: int, seconds: float, frame: dict[str, Any]) -> LoadResult:
    """``n`` streams, each a client sending its next frame as soon as the last is answered."""
    result = LoadResult(n, seconds)
    limits = httpx.Limits(max_connections=n + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        ids = [(await client.post("/v1/streams", json={})).json()["stream_id"] for _ in range(n)]
        until = time.perf_counter() + seconds

        async def feed(stream: str) -> None:
            while time.perf_counter() < until:
                start = time.perf_counter()
                r = await client.post(f"/v1/streams/{stream}", json=frame)
                result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
                result.statuses[r.status_code] += 1

        start = time.perf_counter()
        await asyncio.gather(*(feed(s) for s in ids))
        result.seconds = time.perf_counter() - start
        for s in ids:
            await client.delete(f"/v1/streams/{s}")
    return result


def point(name: str, clients: int, r: LoadResult, **extra: Any) -> dict[str, Any]:
    row = {"path": name, **r.summary(), **extra}
    row["clients"] = clients
    print(
        f"  {name} c={clients}: {row['throughput_rps']} req/s, p50 {row['p50_ms']} ms", flush=True
    )
    return row


def against_ideal(plan: SimPlan, b: Bodies) -> dict[str, Any]:
    rows = []
    with serve(MODEL, env=server_env(1, 0.0)) as server:
        for c in plan.clients:
            r = drive(server.url, "/v2/models/convlstm/infer", *b.oip, c, plan.seconds)
            rows.append(point("oip_binary", c, r, ideal_rps=round(ideal_rps(c), 1)))
        for c in plan.clients:
            json_h = {"content-type": "application/json"}
            r = drive(server.url, "/predict", b.png, json_h, c, plan.seconds)
            rows.append(point("predict_png", c, r, ideal_rps=round(ideal_rps(c), 1)))
    for row in rows:
        row["of_ideal"] = round(row["throughput_rps"] / row["ideal_rps"], 3)
    return {"rows": rows}


def change_cost(plan: SimPlan, b: Bodies) -> dict[str, Any]:
    json_h = {"content-type": "application/json"}
    runs: dict[str, list[dict[str, Any]]] = {}
    for workers in plan.workers:
        for change in (0.0, plan.change_ms):
            key = f"workers={workers} change_ms={change:g}"
            rows = []
            with serve(MODEL, env=server_env(workers, change), ready_within=300) as server:
                for c in plan.change_clients:
                    r = drive(server.url, "/v2/models/convlstm/infer", *b.oip, c, plan.seconds)
                    rows.append(point("oip_binary", c, r))
                c = plan.horizon_clients
                r = drive(server.url, "/predict", b.horizon3, json_h, c, plan.seconds)
                rows.append(point("predict_horizon3", c, r))
                r = asyncio.run(_streams(server.url, plan.streams, plan.seconds, b.frame))
                rows.append(point("streams", plan.streams, r))
            runs[key] = rows
    ratios = []
    for workers in plan.workers:
        base = runs[f"workers={workers} change_ms=0"]
        costly = runs[f"workers={workers} change_ms={plan.change_ms:g}"]
        for a, z in zip(base, costly, strict=True):
            ratios.append(
                {
                    "workers": workers,
                    "path": a["path"],
                    "clients": a["clients"],
                    "no_change_rps": a["throughput_rps"],
                    "change_rps": z["throughput_rps"],
                    "ratio": round(z["throughput_rps"] / a["throughput_rps"], 3)
                    if a["throughput_rps"]
                    else 0.0,
                }
            )
    # The serving path before: one session per model and no wait for the cohort, so that
    # batch sizes alternate and every run changes shape; then each fix alone. 64 clients
    # never show it (every batch is full), so this is at the middle count.
    c = plan.change_clients[len(plan.change_clients) // 2]
    controls = []
    for label, pad, cohort in (
        ("one session, no cohort wait (before)", "off", "0"),
        ("buckets, no cohort wait", "auto", "0"),
        ("one session, cohort wait", "off", "0.25"),
        ("buckets, cohort wait (as served)", "auto", "0.25"),
    ):
        env = server_env(1, plan.change_ms, pad=pad, cohort=cohort)
        with serve(MODEL, env=env, ready_within=300) as server:
            r = drive(server.url, "/v2/models/convlstm/infer", *b.oip, c, plan.seconds)
            controls.append(point(f"oip_binary, {label}", c, r, variant=label))
    return {"runs": runs, "ratios": ratios, "controls": controls}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in results["against_ideal"]["rows"]:
        if row["clients"] >= MAX_BATCH:
            out.append(
                {
                    "target": f"{row['path']} at {row['clients']} clients >= 0.8 of the ideal",
                    "measured": row["of_ideal"],
                    "met": row["of_ideal"] >= 0.8,
                }
            )
        if row["clients"] == 1:
            bound = BATCH_MS + ITEM_MS + P50_SLACK_MS
            out.append(
                {
                    "target": f"{row['path']} p50 at 1 client <= {bound:g} ms",
                    "measured": row["p50_ms"],
                    "met": row["p50_ms"] <= bound,
                }
            )
    for row in results["change_cost"]["ratios"]:
        out.append(
            {
                "target": f"{row['path']} at {row['clients']} clients, {row['workers']} "
                f"worker(s): change cost / none >= 0.9",
                "measured": row["ratio"],
                "met": row["ratio"] >= 0.9,
            }
        )
    return out


def _table(header: list[str], rows: list[list[Any]], left: int) -> list[str]:
    """A Markdown table; the first ``left`` columns are text, the rest numbers."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def ideal_table(results: dict[str, Any]) -> list[str]:
    """The server against the device's ideal, one worker."""
    header = ["path", "clients", "req/s", "ideal", "of ideal", "p50 ms", "p99 ms"]
    keys = ["path", "clients", "throughput_rps", "ideal_rps", "of_ideal", "p50_ms", "p99_ms"]
    return _table(header, [[r[k] for k in keys] for r in results["against_ideal"]["rows"]], 1)


def change_table(results: dict[str, Any]) -> list[str]:
    """A costly change of batch size against none, with buckets."""
    header = ["workers", "path", "clients", "no change req/s", "with change req/s", "ratio"]
    keys = ["workers", "path", "clients", "no_change_rps", "change_rps", "ratio"]
    rows = [[r[k] for k in keys] for r in results["change_cost"]["ratios"]]
    # The workers column is a number but reads as a label; only the path is text.
    return _table(header, rows, 2)


def paths_table(results: dict[str, Any]) -> list[str]:
    """The serving path before the buckets, and each fix alone."""
    header = ["serving path", "clients", "req/s", "p50 ms", "p99 ms"]
    keys = ["variant", "clients", "throughput_rps", "p50_ms", "p99_ms"]
    return _table(header, [[r[k] for k in keys] for r in results["change_cost"]["controls"]], 1)


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = results.get("load_average_1min", ["?", "?"])
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores (1-minute load average {load[0]} before "
        f"the run, {load[1]} after); load from {results['generator']}. Device: "
        f"{BATCH_MS:g} ms + {ITEM_MS:g} ms per item per run, max batch {MAX_BATCH}, "
        f"{results['plan']['change_ms']:g} ms per change of shape; {results['date']}."
    )


def markdown(results: dict[str, Any]) -> str:
    change = results["plan"]["change_ms"]
    lines = [
        "# The serving path on the simulated device",
        "",
        machine_line(results) + " Figures are the server's share; the device's time is known.",
        "",
        *(
            ["**SMOKE RUN: one-second points; the figures mean nothing.**", ""]
            if results["smoke"]
            else []
        ),
        "## Against the ideal (one worker)",
        "",
        *ideal_table(results),
        "",
        f"## A change of batch size costing {change:g} ms, with buckets",
        "",
        *change_table(results),
        "",
        f"Each fix alone, the same {change:g} ms change cost, one worker, OIP binary:",
        "",
        *paths_table(results),
        "",
        *_table(
            ["target", "measured", "met"],
            [
                [v["target"], v["measured"], "yes" if v["met"] else "no"]
                for v in results["verdicts"]
            ],
            3,
        ),
    ]
    return "\n".join(lines) + "\n"


def run(plan: SimPlan, smoke: bool = False) -> dict[str, Any]:
    b = bodies(MODEL)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": smoke,
        "machine": describe(),
        "generator": "wrk" if wrk.available() else "bench.load (Python, httpx)",
        "plan": plan.__dict__,
    }
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results["against_ideal"] = against_ideal(plan, b)
    results["change_cost"] = change_cost(plan, b)
    results["verdicts"] = verdicts(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    # The machine may be shared: the server's share depends on the cores it gets.
    results["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="seconds-long run: figures mean nothing")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    results = run(SMOKE if args.smoke else FULL, args.smoke)
    write_record(args.out, "sim", results, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
