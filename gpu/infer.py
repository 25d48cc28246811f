"""The **infer** job: onnxruntime's CUDA provider checked and measured, then the service.

Runs on the GPU machine after ``gpu.receive --install infer`` (``bash gpu/run.sh
infer``), with onnxruntime-gpu, the server's packages and onnxconverter-common on
``PYTHONPATH``. In order, each section timed against a budget and recorded even when
it fails (a one-shot job must not lose the rest to one error):

1. the machine: GPU name, driver, onnxruntime version, providers;
2. parity: every carded graph under ``--models`` on the CUDA provider against the CPU
   provider, same inputs (random in the card's input range, seeded);
3. raw throughput, sequences/s at each batch size: every served graph in float32 and
   the fast graph also in float16 (onnxconverter-common, IO kept float32); IO binding
   (inputs already on the GPU); CUDA graphs on the fast graph (no Loop in it);
   TensorRT where its libraries load;
4. the service itself (``python -m service``, CUDA required) under closed-loop load at
   concurrency 1, 16 and 64 over the Open Inference Protocol's binary tensors, beside
   raw onnxruntime's best on the same GPU.

A figure is recorded only from a session whose first provider is CUDA (or TensorRT);
a session that fell back to the CPU is an error, never a figure. ``--dry-run`` runs the
same code on the CPU provider with tiny budgets, so CI runs every line before a GPU does.

    python -m gpu.infer --out DIR [--models models] [--dry-run]

Writes ``DIR/infer.json`` (after every section) and ``DIR/infer.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.workload import flops_per_sequence as _card_flops
from bench.workload import oip_binary_request
from convlstm_card import ModelCard

REPO = Path(__file__).resolve().parent.parent
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass
class Plan:
    """Budgets: the GPU run and the dry run differ only here."""

    batches: list[int]
    seconds_per_point: float
    cuda_graph_batches: list[int]
    concurrencies: list[int]
    seconds_per_load: float
    provider: str
    allow_cpu: bool

    @classmethod
    def make(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls([1, 2], 0.2, [1], [1, 2], 1.5, CPU, True)
        return cls([1, 8, 32, 128], 1.5, [1, 32, 128], [1, 16, 64], 8.0, CUDA, False)


@dataclass
class Record:
    out: Path
    data: dict[str, Any] = field(default_factory=dict)
    file: str = "infer.json"

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / self.file).write_text(json.dumps(self.data, indent=2, default=str) + "\n")

    @contextmanager
    def section(self, name: str) -> Iterator[dict[str, Any]]:
        """A named part of the record; an exception ends the section, not the job."""
        entry: dict[str, Any] = {}
        self.data[name] = entry
        start = time.perf_counter()
        try:
            yield entry
        except Exception as err:
            entry["error"] = (
                f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            )
            entry["traceback"] = traceback.format_exc(limit=4)
            print(f"[{name}] failed: {entry['error']}", flush=True)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        print(f"[{name}] {entry['seconds']} s", flush=True)
        self.save()


SECTIONS = (
    "parity",
    "throughput",
    "fp16",
    "io_binding",
    "cuda_graphs",
    "tensorrt",
    "service",
    "service_variants",
)


class FellBack(RuntimeError):
    """A session asked for a GPU provider and got the CPU: never a figure."""


def gpu_facts() -> dict[str, Any]:
    try:
        row = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return {"nvidia_smi": f"unavailable: {err}"}
    name, driver, memory, clock = (s.strip() for s in row.splitlines()[0].split(","))
    return {"gpu": name, "driver": driver, "memory": memory, "max_sm_clock": clock}


def flops_per_sequence(card: dict[str, Any]) -> float:
    return _card_flops(ModelCard.model_validate(card))


def cards(models: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every carded ONNX graph under ``models`` (the served ones and the opt-in int8),
    plus the plain export the fast graph's card names."""
    found = []
    for card_file in sorted(models.rglob("*.json")):
        card = json.loads(card_file.read_text())
        if not isinstance(card, dict) or "file" not in card or "inputs" not in card:
            continue
        graph = card_file.parent / card["file"]
        if graph.is_file():
            found.append((graph, card))
            plain = (card.get("graph") or {}).get("plain")
            if plain and (card_file.parent / plain["file"]).is_file():
                found.append(
                    (card_file.parent / plain["file"], {**card, "name": card["name"] + ".plain"})
                )
    return found


