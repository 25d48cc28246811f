"""The benchmark suite, ``make bench``: one run, one machine, every figure beside its baseline.

    python -m bench.suite [--smoke] [--out bench/results]

1. Model compute per sequence at batch 1, 8 and 32: Keras ``predict``, the plain tf2onnx
   export, the served ONNX graph and the opt-in int8 graph, as achieved GFLOP/s beside the
   machine's float32 matrix-multiply rate (numpy), the practical limit.
2. The real server under closed-loop load at concurrency 1 to 32, with dynamic batching
   on and off, beside raw onnxruntime on the served graph at the same batch sizes; and the
   server with the opt-in int8 graph as its model, at the lowest and highest of those
   concurrencies, beside raw onnxruntime on the int8 graph.
3. Start-up time to ready and the server's resident memory.
4. ``sim``: the serving path against the simulated device (``bench/sim.py``): the
   server's share of a fast accelerator's ideal rate, and what a costly change of batch
   size does with and without sessions per bucket.
5. ``tracing``: the server's CPU per request with OpenTelemetry tracing off and on at
   100% sampling (``bench/tracing.py``); not in ``--smoke``.
6. ``transports``: the Open Inference Protocol over gRPC beside REST binary and JSON at 1
   and 8 clients, with the server's CPU per request (``bench/transports.py``).
7. ``stream_store``: stream steps with their state in memory, in Redis with ``drain`` and
   with ``step`` durability, at 4 and 16 streams, and where the time goes
   (``bench/stream_store.py``; Debian's redis-server, ``make stream-tools``).

Writes ``results.json``, ``results.md`` and ``results.png``. ``--smoke`` runs every part
at a size that takes seconds, for CI: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import sim, stream_store, tracing, transports
from bench.load import closed_loop
from bench.machine import describe
from bench.record import write_record
from bench.server import REPO, serve
from bench.soak import QUIET
from bench.workload import example_frames, flops_per_sequence, sequence_shape
from convlstm_card import ModelCard, card_path, read_card

MODELS = REPO / "models"
SERVED = MODELS / "convlstm.onnx"
INT8 = "int8 graph (opt-in)"
INT8_PATH = MODELS / "int8" / "convlstm_int8.onnx"


def served_card() -> ModelCard:
    """The served graph's card: every size below (sequence shape, work per sequence)
    comes from it, so the suite measures whatever model was exported."""
    return read_card(card_path(SERVED))


@dataclass(frozen=True)
class Plan:
    batches: tuple[int, ...]
    matmul_n: int
    min_seconds: float
    concurrency: tuple[int, ...]
    load_seconds: float
    load_requests: int
    keras: bool


FULL = Plan((1, 8, 32), 4096, 6.0, (1, 2, 4, 8, 16, 32), 20.0, 400, True)
SMOKE = Plan((1, 2), 256, 0.0, (1, 2), 1.0, 4, False)


def timed(fn: Callable[[], object], min_seconds: float, min_runs: int = 2) -> float:
    """Best seconds per call after one warm-up call, over at least ``min_runs`` calls and
    ``min_seconds`` of calls."""
    fn()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or spent < min_seconds:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def matmul_gflops(n: int, min_seconds: float) -> float:
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, min_seconds) / 1e9


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The served path's session options, on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def keras_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    import model_export.frames.model  # noqa: F401 - registers the carry and blend heads' layer

    model = keras.models.load_model(path)
    return lambda x: np.asarray(model.predict(x, batch_size=len(x), verbose=0))


def compute(plan: Plan) -> dict[str, Any]:
    card = served_card()
    gflop = flops_per_sequence(card) / 1e9
    graphs: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]] = {}
    if plan.keras:
        graphs["keras predict"] = lambda: keras_runner(MODELS / "convlstm.keras")
    plain = MODELS / "convlstm.plain.onnx"
    if plain.exists():
        graphs["plain tf2onnx export"] = lambda: onnx_runner(plain)
    graphs["served graph"] = lambda: onnx_runner(SERVED)
    if INT8_PATH.exists():
        graphs[INT8] = lambda: onnx_runner(INT8_PATH)
    rng = np.random.default_rng(0)
    rows = []
    for name, make in graphs.items():
        run = make()
        for batch in plan.batches:
            x = rng.random((batch, *sequence_shape(card)), dtype=np.float32)
            seconds = timed(partial(run, x), plan.min_seconds)
            per_seq = seconds / batch
            rows.append(
                {
                    "graph": name,
                    "batch": batch,
                    "ms_per_sequence": round(per_seq * 1000, 2),
                    "sequences_per_s": round(1 / per_seq, 3),
                    "gflops": round(gflop / per_seq, 1),
                }
            )
            print(f"compute: {name} batch {batch}: {per_seq * 1000:.1f} ms/seq", flush=True)
    return {"gflop_per_sequence": round(gflop, 2), "rows": rows}


def load(
    plan: Plan,
    batching: bool,
    model: Path = SERVED,
    concurrency: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    env = {**QUIET, **({} if batching else {"CONVLSTM_MAX_BATCH_SIZE": "1"})}
    body = {"frames": example_frames(model)}
    rows = []
    with serve(model, env=env) as server:
        startup = {
            "ready_seconds": round(server.ready_seconds, 2),
            "rss_mb_ready": round(server.rss_mb, 1),
        }
        for c in concurrency or plan.concurrency:
            result = closed_loop(
                server.url,
                body,
                concurrency=c,
                max_requests=plan.load_requests,
                max_seconds=plan.load_seconds,
            )
            rows.append(result.summary())
            print(
                f"load ({model.name}, batching {'on' if batching else 'off'}): c={c}: {rows[-1]}",
                flush=True,
            )
        startup["rss_mb_after_load"] = round(server.rss_mb, 1)
    return {"model": model.name, "batching": batching, "startup": startup, "rows": rows}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as measured, met or not."""
    rows = results["compute"]["rows"]

    def ms(graph: str, batch: int) -> float | None:
        return next(
            (r["ms_per_sequence"] for r in rows if r["graph"] == graph and r["batch"] == batch),
            None,
        )

    served_b1 = ms("served graph", 1)
    raw_best = max(
        (1000 / r["ms_per_sequence"] for r in rows if r["graph"] == "served graph"), default=0
    )
    on = {r["concurrency"]: r for r in results["load_batching_on"]["rows"]}
    out = []
    plain8, fast8 = ms("plain tf2onnx export", 8), ms("served graph", 8)
    if plain8 and fast8:
        out.append(
            {
                "target": "served graph <= 0.5x plain export, batch 8",
                "measured": f"{fast8 / plain8:.2f}x",
                "met": fast8 / plain8 <= 0.5,
            }
        )
    int8_8 = ms(INT8, 8)
    if plain8 and int8_8:
        out.append(
            {
                "target": "(opt-in int8 graph, not the default) <= 0.5x plain export, batch 8",
                "measured": f"{int8_8 / plain8:.2f}x",
                "met": int8_8 / plain8 <= 0.5,
            }
        )
    if served_b1 and 1 in on:
        limit = served_b1 * 1.05 + 3
        out.append(
            {
                "target": "service p50 at c=1 <= raw batch-1 x 1.05 + 3 ms",
                "measured": f"{on[1]['p50_ms']:.1f} ms vs limit {limit:.1f} ms",
                "met": on[1]["p50_ms"] <= limit,
            }
        )
    if 16 in on and raw_best:
        share = on[16]["throughput_rps"] / raw_best
        out.append(
            {
                "target": "service throughput at c=16 >= 90% of raw best batched",
                "measured": f"{share:.0%}",
                "met": share >= 0.9,
            }
        )
    start = results["load_batching_on"]["startup"]
    out.append(
        {
            "target": "ready within 5 s",
            "measured": f"{start['ready_seconds']} s",
            "met": start["ready_seconds"] <= 5,
        }
    )
    out.append(
        {
            "target": "resident memory < 500 MB",
            "measured": f"{start['rss_mb_after_load']} MB",
            "met": start["rss_mb_after_load"] < 500,
        }
    )
    return out


