"""The **diagnose** job, first on any lent GPU: where the service's time goes under
concurrency, and whether a change of batch size is what costs it.

The service fell from ~110 requests/s at 1 client to ~10/s at 16 clients on an H100
(``bench/results/gpu/``). The leading explanation: with cuDNN 9, onnxruntime's CUDA
``Conv`` keeps one execution plan per node for the last input shape it ran and rebuilds
it whenever a run's shape differs (``UpdateState`` in ``core/providers/cuda/nn/conv.cc``;
onnxruntime issue #23006). Sections, in order, each recorded to ``OUT/diagnose.json`` as
soon as it ends, so a cut-off lease still brings back what it measured:

1. ``raw``: onnxruntime on the served graph: fixed batch 8; batch 8 and 16 in turn on one
   session; a session per size; the turn-taking under each ``cudnn_conv_algo_search``
   (EXHAUSTIVE, HEURISTIC, DEFAULT); two threads on one session with one size and with
   two sizes. A ratio (turns / fixed) of 20 or more confirms the explanation, 2 or less
   rules it out.
2. ``profile``: onnxruntime's own profile (``enable_profiling``) of runs taking turns
   between two sizes: Conv node time per run, and the rest.
3. ``server``: the real server at 16 clients (OIP binary): as served now (a session per
   bucket, IO binding), with ``CONVLSTM_PAD_BATCHES=off`` (one session: the old serving
   path), with ``CONVLSTM_MAX_BATCH_SIZE=1``, and with CUDA graphs per bucket; as served
   and with CUDA graphs also at 1 client, as served at 64. GPU memory of each server. Beside each
   point: ``/metrics`` after it, GPU utilisation (NVML, else ``nvidia-smi``) sampled
   during it, and a ``py-spy dump`` of the server's threads in the middle of the 16-client
   point of the one-session server.
4. ``sim``: the same server on the simulated device (80 ms + 2 ms per item), 16 clients:
   the server's own share on this machine's CPU.

Every figure comes from a session whose first provider is CUDA; a fallback to the CPU is
an error, never a figure. ``--dry-run`` runs every line on the CPU with tiny budgets, so
``make test`` rehearses it before a GPU does.

    python -m gpu.diagnose --out DIR [--models models] [--dry-run]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu.infer import (
    CPU,
    CUDA,
    REPO,
    FellBack,
    Record,
    closed_loop,
    gpu_facts,
    inputs,
    session,
)

SIM_ENV = {
    "CONVLSTM_PROVIDER": "simulated",
    "CONVLSTM_SIMULATED_ALLOWED": "true",
    "CONVLSTM_SIMULATED_BATCH_MS": "80",
    "CONVLSTM_SIMULATED_ITEM_MS": "2",
}


@dataclass(frozen=True)
class Plan:
    provider: str
    allow_cpu: bool
    runs: int
    """Timed runs per raw point."""
    load_seconds: float
    clients: int
    max_batch: int
    sizes: tuple[int, int]

    @classmethod
    def make(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(CPU, True, 2, 1.0, 2, 2, (1, 2))
        return cls(CUDA, False, 8, 6.0, 16, 16, (8, 16))


def cuda_options(search: str = "EXHAUSTIVE") -> dict[str, str]:
    return {"cudnn_conv_algo_search": search, "use_tf32": "1"}


def timed(run: Any, feeds: list[dict[str, Any]], runs: int) -> dict[str, float]:
    """Seconds per run over ``runs`` passes through ``feeds`` in turn (after one pass)."""
    for f in feeds:
        run(f)
    start = time.perf_counter()
    for _ in range(runs):
        for f in feeds:
            run(f)
    per = (time.perf_counter() - start) / (runs * len(feeds))
    return {"ms_per_run": round(per * 1e3, 3)}


def raw(rec: Record, plan: Plan, path: Path, card: dict[str, Any]) -> None:
    with rec.section("raw") as out:
        a, b = plan.sizes
        name = card["inputs"][0]["name"]
        xa, xb = ({name: inputs(card, n)} for n in (a, b))

        def new(search: str = "EXHAUSTIVE") -> Any:
            return session(
                path, plan.provider, allow_cpu=plan.allow_cpu, options=cuda_options(search)
            )

        s = new()
        out["provider"] = s.get_providers()[0]
        out[f"fixed batch {a}"] = timed(lambda f: s.run(None, f), [xa], plan.runs)
        out[f"fixed batch {b}"] = timed(lambda f: s.run(None, f), [xb], plan.runs)
        out[f"{a} and {b} in turn, one session"] = timed(
            lambda f: s.run(None, f), [xa, xb], plan.runs
        )
        rec.save()
        other = new()
        per_size = {a: s, b: other}
        out[f"{a} and {b} in turn, a session per size"] = timed(
            lambda f: per_size[len(f[name])].run(None, f), [xa, xb], plan.runs
        )
        rec.save()
        for search in ("HEURISTIC", "DEFAULT"):
            t = new(search)
            out[f"{a} and {b} in turn, one session, {search}"] = timed(
                lambda f, t=t: t.run(None, f), [xa, xb], plan.runs
            )
            out[f"fixed batch {a}, {search}"] = timed(
                lambda f, t=t: t.run(None, f), [xa], plan.runs
            )
            rec.save()
        for label, feeds in (("one size", (xa, xa)), ("two sizes", (xa, xb))):
            out[f"two threads on one session, {label}"] = two_threads(s, feeds, plan.runs)
            rec.save()
        fixed = out[f"fixed batch {a}"]["ms_per_run"]
        turns = out[f"{a} and {b} in turn, one session"]["ms_per_run"]
        fixed_b = out[f"fixed batch {b}"]["ms_per_run"]
        out["turns_over_fixed"] = round(turns / ((fixed + fixed_b) / 2), 2)
        out["verdict"] = (
            "confirmed: a change of batch size costs a plan rebuild"
            if out["turns_over_fixed"] >= 20
            else "ruled out"
            if out["turns_over_fixed"] <= 2
            else "neither confirmed nor ruled out"
        )


def two_threads(s: Any, feeds: tuple[dict[str, Any], dict[str, Any]], runs: int) -> dict[str, Any]:
    """Two threads each running ``runs`` times on ``s``, one with each feed."""
    times: list[float] = []

    def worker(f: dict[str, Any]) -> None:
        s.run(None, f)
        start = time.perf_counter()
        for _ in range(runs):
            s.run(None, f)
        times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(f,)) for f in feeds]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 3), "ms_per_run": round(wall / (2 * runs) * 1e3, 3)}


def profile(rec: Record, plan: Plan, path: Path, card: dict[str, Any], out_dir: Path) -> None:
    import onnxruntime as ort

    with rec.section("profile") as out:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = str(out_dir / "ort_profile")
        providers: list[Any] = [CPU]
        if plan.provider != CPU:
            providers = [(plan.provider, cuda_options()), CPU]
        s = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        if s.get_providers()[0] != plan.provider and not plan.allow_cpu:
            raise FellBack(f"profile session on {s.get_providers()}")
        name = card["inputs"][0]["name"]
        for n in (*plan.sizes, *plan.sizes, *plan.sizes):
            s.run(None, {name: inputs(card, n)})
        trace = Path(s.end_profiling())
        events = json.loads(trace.read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        nodes = [
            e
            for e in events
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
        ]
        conv = [e for e in nodes if e.get("args", {}).get("op_name") == "Conv"]
        out["runs_ms"] = [round(e["dur"] / 1e3, 3) for e in runs]
        out["conv_ms_per_run"] = round(sum(e["dur"] for e in conv) / 1e3 / max(1, len(runs)), 3)
        out["all_nodes_ms_per_run"] = round(
            sum(e["dur"] for e in nodes) / 1e3 / max(1, len(runs)), 3
        )
        out["conv_nodes"] = len({e["name"] for e in conv})
        out["trace_file"] = trace.name
        # The trace can be large; keep it only where it fits what comes back.
        if trace.stat().st_size > 8 * 1024 * 1024:
            trace.unlink()


class GpuSampler:
    """GPU utilisation sampled every 100 ms during a point: NVML where ``nvidia-ml-py``
    imports, else ``nvidia-smi``; absent (not zero) where neither answers."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.source = "none"

    def _loop(self) -> None:
        try:
            pynvml: Any = importlib.import_module("pynvml")  # nvidia-ml-py, GPU machine only
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml"
            while not self._stop.wait(0.1):
                self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            return
        except Exception:  # no NVML: try the command line once per sample
            pass
        if shutil.which("nvidia-smi") is None:
            return
        self.source = "nvidia-smi"
        while not self._stop.wait(0.1):
            r = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if r.returncode == 0 and r.stdout.strip():
                self.samples.append(int(r.stdout.split()[0]))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source}
        return {
            "source": self.source,
            "mean_util_pct": round(sum(self.samples) / len(self.samples), 1),
            "samples": len(self.samples),
        }


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory the process holds (its sessions, arenas, plans), from ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is None:
        return None
    r = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for line in r.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def py_spy_dump(pid: int, delay: float, out_file: Path) -> threading.Thread:
    """``py-spy dump`` of ``pid`` after ``delay`` seconds, into ``out_file``."""

    def dump() -> None:
        time.sleep(delay)
        # On PATH on the GPU machine (/tmp/site/bin); beside the interpreter in a venv.
        spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if spy is None:
            out_file.write_text("py-spy not installed\n")
            return
        r = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        )
        out_file.write_text(r.stdout + r.stderr)

    t = threading.Thread(target=dump, daemon=True)
    t.start()
    return t