def inputs(card: dict[str, Any], batch: int, seed: int = 0) -> NDArray[np.float32]:
    spec = card["inputs"][0]
    low, high = spec.get("range", [0.0, 1.0])
    dims = [int(d) for d in spec["shape"][1:]]
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(batch, *dims)).astype(np.float32)


def session(
    model: Path | bytes, provider: str, *, allow_cpu: bool, options: dict[str, str] | None = None
) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list[Any] = [CPU]
    if provider != CPU:
        providers = [(provider, options or {}), CPU]
    source = model if isinstance(model, bytes) else str(model)
    s = ort.InferenceSession(source, sess_options=so, providers=providers)
    used = s.get_providers()[0]
    if used != provider and not allow_cpu:
        raise FellBack(f"asked for {provider}, onnxruntime uses {s.get_providers()}")
    return s


def diff(a: NDArray[np.float32], b: NDArray[np.float32]) -> dict[str, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def time_runs(run: Callable[[], object], budget: float) -> dict[str, float]:
    """Median seconds per run after two warm-up runs, at least 3 timed runs."""
    run()
    run()
    times: list[float] = []
    stop = time.perf_counter() + budget
    while len(times) < 3 or time.perf_counter() < stop:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "best_s": min(times), "runs": len(times)}


def point(batch: int, t: dict[str, float], gflop: float | None) -> dict[str, Any]:
    seq_s = batch / t["median_s"]
    row: dict[str, Any] = {"batch": batch, "seq_per_s": round(seq_s, 2), **t}
    if gflop:
        row["tflops"] = round(seq_s * gflop / 1e3, 3)
    return row


def plain_runner(s: Any, x: NDArray[np.float32]) -> Callable[[], object]:
    name = s.get_inputs()[0].name
    return lambda: s.run(None, {name: x})


def bound_runner(s: Any, x: NDArray[np.float32], device: str) -> Callable[[], object]:
    """IO binding: input already on the device, output left there."""
    import onnxruntime as ort

    binding = s.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    binding.bind_ortvalue_input(s.get_inputs()[0].name, value)
    binding.bind_output(s.get_outputs()[0].name, device)

    def run() -> object:
        s.run_with_iobinding(binding)
        return None

    return run


def graph_runner(
    path: Path | bytes, x: NDArray[np.float32], out_shape: list[int]
) -> Callable[[], object]:
    """CUDA graphs: fixed shapes, every buffer bound on the GPU, the first run captures;
    each timed run copies a new input into the bound buffer, then replays."""
    import onnxruntime as ort

    s = session(path, CUDA, allow_cpu=False, options={"enable_cuda_graph": "1"})
    x_value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_value = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", 0)
    binding = s.io_binding()
    binding.bind_ortvalue_input(s.get_inputs()[0].name, x_value)
    binding.bind_ortvalue_output(s.get_outputs()[0].name, y_value)

    def run() -> object:
        x_value.update_inplace(x)
        s.run_with_iobinding(binding)
        return None

    return run


def to_fp16(path: Path) -> bytes:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return bytes(model.SerializeToString())


def tensorrt_libraries() -> str | None:
    """None when TensorRT's runtime library loads, else why not."""
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return None
        except OSError as err:
            last = str(err)
    return last


# --- the service under load: processes, so the load generator is not the bottleneck ---