def raw_line(graph: str, rows: dict[int, dict[str, Any]]) -> str:
    per_batch = ", ".join(
        f"batch {b}: {r['ms_per_sequence']} ms/seq ({r['sequences_per_s']} seq/s)"
        for b, r in rows.items()
    )
    return f"Raw onnxruntime, {graph}: {per_batch}."


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cores']} cores, {m['provider']}, "
        f"onnxruntime {m['onnxruntime']}{' (SMOKE RUN: figures meaningless)' if results['smoke'] else ''}.",
        "",
        f"Float32 matrix multiply (numpy, {results['matmul']['n']}²): **{results['matmul']['gflops']} GFLOP/s**, "
        f"the practical limit. One sequence is {results['compute']['gflop_per_sequence']} GFLOP "
        "(for the int8 graph: the same float32 operations per second, as an equivalent).",
        "",
        "| graph | batch | ms / sequence | sequences / s | GFLOP/s | share of matmul |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["compute"]["rows"]:
        share = r["gflops"] / results["matmul"]["gflops"]
        lines.append(
            f"| {r['graph']} | {r['batch']} | {r['ms_per_sequence']} | {r['sequences_per_s']} | {r['gflops']} | {share:.0%} |"
        )
    raw = {r["batch"]: r for r in results["compute"]["rows"] if r["graph"] == "served graph"}
    lines += [
        "",
        "The server under closed-loop load (loopback, PNG frames, horizon 1), beside raw onnxruntime on the served graph:",
        "",
        "| concurrency | batching | requests | throughput / s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("load_batching_on", "load_batching_off"):
        for r in results[key]["rows"]:
            errors = r["requests"] - r["ok"]
            lines.append(
                f"| {r['concurrency']} | {'on' if results[key]['batching'] else 'off'} | {r['requests']} | "
                f"{r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {errors} |"
            )
    lines.append("")
    lines.append(raw_line("served graph", raw))
    if "load_int8" in results:
        int8 = results["load_int8"]
        raw8 = {r["batch"]: r for r in results["compute"]["rows"] if r["graph"] == INT8}
        lines += [
            "",
            f"The server with the opt-in int8 graph as its model ({int8['model']}, batching on; "
            f"ready in {int8['startup']['ready_seconds']} s, "
            f"{int8['startup']['rss_mb_after_load']} MB after the load):",
            "",
            "| concurrency | requests | throughput / s | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['concurrency']} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['requests'] - r['ok']} |"
            for r in int8["rows"]
        ]
        lines += ["", raw_line("int8 graph", raw8)]
    s = results["load_batching_on"]["startup"]
    lines += [
        "",
        f"Start-up to ready: {s['ready_seconds']} s; resident memory {s['rss_mb_ready']} MB when ready, "
        f"{s['rss_mb_after_load']} MB after the load runs.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {v['target']} | {v['measured']} | {'yes' if v['met'] else 'no'} |"
        for v in results["verdicts"]
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    graphs = sorted({r["graph"] for r in results["compute"]["rows"]})
    for g in graphs:
        rows = [r for r in results["compute"]["rows"] if r["graph"] == g]
        left.plot([r["batch"] for r in rows], [r["gflops"] for r in rows], marker="o", label=g)
    left.axhline(results["matmul"]["gflops"], color="grey", linestyle="--", label="float32 matmul")
    left.set(xscale="log", xlabel="batch", ylabel="GFLOP/s", title="model compute")
    left.legend(fontsize=8)
    for key in ("load_batching_on", "load_batching_off"):
        rows = results[key]["rows"]
        label = f"server, batching {'on' if results[key]['batching'] else 'off'}"
        right.plot(
            [r["concurrency"] for r in rows],
            [r["throughput_rps"] for r in rows],
            marker="o",
            label=label,
        )
    raw = [r for r in results["compute"]["rows"] if r["graph"] == "served graph"]
    right.axhline(
        max(r["sequences_per_s"] for r in raw),
        color="grey",
        linestyle="--",
        label="raw onnxruntime, best batch",
    )
    right.set(xscale="log", xlabel="concurrency", ylabel="requests / s", title="service throughput")
    right.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, {m['provider']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(plan: Plan, smoke: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": smoke,
        "machine": describe(),
        "matmul": {
            "n": plan.matmul_n,
            "gflops": round(matmul_gflops(plan.matmul_n, plan.min_seconds), 1),
        },
    }
    results["compute"] = compute(plan)
    results["load_batching_on"] = load(plan, batching=True)
    results["load_batching_off"] = load(plan, batching=False)
    if INT8_PATH.exists():
        ends = (plan.concurrency[0], plan.concurrency[-1])
        results["load_int8"] = load(plan, batching=True, model=INT8_PATH, concurrency=ends)
    results["verdicts"] = verdicts(results)
    results["sim"] = sim.run(sim.SMOKE if smoke else sim.FULL, smoke)
    results["transports"] = transports.run(transports.SMOKE if smoke else transports.FULL, smoke)
    results["stream_store"] = stream_store.run(
        stream_store.SMOKE if smoke else stream_store.FULL, smoke
    )
    if not smoke:  # two more servers and a minute of load: not for CI's smoke run
        results["tracing"] = tracing.run(requests=300, concurrency=4, rounds=2)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    results = run(SMOKE if args.smoke else FULL, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    plot(results, args.out / "results.png")
    print(markdown(results))
    for section in (sim, transports, stream_store, tracing):
        name = section.__name__.removeprefix("bench.")
        if name in results:  # tracing is not in --smoke
            write_record(args.out, name, results[name], section.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
