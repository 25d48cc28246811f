"""The Open Inference Protocol's transports side by side, ``python -m bench.transports``
(also a section of ``make bench``): gRPC ``ModelInfer`` with raw tensor bytes, REST with
the binary tensor extension and REST with JSON ``data``, each at 1 and 8 closed-loop
clients on one server, beside raw onnxruntime on the same graph in the same run.

    python -m bench.transports [--smoke] [--out bench/results]

The model is the CNN-LSTM, where the server's own cost shows beside the model's. Per
point: requests/s, its ratio to raw onnxruntime's best rate at a batch size the clients
can fill (1, or 1 and 8), p50, and the server process's CPU per request (user + system time from
``/proc/PID/stat``; the load generators run in this process, so only the server's CPU
counts). Writes ``transports.json`` and ``transports.md``. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench.floor import MODEL, cpu_seconds, request_paths
from bench.load import closed_loop
from bench.machine import describe
from bench.record import write_record
from bench.server import REPO, serve
from bench.soak import QUIET
from convlstm_card import card_path, read_card

CLIENTS = (1, 8)


@dataclass(frozen=True)
class Plan:
    requests: int
    seconds: float
    min_seconds: float


FULL = Plan(requests=300, seconds=20.0, min_seconds=3.0)
SMOKE = Plan(requests=4, seconds=2.0, min_seconds=0.0)


def grpc_request(model: Path) -> Any:
    """One sequence as a ``ModelInferRequest`` with its bytes in ``raw_input_contents``:
    what tritonclient sends, built once."""
    card = read_card(card_path(model))
    inp = card.inputs[0]
    shape = [int(d) for d in inp.shape[1:]]
    values = np.random.default_rng(0).random(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=card.name)
    tensor = request.inputs.add(name=inp.name, datatype="FP32")
    tensor.shape.extend([1, *shape])
    request.raw_input_contents.append(values.tobytes())
    return request


async def _grpc_loop(address: str, request: Any, clients: int, plan: Plan) -> dict[str, Any]:
    latencies: list[float] = []
    failed = 0
    issued = 0
    deadline = time.perf_counter() + plan.seconds
    async with grpc.aio.insecure_channel(address) as channel:
        infer: Callable[..., Awaitable[Any]] = service_pb2_grpc.GRPCInferenceServiceStub(
            channel
        ).ModelInfer

        async def client() -> None:
            nonlocal issued, failed
            while issued < plan.requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                try:
                    await infer(request, timeout=120)
                except grpc.RpcError:
                    failed += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000.0)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {"ok": len(latencies), "failed": failed, "seconds": seconds, "latencies": latencies}


def point(
    name: str, pid: int, run: Callable[[], dict[str, Any]], raw_rate: float
) -> dict[str, Any]:
    cpu = cpu_seconds(pid)
    got = run()
    cpu = cpu_seconds(pid) - cpu
    ok = got["ok"]
    rps = ok / got["seconds"] if got["seconds"] else 0.0
    lat = got["latencies"]
    return {
        "transport": name,
        "ok": ok,
        "failed": got["failed"],
        "rps": round(rps, 2),
        "of_raw": round(rps / raw_rate, 3),
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "server_cpu_ms_per_request": round(cpu * 1000 / ok, 2) if ok else None,
    }


def run(plan: Plan, smoke: bool = False) -> dict[str, Any]:
    from bench.suite import onnx_runner, timed  # bench.suite runs this module as a section

    session = onnx_runner(MODEL)
    card = read_card(card_path(MODEL))
    shape = [int(d) for d in card.inputs[0].shape[1:]]
    rng = np.random.default_rng(0)
    raw: dict[int, float] = {}
    for batch in CLIENTS:
        x = rng.random((batch, *shape), dtype=np.float32)
        raw[batch] = batch / timed(partial(session, x), plan.min_seconds)
        print(f"transports: raw onnxruntime batch {batch}: {raw[batch]:.1f} seq/s", flush=True)
    paths = {p.name: p for p in request_paths(MODEL)}
    rest = {
        "REST binary": paths["OIP infer, binary tensors"],
        "REST JSON": paths["OIP infer, JSON data"],
    }
    request = grpc_request(MODEL)
    rows: list[dict[str, Any]] = []
    with serve(MODEL, env={**QUIET, "CONVLSTM_SERVE_MODEL_DIR": "false"}) as server:
        pid, address = server.process.pid, str(server.grpc_address)
        for clients in CLIENTS:
            # Raw onnxruntime's best rate at a batch these clients can fill.
            rate = max(r for b, r in raw.items() if b <= clients)

            def over_grpc(clients: int = clients) -> dict[str, Any]:
                return asyncio.run(_grpc_loop(address, request, clients, plan))

            runs: dict[str, Callable[[], dict[str, Any]]] = {"gRPC raw": over_grpc}
            for name, path in rest.items():

                def over_rest(path: Any = path, clients: int = clients) -> dict[str, Any]:
                    result = closed_loop(
                        server.url,
                        path.body,
                        concurrency=clients,
                        max_requests=plan.requests,
                        max_seconds=plan.seconds,
                        path=path.url,
                        headers=path.headers,
                    )
                    return {
                        "ok": result.ok,
                        "failed": sum(result.statuses.values())
                        - result.ok
                        + result.transport_errors,
                        "seconds": result.seconds,
                        "latencies": result.latencies_ms,
                    }

                runs[name] = over_rest
            for name, go in runs.items():
                row = {"clients": clients, **point(name, pid, go, rate)}
                rows.append(row)
                print(f"transports: {row}", flush=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": smoke,
        "machine": describe(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "model": MODEL.name,
        "raw_sequences_per_s": {str(b): round(r, 1) for b, r in raw.items()},
        "rows": rows,
    }


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Transports: gRPC beside REST ({results['date']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['provider']}, onnxruntime {m['onnxruntime']}; "
        f"load average at the end {results['load_average']}. Model {results['model']}; raw "
        f"onnxruntime in the same run: {results['raw_sequences_per_s']} sequences/s by batch."
        + (" **Smoke run: the figures mean nothing.**" if results["smoke"] else ""),
        "",
        "| clients | transport | req/s | of raw onnxruntime | p50 ms | server CPU ms/request |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['clients']} | {r['transport']} | {r['rps']} | {r['of_raw']} | "
            f"{r['p50_ms']} | {r['server_cpu_ms_per_request']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="seconds-long run: figures mean nothing")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    results = run(SMOKE if args.smoke else FULL, args.smoke)
    write_record(args.out, "transports", results, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
