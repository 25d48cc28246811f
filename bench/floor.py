"""Serving overhead, ``python -m bench.floor``: the server's CPU per request on three
request paths of a small model, beside the floor, a bare ASGI endpoint on the same
uvicorn that reads the same body and answers the same bytes with no model.

    python -m bench.floor [--model models/cnn_lstm.onnx] [--requests 300] [--concurrency 4]

Paths: ``POST /predict`` with a base64 float32 tensor (JSON), and ``POST
/v2/models/NAME/infer`` with JSON ``data`` and with the binary tensor extension. CPU per
request is the server process's user + system time (``/proc/PID/stat``) over the
requests it answered; the load generator runs in this process, so only the server's
own CPU counts. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.server import REPO, free_port, serve
from bench.workload import oip_binary_request
from convlstm_card import card_path, read_card

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
MODEL = REPO / "models" / "cnn_lstm.onnx"


@dataclass(frozen=True)
class Path_:
    """One request path: where it goes, its body and headers."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]


def request_paths(model: Path) -> list[Path_]:
    """The three request paths for ``model``, with one sequence from its card."""
    card = read_card(card_path(model))
    inp, out = card.inputs[0], card.outputs[0]
    shape = [int(d) for d in inp.shape[1:]]
    rng = np.random.default_rng(0)
    values = rng.random(shape, dtype=np.float32)
    name = card.name
    predict = {
        "model": name,
        "tensor": {
            "data": base64.b64encode(values.tobytes()).decode(),
            "dtype": "float32",
            "shape": shape,
        },
    }
    oip_json = {
        "inputs": [
            {
                "name": inp.name,
                "shape": [1, *shape],
                "datatype": "FP32",
                "data": values.reshape(-1).tolist(),
            }
        ]
    }
    binary, binary_headers = oip_binary_request(inp.name, out.name, values[None])
    js = {"content-type": "application/json"}
    return [
        Path_("predict tensor (JSON, base64)", "/predict", json.dumps(predict).encode(), js),
        Path_(
            "OIP infer, JSON data", f"/v2/models/{name}/infer", json.dumps(oip_json).encode(), js
        ),
        Path_(
            "OIP infer, binary tensors",
            f"/v2/models/{name}/infer",
            binary,
            binary_headers,
        ),
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


@dataclass(frozen=True)
class Measured:
    cpu_ms_per_request: float
    rps: float
    ok: int


async def _load(base: str, path: Path_, requests: int, concurrency: int) -> int:
    ok = 0
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal ok, issued
            while issued < requests:
                issued += 1
                r = await client.post(path.url, content=path.body, headers=path.headers)
                ok += r.status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def measure(pid: int, base: str, path: Path_, requests: int, concurrency: int) -> Measured:
    """Closed-loop load of ``requests`` on one path; the server's CPU per answered request."""
    asyncio.run(_load(base, path, max(4, requests // 10), concurrency))  # warm-up
    cpu, start = cpu_seconds(pid), time.perf_counter()
    ok = asyncio.run(_load(base, path, requests, concurrency))
    seconds = time.perf_counter() - start
    used = cpu_seconds(pid) - cpu
    return Measured(1000.0 * used / max(ok, 1), ok / seconds, ok)


# The bare endpoint: read the whole body, answer fixed bytes. Its responses are the
# service's own, captured once per path and handed over in a file.
_RESPONSES: dict[str, tuple[bytes, list[tuple[bytes, bytes]]]] = {}


async def floor_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
    """A bare ASGI endpoint: reads the body, answers the stored bytes for the path."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    key = f"{scope['path']}|{dict(scope['headers']).get(b'content-type', b'').decode()}"
    body, headers = _RESPONSES.get(key, (b"{}", [(b"content-type", b"application/json")]))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_floor(port: int, responses: Path, loop: str, http: str) -> None:
    import uvicorn

    for key, (body, headers) in json.loads(responses.read_text()).items():
        _RESPONSES[key] = (
            base64.b64decode(body),
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        )
    uvicorn.run(
        floor_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop=loop,
        http=http,
    )


def captured(base: str, paths: list[Path_]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    out = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for p in paths:
            r = client.post(p.url, content=p.body, headers=p.headers)
            r.raise_for_status()
            keep = [(k, v) for k, v in r.headers.items() if k.lower() not in {"date", "server"}]
            out[f"{p.url}|{p.headers['content-type']}"] = (
                base64.b64encode(r.content).decode(),
                keep,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per path")
    ap.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--responses", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--loop", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_floor:
        run_floor(args.serve_floor, args.responses, args.loop, args.http)
        return 0
    paths = request_paths(args.model)
    env = {"CONVLSTM_ACCESS_LOG": "false", "CONVLSTM_LOG_LEVEL": "warning"}
    with serve(args.model, env=env) as server, tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "responses.json"
        responses.write_text(json.dumps(captured(server.url, paths)))
        port = free_port()
        floor = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--serve-floor", str(port)]
            + ["--responses", str(responses)],
            cwd=REPO,
        )
        floor_url = f"http://127.0.0.1:{port}"
        try:
            _wait(floor_url)
            rows: dict[str, list[tuple[Measured, Measured]]] = {p.name: [] for p in paths}
            for _ in range(args.rounds):
                for p in paths:
                    s = measure(server.process.pid, server.url, p, args.requests, args.concurrency)
                    f = measure(floor.pid, floor_url, p, args.requests, args.concurrency)
                    rows[p.name].append((s, f))
        finally:
            floor.terminate()
            floor.wait(timeout=30)
    print(
        f"{args.model.name}, {args.requests} requests x {args.rounds} rounds, "
        f"concurrency {args.concurrency}; server CPU ms per request (best round)"
    )
    print(
        "| path | service CPU ms/req | service req/s | floor CPU ms/req | floor req/s | service / floor |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, pairs in rows.items():
        s = min((pair[0] for pair in pairs), key=lambda m: m.cpu_ms_per_request)
        f = min((pair[1] for pair in pairs), key=lambda m: m.cpu_ms_per_request)
        print(
            f"| {name} | {s.cpu_ms_per_request:.2f} | {s.rps:.0f} | {f.cpu_ms_per_request:.2f} "
            f"| {f.rps:.0f} | {ratio(s.cpu_ms_per_request, f.cpu_ms_per_request)} |"
        )
    return 0


def ratio(a: float, b: float) -> str:
    """``a / b``, or n/a when too few requests left ``b`` under one clock tick."""
    return f"{a / b:.2f}" if b > 0 else "n/a"


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("the floor server did not start")


if __name__ == "__main__":
    raise SystemExit(main())
