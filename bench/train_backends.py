"""Training throughput of the ConvLSTM on Keras' backends on this CPU, in equal time.

    python -m bench.train_backends [--seconds 150] [--python-jax PY] [--python-torch PY]
                                   [--out bench/results]

For each backend (TensorFlow from the project's venv; JAX and PyTorch from the Python
of a throwaway venv given by ``--python-jax`` / ``--python-torch``, left out when not
given) and each precision (float32, mixed_bfloat16), a fresh child process builds the
release model's every-step training graph (carry head), trains it with Adam on binary
cross-entropy, batch 8, on 512 generated training sequences for ``seconds`` of wall time
after one warm-up batch (timed apart: tracing and compiling), then scores 64 validation
sequences. Reported: sequences/s, the validation loss reached, and the 1-minute load
average at each run's end (the CPU is shared). Opt-in: ``make bench-train-backends``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.machine import describe

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import json, os, sys, time
import keras
from model_export.frames import data
from model_export.frames.model import build_convlstm
precision, seconds = sys.argv[1], float(sys.argv[2])
keras.utils.set_random_seed(0)
keras.mixed_precision.set_global_policy(precision)
x, y = data.inputs_and_targets(data.generate(512, seed=1), every_step=True)
vx, vy = data.inputs_and_targets(data.generate_split(64, "validation"), every_step=True)
model = build_convlstm(every_step=True, head="carry")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
warm = time.monotonic()
model.train_on_batch(x[:8], y[:8])  # trace / compile
start, seen, i = time.monotonic(), 0, 8
warm_up = start - warm
while time.monotonic() - start < seconds:
    j = i % 512
    model.train_on_batch(x[j:j + 8], y[j:j + 8])
    seen, i = seen + 8, i + 8
spent = time.monotonic() - start
val = float(model.evaluate(vx, vy, batch_size=8, verbose=0))
print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__,
                  "precision": precision, "warm_up_seconds": round(warm_up, 1),
                  "seconds": round(spent, 1), "sequences": seen,
                  "sequences_per_second": round(seen / spent, 3), "val_loss": round(val, 5),
                  "load_average_1min": round(os.getloadavg()[0], 2)}))
"""


def run_one(
    python: str, backend: str, precision: str, seconds: float, timeout: float
) -> dict[str, Any]:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(REPO),
    }
    try:
        done = subprocess.run(
            [python, "-c", _CHILD, precision, str(seconds)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        # A run that cannot finish its warm-up and one timed batch in this time is not
        # a contender; say so rather than hold the rest of the bench.
        return {
            "backend": backend,
            "precision": precision,
            "error": f"stopped after {timeout:.0f} s without finishing (warm-up + timed batches)",
        }
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"backend": backend, "precision": precision, "error": tail[0][:300]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument(
        "--timeout", type=float, default=900.0, help="the most one run may take, in seconds"
    )
    p.add_argument("--python-jax")
    p.add_argument("--python-torch")
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    p.add_argument("--name", default="train_backends", help="the result file's name")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    pythons = {"tensorflow": sys.executable, "jax": args.python_jax, "torch": args.python_torch}
    rows = []
    for backend, python in pythons.items():
        if python is None or backend not in args.backends:
            continue
        for precision in args.precisions:
            row = run_one(python, backend, precision, args.seconds, args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "what": "ConvLSTM every-step training (carry head), batch 8, equal wall time per run",
        "seconds_per_run": args.seconds,
        "command": "python -m bench.train_backends " + " ".join(sys.argv[1:]),
        "runs": rows,
        "machine": describe(),
        "cpu_flags": _cpu_flags(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cpu_flags() -> list[str]:
    """The vector extensions that decide bfloat16's speed (AVX-512 BF16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


if __name__ == "__main__":
    raise SystemExit(main())
