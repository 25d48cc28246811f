"""Training from disk (``train --data PATH --stream``): memory bound and throughput.

    python -m bench.train_stream [--bound-gib 5] [--scale 4] [--batches 12]
                                 [--work /tmp/convlstm-bench-stream] [--out bench/results]

1. Memory: a data set of ``scale`` x ``bound-gib`` of uint8 moving-digit shards
   (``.npy``, 16 x 40 x 40 x 3 per sequence, 2,000 generated sequences tiled with flips
   and colour permutations) is written to ``work``. Two child processes, each with its
   peak RSS read from the kernel (``ru_maxrss``): one reads every window of one epoch
   through ``WindowStream`` (the whole data set passes through the reader), one runs
   ``train --stream`` for ``batches`` batches (Keras, TensorFlow, the model). Pass: both
   peaks under the bound.
2. Throughput: on 256 sequences that fit in memory, ``batches`` training batches of 8 from
   arrays in memory and from the same data streamed from an ``.npy`` shard, alternated
   twice (A B A B, each in a fresh process after one warm-up batch), sequences/s of
   each; pass: the streamed path within 10% of the in-memory one.

The data set is removed afterwards unless ``--keep``. Opt-in: ``make bench-train-stream``
(over 40 minutes on the shared 2-core CPU at load 10, most of it writing and reading the
shards; give it a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe

REPO = Path(__file__).resolve().parent.parent
SEQ_BYTES = 16 * 40 * 40 * 3
PER_SHARD = 2000


def write_dataset(root: Path, gib: float) -> dict[str, Any]:
    from model_export.frames import data

    root.mkdir(parents=True, exist_ok=True)
    base = (data.generate(PER_SHARD, seed=101) * 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    shards = int(np.ceil(gib * 2**30 / (PER_SHARD * SEQ_BYTES)))
    for s in range(shards):
        shard = base[:, :, ::-1] if s % 2 else base
        shard = shard[..., rng.permutation(3)]
        np.save(root / f"shard_{s:04d}.npy", np.ascontiguousarray(shard))
    size = sum(p.stat().st_size for p in root.iterdir())
    return {"shards": shards, "sequences": shards * PER_SHARD, "bytes": size}


_READ_ALL = """
import resource, sys, time
from pathlib import Path
from model_export.frames.stream_data import WindowStream, scan
cat = scan(Path(sys.argv[1]), window=16)
stream = WindowStream(cat.sources, window=16, batch_size=64, dtype=cat.dtype, seed=0, workers=1)
start = time.monotonic()
for i in range(len(stream)):
    stream[i]
print(len(stream) * 64, time.monotonic() - start,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_TRAIN_BATCHES = """
import json, resource, sys, time
from pathlib import Path
import keras, numpy as np
from model_export.frames.model import build_convlstm
from model_export.frames.stream_data import WindowStream, scan
mode, path, batches = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
model = build_convlstm(every_step=True, head="carry")
model.compile(optimizer="adam", loss="binary_crossentropy")
cat = scan(path, window=16)
if mode == "memory":
    seqs = np.load(path / "shard_0000.npy") if path.is_dir() else np.load(path)
    seqs = seqs.astype(np.float32) / 255.0
    x, y = seqs[:, :-1], seqs[:, 1:]
    fit = lambda n: model.fit(x, y, batch_size=8, steps_per_epoch=n, epochs=1, shuffle=True, verbose=0)
else:
    stream = WindowStream(cat.sources, window=16, batch_size=8, dtype=cat.dtype, seed=0)
    fit = lambda n: model.fit(stream, steps_per_epoch=n, epochs=1, verbose=0)
fit(1)  # trace and warm up
start = time.monotonic()
fit(batches)
seconds = time.monotonic() - start
print(json.dumps({"mode": mode, "sequences_per_second": batches * 8 / seconds,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _child(code: str, *args: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bound-gib", type=float, default=5.0)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--work", type=Path, default=Path("/tmp/convlstm-bench-stream"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    big = args.work / "big"
    small = args.work / "small"
    try:
        start = time.monotonic()
        written = write_dataset(big, args.bound_gib * args.scale)
        write_seconds = time.monotonic() - start
        windows, read_seconds, read_rss_kib = _child(_READ_ALL, str(big)).split()
        train_big = json.loads(_child(_TRAIN_BATCHES, "stream", str(big), str(args.batches)))

        small.mkdir(parents=True, exist_ok=True)
        from model_export.frames import data

        np.save(small / "shard_0000.npy", (data.generate(256, seed=7) * 255).astype(np.uint8))
        runs = [
            json.loads(_child(_TRAIN_BATCHES, mode, str(small), str(args.batches)))
            for mode in ("memory", "stream", "memory", "stream")
        ]
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    bound = args.bound_gib * 2**30
    memory = np.mean([r["sequences_per_second"] for r in runs if r["mode"] == "memory"])
    stream = np.mean([r["sequences_per_second"] for r in runs if r["mode"] == "stream"])
    report = {
        "bound_bytes": bound,
        "dataset": {**written, "write_seconds": round(write_seconds, 1)},
        "read_every_window": {
            "windows": int(windows),
            "seconds": round(float(read_seconds), 1),
            "peak_rss_bytes": int(read_rss_kib) * 1024,
        },
        "train_streamed_on_the_big_set": train_big,
        "throughput_runs": runs,
        "streamed_over_in_memory": round(float(stream / memory), 3),
        "pass": {
            "dataset_at_least_4x_bound": written["bytes"] >= 4 * bound,
            "reader_under_bound": int(read_rss_kib) * 1024 < bound,
            "training_under_bound": train_big["peak_rss_bytes"] < bound,
            "throughput_within_10_percent": bool(stream / memory >= 0.9),
        },
        "machine": {**describe(), "load_average_1min": round(os.getloadavg()[0], 2)},
        "children_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_stream.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(report["pass"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