def server_point(
    path: Path,
    card: dict[str, Any],
    plan: Plan,
    env: dict[str, str],
    clients: list[int],
    out_dir: Path,
    label: str,
    dump: bool = False,
) -> dict[str, Any]:
    from bench.server import serve
    from bench.workload import oip_binary_request

    result: dict[str, Any] = {"settings": env}
    body, headers = oip_binary_request(
        card["inputs"][0]["name"], card["outputs"][0]["name"], inputs(card, 1)
    )
    url_path = f"/v2/models/{card['name']}/infer"
    with serve(path, env=env, ready_within=300) as server:
        ready = server.client().get("/readyz").json()
        result["ready_s"] = round(server.ready_seconds, 2)
        result["provider"] = ready.get("provider")
        result["batch_buckets"] = ready.get("served", [{}])[0].get("batch_buckets")
        result["gpu_memory_mb"] = gpu_memory_mb(server.process.pid)
        simulated = env.get("CONVLSTM_PROVIDER") == "simulated"
        wanted = "simulated" if simulated else plan.provider
        if ready.get("provider") != wanted and not plan.allow_cpu:
            raise FellBack(f"the service runs on {ready.get('provider')}, not {wanted}")
        rows = []
        for c in clients:
            spy = None
            if dump and c == plan.clients:
                spy = py_spy_dump(
                    server.process.pid, plan.load_seconds / 2, out_dir / f"py-spy {label}.txt"
                )
            with GpuSampler() as gpu:
                row = closed_loop(server.url, url_path, body, headers, c, plan.load_seconds)
            row["gpu"] = gpu.summary()
            if spy is not None:
                spy.join(timeout=90)
            rows.append(row)
            print(f"[server] {label} c={c}: {row}", flush=True)
        result["load"] = rows
        metrics = server.client().get("/metrics").text
        (out_dir / f"metrics {label}.txt").write_text(metrics)
        result["batch_size_histogram"] = [
            line
            for line in metrics.splitlines()
            if line.startswith("convlstm_inference_batch_size_bucket")
        ]
        result["server_log_tail"] = server.output()[-2000:]
    return result