def _load_worker(args: tuple[str, str, bytes, dict[str, str], int, float]) -> dict[str, Any]:
    import asyncio

    import httpx

    url, path, body, headers, concurrency, seconds = args
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            stop = time.perf_counter() + seconds

            async def one() -> None:
                while time.perf_counter() < stop:
                    start = time.perf_counter()
                    r = await client.post(path, content=body, headers=headers)
                    latencies.append(time.perf_counter() - start)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

            await asyncio.gather(*(one() for _ in range(concurrency)))

    asyncio.run(main())
    return {"latencies": latencies, "statuses": statuses}


def closed_loop(
    url: str, path: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    procs = max(1, min(concurrency // 8, 8))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_load_worker, [(url, path, body, headers, c, seconds) for c in shares])
    wall = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r["latencies"])
    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    ok = statuses.get("200", 0)
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [0.0] * 99
    )
    return {
        "concurrency": concurrency,
        "load_processes": procs,
        "seconds": seconds,
        "wall_s": round(wall, 2),
        "statuses": statuses,
        "req_per_s": round(ok / seconds, 2),
        "p50_ms": round(q[49] * 1e3, 2),
        "p99_ms": round(q[98] * 1e3, 2),
    }


VARIANTS: dict[str, dict[str, str]] = {
    "as served": {},
    "one worker": {"CONVLSTM_INFERENCE_WORKERS": "1"},
    "intra-op threads 1": {"CONVLSTM_INTRA_OP_THREADS": "1"},
    "no padding": {"CONVLSTM_PAD_BATCHES": "off"},
    "max batch 8": {"CONVLSTM_MAX_BATCH_SIZE": "8"},
}


def service_env(plan: Plan) -> dict[str, str]:
    env = {
        "CONVLSTM_PROVIDER": "cpu" if plan.provider == CPU else "cuda",
        "CONVLSTM_MAX_BATCH_SIZE": str(max(plan.concurrencies)),
        "CONVLSTM_MAX_QUEUE": str(4 * max(plan.concurrencies)),
        "CONVLSTM_INFERENCE_WORKERS": "2",
        "CONVLSTM_ACCESS_LOG": "false",
        "CONVLSTM_LOG_LEVEL": "warning",
    }
    if plan.provider != CPU:
        env["CONVLSTM_REQUIRE_GPU"] = "1"
    return env


def load_service(
    model: Path,
    card: dict[str, Any],
    plan: Plan,
    env: dict[str, str],
    concurrencies: list[int],
    raw_best: float,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The real server on ``model`` with ``env``, closed-loop load over the Open Inference
    Protocol's binary tensors at each concurrency."""
    from bench.server import serve

    out: dict[str, Any] = {}
    with serve(model, env=env, ready_within=300) as server:
        out["ready_s"] = round(server.ready_seconds, 2)
        ready = server.client().get("/readyz").json()
        out["readyz"] = ready
        if ready.get("provider") != plan.provider and not plan.allow_cpu:
            raise FellBack(f"the service runs on {ready.get('provider')}: {ready}")
        body, headers = oip_binary_request(
            card["inputs"][0]["name"], card["outputs"][0]["name"], inputs(card, 1)
        )
        path = f"/v2/models/{card['name']}/infer"
        with server.client() as c:
            r = c.post(path, content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")
        rows = []
        for conc in concurrencies:
            row = closed_loop(
                server.url, path, body, headers, conc, seconds or plan.seconds_per_load
            )
            row["ratio_to_raw_best"] = round(row["req_per_s"] / raw_best, 3) if raw_best else None
            rows.append(row)
            print(f"[service] {row}", flush=True)
        out["load"] = rows
        out["server_log_tail"] = server.output()[-3000:]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--dry-run", action="store_true", help="CPU provider, tiny budgets")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="run only these (a rerun that fills gaps in a short lease)",
    )
    args = p.parse_args(argv)
    plan = Plan.make(args.dry_run)
    rec = Record(args.out)
    rec.data["plan"] = {**plan.__dict__, "dry_run": args.dry_run}
    job_start = time.perf_counter()

    import onnxruntime as ort

    with rec.section("machine") as m:
        m.update(gpu_facts())
        m["onnxruntime"] = ort.__version__
        m["onnxruntime_file"] = ort.__file__
        m["available_providers"] = ort.get_available_providers()
        m["python"] = platform.python_version()
        m["cpu_cores"] = os.cpu_count()
        if plan.provider != CPU and hasattr(ort, "preload_dlls"):
            # CUDA and cuDNN come from the nvidia-* pip packages next to PyTorch.
            ort.preload_dlls()
            m["preload_dlls"] = True

    graphs = cards(args.models)
    fast_path, fast_card = next((g, c) for g, c in graphs if c["name"] == "convlstm")
    gflop = flops_per_sequence(fast_card) / 1e9

    if "parity" in args.sections:
        with rec.section("parity") as par:
            for graph, card in graphs:
                x = inputs(card, 4, seed=1)
                ref: Any = plain_runner(session(graph, CPU, allow_cpu=True), x)()
                s = session(graph, plan.provider, allow_cpu=plan.allow_cpu)
                got = s.run(None, {s.get_inputs()[0].name: x})
                par[card["name"]] = {"provider": s.get_providers()[0], **diff(got[0], ref[0])}
                if plan.provider == CUDA:
                    # TF32 (on by default on Ampere and later) rounds convolution inputs
                    # to 10 mantissa bits; this row says how much of the difference it is.
                    s = session(graph, CUDA, allow_cpu=False, options={"use_tf32": "0"})
                    got = s.run(None, {s.get_inputs()[0].name: x})
                    par[card["name"] + " (use_tf32=0)"] = {
                        "provider": s.get_providers()[0],
                        **diff(got[0], ref[0]),
                    }

    best: dict[str, float] = {}

    if "throughput" in args.sections:
        with rec.section("throughput_fp32") as thr:
            for graph, card in graphs:
                g = flops_per_sequence(card) / 1e9 if card["name"].startswith("convlstm") else None
                s = session(graph, plan.provider, allow_cpu=plan.allow_cpu)
                rows = []
                for batch in plan.batches:
                    t = time_runs(plain_runner(s, inputs(card, batch)), plan.seconds_per_point)
                    rows.append(point(batch, t, g))
                    best[card["name"]] = max(best.get(card["name"], 0.0), rows[-1]["seq_per_s"])
                thr[card["name"]] = {"provider": s.get_providers()[0], "points": rows}
                del s

    device = "cpu" if plan.provider == CPU else "cuda"
    fp16_model: bytes | None = None
    if "fp16" in args.sections:
        with rec.section("fp16") as f16:
            fp16_model = to_fp16(fast_path)
            f16["converter"] = (
                "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)"
            )
            s32 = session(fast_path, plan.provider, allow_cpu=plan.allow_cpu)
            s16 = session(fp16_model, plan.provider, allow_cpu=plan.allow_cpu)
            x = inputs(fast_card, 8, seed=2)
            f16["parity_vs_fp32"] = diff(plain_runner(s16, x)()[0], plain_runner(s32, x)()[0])  # type: ignore[index]
            f16["provider"] = s16.get_providers()[0]
            f16["points"] = [
                point(
                    b,
                    time_runs(plain_runner(s16, inputs(fast_card, b)), plan.seconds_per_point),
                    gflop,
                )
                for b in plan.batches
            ]
            del s16, s32

    if "io_binding" in args.sections:
        with rec.section("io_binding") as iob:
            for label, model in (("fp32", fast_path), ("fp16", fp16_model)):
                if model is None:
                    continue
                s = session(model, plan.provider, allow_cpu=plan.allow_cpu)
                iob[label] = [
                    point(
                        b,
                        time_runs(
                            bound_runner(s, inputs(fast_card, b), device), plan.seconds_per_point
                        ),
                        gflop,
                    )
                    for b in plan.batches
                ]
                del s

    if "cuda_graphs" in args.sections:
        with rec.section("cuda_graphs") as cg:
            if plan.provider == CPU:
                cg["skipped"] = "dry run: CUDA graphs need the CUDA provider"
            else:
                out_dims = [int(d) for d in fast_card["outputs"][0]["shape"][1:]]
                for label, model in (("fp32", fast_path), ("fp16", fp16_model)):
                    if model is None:
                        continue
                    rows = []
                    for b in plan.cuda_graph_batches:
                        try:
                            run = graph_runner(model, inputs(fast_card, b), [b, *out_dims])
                            rows.append(point(b, time_runs(run, plan.seconds_per_point), gflop))
                        except Exception as err:  # one batch size failing leaves the others
                            rows.append({"batch": b, "error": str(err).strip().splitlines()[0]})
                    cg[label] = rows

    if "tensorrt" in args.sections:
        with rec.section("tensorrt") as trt:
            missing = tensorrt_libraries()
            if TENSORRT not in ort.get_available_providers():
                trt["skipped"] = "this onnxruntime build has no TensorRT provider"
            elif missing is not None:
                trt["skipped"] = f"TensorRT's libraries do not load: {missing}"
            else:
                options = {
                    "trt_fp16_enable": "1",
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": "/tmp/trt",
                }
                s = session(fast_path, TENSORRT, allow_cpu=False, options=options)
                trt["points"] = [
                    point(
                        b,
                        time_runs(plain_runner(s, inputs(fast_card, b)), plan.seconds_per_point),
                        gflop,
                    )
                    for b in plan.batches
                ]

    if "service" in args.sections:
        with rec.section("service") as svc:
            # Raw onnxruntime's best on this GPU, measured above with the server's own options.
            raw_best = best.get("convlstm", 0.0)
            if not raw_best:  # the throughput section did not run in this call
                s = session(fast_path, plan.provider, allow_cpu=plan.allow_cpu)
                for b in plan.batches:
                    t = time_runs(plain_runner(s, inputs(fast_card, b)), plan.seconds_per_point)
                    raw_best = max(raw_best, b / t["median_s"])
                del s
            svc["raw_onnxruntime_best_seq_per_s"] = raw_best
            env = service_env(plan)
            svc["settings"] = env
            svc.update(load_service(fast_path, fast_card, plan, env, plan.concurrencies, raw_best))

    if "service_variants" in args.sections:
        with rec.section("service_variants") as var:
            # The service held 16 clients at ~10 requests/s on the H100 (1 client: ~110);
            # batch padding and per-worker threads did not change it. Each variant below
            # takes one suspect away, at the concurrency where the drop shows.
            conc = plan.concurrencies[1]
            for label, change in VARIANTS.items():
                env = {**service_env(plan), **change}
                try:
                    res = load_service(
                        fast_path,
                        fast_card,
                        plan,
                        env,
                        [conc],
                        0.0,
                        min(4.0, plan.seconds_per_load),
                    )
                    var[label] = {"settings": change, **res["load"][0], "ready_s": res["ready_s"]}
                except Exception as err:  # one variant failing leaves the others
                    var[label] = {"settings": change, "error": str(err).strip()[:300]}
                print(f"[service_variants] {label}: {var[label]}", flush=True)

    rec.data["job_seconds"] = round(time.perf_counter() - job_start, 1)
    rec.save()
    (args.out / "infer.md").write_text(markdown(rec.data, gflop))
    print((args.out / "infer.md").read_text())
    failed = [k for k, v in rec.data.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed and not args.dry_run else 0


def markdown(d: dict[str, Any], gflop: float) -> str:
    """The record as tables (gpu.report writes the same into bench/results/gpu/)."""
    from gpu.report import render

    return render(d, gflop)


if __name__ == "__main__":
    raise SystemExit(main())
