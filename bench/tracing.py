"""What tracing costs, ``python -m bench.tracing`` (and the ``tracing`` section of
``make bench``): the server's CPU per request with tracing off, beside the same server
with tracing on at 100% sampling (``OTEL_TRACES_SAMPLER=always_on``), exporting every span
over OTLP/HTTP to a receiver on loopback that decodes and counts them
(``bench.otlp_receiver``).

    python -m bench.tracing [--requests 300] [--concurrency 4] [--rounds 2] [--out DIR]

Both servers run the small CNN-LSTM of ``bench.floor`` (where the serving path, not the
model, is most of the CPU, so tracing's share is at its largest), on the same three
request paths; the rounds interleave off and on, path by path, and the best round of each
is kept. CPU per request is the server process's user + system time over the requests it
answered (``bench.floor.measure``), so the load generator and the receiver do not count;
the exporter's thread inside the server does. Linux only.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.floor import MODEL, Measured, measure, request_paths
from bench.machine import describe
from bench.otlp_receiver import otlp_receiver
from bench.record import write_record
from bench.server import REPO, serve

QUIET = {"CONVLSTM_ACCESS_LOG": "false", "CONVLSTM_LOG_LEVEL": "warning"}
MODES = ("off", "on, 100% sampled")


def run(requests: int, concurrency: int, rounds: int, model: Path = MODEL) -> dict[str, Any]:
    """Measure both modes; the record ``markdown`` renders."""
    paths = request_paths(model)
    best: dict[str, dict[str, Measured]] = {p.name: {} for p in paths}
    load_before = os.getloadavg()
    with otlp_receiver(keep=False) as receiver, ExitStack() as stack:
        traced_env = {
            **QUIET,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        servers = {
            MODES[0]: stack.enter_context(serve(model, env={**QUIET, "CONVLSTM_TRACING": "false"})),
            MODES[1]: stack.enter_context(serve(model, env=traced_env)),
        }
        answered = 0
        for _ in range(rounds):
            for p in paths:
                for mode, server in servers.items():
                    m = measure(server.process.pid, server.url, p, requests, concurrency)
                    if mode == MODES[1]:
                        answered += m.ok
                    kept = best[p.name].get(mode)
                    if kept is None or m.cpu_ms_per_request < kept.cpu_ms_per_request:
                        best[p.name][mode] = m
        # The batch processor exports every 5 s (OTEL_BSP_SCHEDULE_DELAY's default, kept
        # because it is what a deployment runs): wait for the last export.
        time.sleep(5.5)
        spans = receiver.count
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": model.name,
        "requests": requests,
        "concurrency": concurrency,
        "rounds": rounds,
        "spans_received": spans,
        "traced_requests_answered": answered,
        "paths": {
            name: {
                mode: {
                    "cpu_ms_per_request": round(m.cpu_ms_per_request, 3),
                    "rps": round(m.rps, 1),
                }
                for mode, m in modes.items()
            }
            for name, modes in best.items()
        },
    }


def markdown(record: dict[str, Any]) -> str:
    machine = record["machine"]
    lines = [
        f"Tracing's CPU per request, {record['date']}, {machine['cpu']} ({machine['cores']} "
        f"cores), load average {record['load_average_before'][0]} before and "
        f"{record['load_average_after'][0]} after; {record['model']}, "
        f"{record['requests']} requests x {record['rounds']} rounds at concurrency "
        f"{record['concurrency']}, best round of each. The OTLP receiver got "
        f"{record['spans_received']} spans for the traced server's "
        f"{record['traced_requests_answered']} measured requests and their warm-ups.",
        "",
        "| path | off: CPU ms/req | on, 100% sampled: CPU ms/req | on / off | added CPU ms/req |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, modes in record["paths"].items():
        off = modes[MODES[0]]["cpu_ms_per_request"]
        on = modes[MODES[1]]["cpu_ms_per_request"]
        ratio = f"{on / off:.2f}" if off > 0 else "n/a"
        lines.append(f"| {name} | {off:.2f} | {on:.2f} | {ratio} | {on - off:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    record = run(args.requests, args.concurrency, args.rounds)
    write_record(args.out, "tracing", record, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