def base_env(plan: Plan) -> dict[str, str]:
    env = {
        "CONVLSTM_PROVIDER": "cpu" if plan.provider == CPU else "cuda",
        "CONVLSTM_MAX_BATCH_SIZE": str(plan.max_batch),
        "CONVLSTM_MAX_QUEUE": "512",
        "CONVLSTM_SERVE_MODEL_DIR": "false",
        "CONVLSTM_ACCESS_LOG": "false",
        "CONVLSTM_LOG_LEVEL": "warning",
    }
    if plan.provider != CPU:
        env["CONVLSTM_REQUIRE_GPU"] = "1"
    else:  # the dry run: the bucket path, bound, on the CPU provider
        env["CONVLSTM_PAD_BATCHES"] = "on"
        env["CONVLSTM_IO_BINDING"] = "on"
    return env


def servers(rec: Record, plan: Plan, path: Path, card: dict[str, Any], out_dir: Path) -> None:
    base = base_env(plan)
    variants: list[tuple[str, dict[str, str], list[int], bool]] = [
        ("as served", {}, [plan.clients, 1, 4 * plan.clients], False),
        ("one session (pad off)", {"CONVLSTM_PAD_BATCHES": "off"}, [plan.clients], True),
        (
            "max batch 1",
            {"CONVLSTM_MAX_BATCH_SIZE": "1", "CONVLSTM_PAD_BATCHES": "off"},
            [plan.clients],
            False,
        ),
        ("cuda graphs", {"CONVLSTM_CUDA_GRAPHS": "true"}, [plan.clients, 1], False),
    ]
    with rec.section("server") as out:
        for label, change, clients, dump in variants:
            try:
                out[label] = server_point(
                    path, card, plan, {**base, **change}, clients, out_dir, label, dump
                )
            except Exception as err:  # one variant failing leaves the others
                out[label] = {"settings": change, "error": str(err).strip()[:300]}
            rec.save()
        # The opt-in float16 graph (models/fp16/, python -m model_export fp16) as served.
        fp16 = path.parent / "fp16" / f"{path.stem}_fp16.onnx"
        if fp16.is_file():
            card16 = json.loads(fp16.with_suffix(".json").read_text())
            try:
                out["fp16 as served"] = server_point(
                    fp16, card16, plan, base, [plan.clients, 1], out_dir, "fp16 as served"
                )
            except Exception as err:  # a failure leaves the rest
                out["fp16 as served"] = {"error": str(err).strip()[:300]}
            rec.save()
    with rec.section("sim") as out:
        env = {**base, **SIM_ENV}
        env.pop("CONVLSTM_REQUIRE_GPU", None)
        env.pop("CONVLSTM_PAD_BATCHES", None)
        out.update(server_point(path, card, plan, env, [plan.clients], out_dir, "simulated"))
        ideal = plan.clients / ((80 + 2 * plan.max_batch) / 1000.0)
        out["ideal_rps"] = round(ideal, 1)


def served_graph(models: Path, dry_run: bool) -> tuple[Path, dict[str, Any]]:
    """The served ConvLSTM; the small CNN-LSTM for the dry run, whose figures mean
    nothing and whose every line must still run."""
    path = models / ("cnn_lstm.onnx" if dry_run else "convlstm.onnx")
    card = json.loads(path.with_suffix(".json").read_text())
    return path, card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--dry-run", action="store_true", help="CPU provider, tiny budgets")
    args = p.parse_args(argv)
    plan = Plan.make(args.dry_run)
    rec = Record(args.out, file="diagnose.json")
    rec.data["plan"] = {**plan.__dict__, "dry_run": args.dry_run}
    rec.data["machine"] = gpu_facts()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path, card = served_graph(args.models, args.dry_run)
    raw(rec, plan, path, card)
    profile(rec, plan, path, card, args.out)
    servers(rec, plan, path, card, args.out)
    rec.data["job_seconds"] = round(time.perf_counter() - start, 1)
    rec.save()
    (args.out / "diagnose.md").write_text(markdown(rec.data))
    print((args.out / "diagnose.md").read_text())
    failed = [k for k, v in rec.data.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed and not args.dry_run else 0


def markdown(d: dict[str, Any]) -> str:
    lines = ["# Diagnosis: the service under concurrency on the GPU", ""]
    if d["plan"]["dry_run"]:
        lines += ["**DRY RUN on the CPU provider: the figures mean nothing.**", ""]
    lines += [f"Machine: {d.get('machine')}", "", "## Raw onnxruntime, served graph", ""]
    for k, v in d.get("raw", {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## onnxruntime's profile", ""]
    for k, v in d.get("profile", {}).items():
        lines.append(f"- {k}: {v}")
    lines += [
        "",
        "## The server",
        "",
        "| variant | clients | req/s | p50 ms | p99 ms | GPU util % |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for section in ("server", "sim"):
        entries = d.get(section, {})
        items = entries.items() if section == "server" else [("simulated device", entries)]
        for label, v in items:
            if not isinstance(v, dict):
                continue
            for row in v.get("load", []):
                util = row.get("gpu", {}).get("mean_util_pct", "")
                lines.append(
                    f"| {label} | {row['concurrency']} | {row['req_per_s']} | {row['p50_ms']} "
                    f"| {row['p99_ms']} | {util} |"
                )
            if "error" in v:
                lines.append(f"| {label} | error: {v['error']} | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
