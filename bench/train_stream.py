"""Training from disk (``train --data PATH --stream``): memory bound and throughput.

    python -m bench.train_stream [--bound-gib 1] [--scale 4] [--train-seconds 60]
                                 [--ab-batches 60] [--rounds 4] [--work DIR] [--out DIR]

The data path does not depend on the model, so the model trained here is a small
ConvLSTM (one layer of 4 filters) on 24 x 24 x 3 frames: a TensorFlow process training
it stays well under 1 GiB, which lets a 1 GiB bound be shown on a 4 GiB data set (the
seed model alone takes ~4.3 GB to train, which would need 20 GiB of data).

1. Data: ``scale`` x ``bound`` of uint8 ``.npy`` shards of 16-frame sequences (2,000
   moving-digit sequences, cropped to their centre 24 x 24, tiled with flips and colour
   permutations) in ``work/big``; ``work/quarter`` links a quarter of the shards.
2. Reading every window of an epoch through ``WindowStream`` (the whole data set passes
   through the reader), on the quarter and on the whole set, each in a child process.
3. Training ``train --stream``'s way (Keras ``fit`` on a ``WindowStream``, two worker
   threads, a queue of 4) on the whole set for ``train-seconds``: a full epoch of it
   takes about half an hour on this CPU, so the run trains on batches drawn from the
   whole set in the epoch's shuffled order.
4. Throughput on a set that fits: the same model fitted from arrays in memory (as
   ``train --data`` without ``--stream``) and from the same data streamed from a shard,
   in one child, alternated ``rounds`` times (A B A B ...), sequences/s of the steady
   state (from the end of each fit's first batch to the end of its last).

Peak RSS is each child's ``VmHWM`` (the kernel's high-water mark of its resident set),
with its ``VmRSS`` sampled every 2 s beside it. Pass: every peak under the bound, the
data set at least 4 x the bound, streamed within 10% of in memory. The record is
written after every part (``complete`` false until the last), and the data set is
removed at the end, on an error and on SIGTERM, unless ``--keep``. Opt-in:
``make bench-train-stream``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe
from bench.record import write_record

REPO = Path(__file__).resolve().parent.parent
FRAMES, SIDE, CHANNELS = 16, 24, 3
SEQ_BYTES = FRAMES * SIDE * SIDE * CHANNELS
PER_SHARD = 2000
FILTERS = "4"
BATCH = 8


def write_dataset(root: Path, gib: float) -> dict[str, Any]:
    from model_export.frames import data

    root.mkdir(parents=True, exist_ok=True)
    lo = (40 - SIDE) // 2
    base = data.generate(PER_SHARD, seed=101)[:, :, lo : lo + SIDE, lo : lo + SIDE]
    base = (base * 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    shards = int(np.ceil(gib * 2**30 / (PER_SHARD * SEQ_BYTES)))
    for s in range(shards):
        shard = base[:, :, ::-1] if s % 2 else base
        shard = shard[:, :, :, ::-1] if s % 4 >= 2 else shard
        np.save(root / f"shard_{s:04d}.npy", np.ascontiguousarray(shard[..., rng.permutation(3)]))
    size = sum(p.stat().st_size for p in root.iterdir())
    return {"shards": shards, "sequences": shards * PER_SHARD, "bytes": size}


_READ_ALL = """
import sys, time
from pathlib import Path
from model_export.frames.stream_data import WindowStream
from model_export.frames.stream_scan import scan
cat = scan(Path(sys.argv[1]), window=16)
stream = WindowStream(cat.sources, window=16, batch_size=64, dtype=cat.dtype, seed=0, workers=1)
start = time.monotonic()
for i in range(len(stream)):
    stream[i]
print(stream.windows, time.monotonic() - start)
"""

_TRAIN_BIG = """
import sys, time
from pathlib import Path
import keras
from model_export.frames.model import build_convlstm
from model_export.frames.stream_data import WindowStream
from model_export.frames.stream_scan import scan
path, seconds, filters = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
cat = scan(path, window=16)
model = build_convlstm(every_step=True, frames=15, frame_shape=cat.frame_shape,
                       filters=tuple(int(f) for f in filters.split(",")))
model.compile(optimizer="adam", loss="binary_crossentropy")
stream = WindowStream(cat.sources, window=16, batch_size=8, dtype=cat.dtype, seed=0)

class Budget(keras.callbacks.Callback):
    batches = 0
    def on_train_begin(self, logs=None):
        self.start = time.monotonic()
    def on_train_batch_end(self, batch, logs=None):
        Budget.batches = batch + 1
        if time.monotonic() - self.start > seconds:
            self.model.stop_training = True

start = time.monotonic()
model.fit(stream, epochs=1, verbose=0, callbacks=[Budget()])
print(Budget.batches, time.monotonic() - start, stream.windows)
"""

_AB = """
import json, sys, time
from pathlib import Path
import keras, numpy as np
from model_export.frames.model import build_convlstm
from model_export.frames.stream_data import WindowStream
from model_export.frames.stream_scan import scan
shard, batches, rounds, filters = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keras.utils.set_random_seed(0)
cat = scan(shard, window=16)
model = build_convlstm(every_step=True, frames=15, frame_shape=cat.frame_shape,
                       filters=tuple(int(f) for f in filters.split(",")))
model.compile(optimizer="adam", loss="binary_crossentropy")
seqs = np.load(shard).astype(np.float32) / 255.0  # as train --data holds its windows
x, y = seqs[:, :-1], seqs[:, 1:]
stream = WindowStream(cat.sources, window=16, batch_size=8, dtype=cat.dtype, seed=0)

class Clock(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.monotonic())
    def on_train_begin(self, logs=None):
        self.ends = []

def fit(mode, n):
    clock = Clock()
    if mode == "memory":
        model.fit(x, y, batch_size=8, steps_per_epoch=n, epochs=1, shuffle=True, verbose=0,
                  callbacks=[clock])
    else:
        model.fit(stream, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[clock])
    return (len(clock.ends) - 1) * 8 / (clock.ends[-1] - clock.ends[0])

fit("memory", 3), fit("stream", 3)  # trace and warm up both paths
for r in range(rounds):
    for mode in ("memory", "stream"):
        print(json.dumps({"round": r, "mode": mode, "sequences_per_second": fit(mode, batches)}),
              flush=True)
"""


# Appended to every child: its peak resident set (the kernel's high-water mark of its own
# memory map). Not ``ru_maxrss`` from ``wait4``: Linux carries the peak of the memory the
# child was forked with (this process', ~1 GB while it generates the data) across
# ``exec`` into it, and every child here reported the same 1,020 MiB.
_HWM = """
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("HWM", int(line.split()[1]) * 1024, flush=True)
"""


class Child:
    """A child Python process: its output lines, its peak RSS (``VmHWM``), and its
    ``VmRSS`` sampled every ``every`` seconds while it ran."""

    running: subprocess.Popen[str] | None = None

    def __init__(self, code: str, *args: str, log: Path, every: float = 2.0) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", code + _HWM, *args], stdout=subprocess.PIPE, stderr=err,
                text=True, env=env,
            )  # fmt: skip
        Child.running = proc
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(every):
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    return
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) * 1024)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert proc.stdout is not None
        lines = proc.stdout.read().splitlines()
        proc.wait()
        Child.running = None
        stop.set()
        sampler.join()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("HWM "):
            raise RuntimeError(f"child failed ({proc.returncode}): {log.read_text()[-2000:]}")
        self.lines = lines[:-1]
        self.peak_rss_bytes = int(lines[-1].split()[1])
        self.rss_samples_mib = [round(s / 2**20) for s in samples]


def _part_of_epoch(batches: int, seconds: float, windows: int) -> str:
    rate = batches * BATCH / seconds
    return (
        f"a time-bounded part of one epoch ({batches * BATCH / windows:.1%}), batches drawn in "
        f"the epoch's shuffled order from the whole set; the whole epoch ({windows:,} windows) "
        f"would take about {windows / rate / 60:.0f} minutes at this rate"
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def memory_table(record: dict[str, Any]) -> str:
    """Each part's peak RSS against the bound, and what grew with the data set."""
    m = record["machine"]
    lines = [
        f"*{m['cpu']}, {m['cores']} cores; {record['model']}; bound {_gib(record['bound_bytes'])}"
        f"{'' if record['complete'] else '; incomplete'}.*",
        "",
        "| part | data | peak RSS | under bound | time | load |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for key, label in (
        ("read_quarter", "read every window, quarter set"),
        ("read_every_window", "read every window, whole set"),
        ("train_streamed_on_the_big_set", "train streamed, whole set"),
    ):
        part = record.get(key)
        if part is None:
            continue
        under = "yes" if part["peak_rss_bytes"] < record["bound_bytes"] else "**no**"
        lines.append(
            f"| {label} | {_gib(part['data_bytes'])} | {part['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"| {under} | {part['seconds']:.0f} s | {part['load_average_1min']} |"
        )
    if "read_every_window" in record:
        whole, quarter = record["read_every_window"], record["read_quarter"]
        grew = whole["peak_rss_bytes"] - quarter["peak_rss_bytes"]
        more = whole["windows"] - quarter["windows"]
        lines += [
            "",
            f"Reading the whole set peaked {grew / 2**20:.0f} MiB above the quarter: "
            f"{grew / more:.0f} bytes for each of its {more:,} more sequences.",
        ]
    if "train_streamed_on_the_big_set" in record:
        part = record["train_streamed_on_the_big_set"]
        lines += ["", f"Training: {part['batches']} batches, {part['note']}."]
    return "\n".join(lines) + "\n"


def throughput_table(record: dict[str, Any]) -> str:
    """The in-memory and streamed rounds, A B A B, and their ratio."""
    ab = record["throughput"]
    lines = [
        f"Throughput on {ab['sequences']} sequences that fit ({ab['batches']} batches of "
        f"{BATCH} per fit, load {ab['load_average_1min']}):",
        "",
        "| round | in memory seq/s | streamed seq/s | streamed / in memory |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in range(ab["rounds"]):
        mem, st = ab["memory"][r], ab["stream"][r]
        lines.append(f"| {r + 1} | {mem:.1f} | {st:.1f} | {st / mem:.3f} |")
    lines.append(
        f"| mean | {np.mean(ab['memory']):.1f} | {np.mean(ab['stream']):.1f} | "
        f"**{ab['streamed_over_in_memory']:.3f}** |"
    )
    return "\n".join(lines) + "\n"


def markdown(record: dict[str, Any]) -> str:
    parts = ["# Training from disk: memory bound and throughput\n", memory_table(record)]
    if "throughput" in record:
        parts.append(throughput_table(record))
    if record.get("pass"):
        parts.append("Pass: " + ", ".join(f"{k} {v}" for k, v in record["pass"].items()) + "\n")
    return "\n".join(parts)


def _save(out: Path, record: dict[str, Any]) -> None:
    write_record(out, "train_stream", record, markdown)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--bound-gib", type=float, default=1.0)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--ab-batches", type=int, default=60)
    p.add_argument("--ab-sequences", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path("/tmp/convlstm-bench-stream"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_term)
    bound = int(args.bound_gib * 2**30)
    record: dict[str, Any] = {
        "complete": False,
        "bound_bytes": bound,
        "model": f"ConvLSTM filters [{FILTERS}] on {SIDE}x{SIDE}x{CHANNELS} frames, "
        f"windows of {FRAMES}, batch {BATCH}, TensorFlow",
        "machine": {**describe(), "load_average_1min": _load()},
    }
    big, quarter, small = args.work / "big", args.work / "quarter", args.work / "small"
    log = args.work / "child.log"
    shutil.rmtree(args.work, ignore_errors=True)  # a --keep run's leftovers
    try:
        start = time.monotonic()
        written = write_dataset(big, args.bound_gib * args.scale)
        record["dataset"] = {**written, "write_seconds": round(time.monotonic() - start, 1)}
        quarter.mkdir()
        shards = sorted(big.iterdir())
        for shard in shards[: max(1, len(shards) // 4)]:
            (quarter / shard.name).symlink_to(shard)
        quarter_bytes = sum(s.stat().st_size for s in quarter.iterdir())
        _save(args.out, record)

        for key, path, size in (
            ("read_quarter", quarter, quarter_bytes),
            ("read_every_window", big, written["bytes"]),
        ):
            child = Child(_READ_ALL, str(path), log=log)
            windows, seconds = child.lines[-1].split()
            record[key] = {
                "data_bytes": size,
                "windows": int(windows),
                "seconds": round(float(seconds), 1),
                "peak_rss_bytes": child.peak_rss_bytes,
                "rss_samples_mib": child.rss_samples_mib,
                "load_average_1min": _load(),
            }
            _save(args.out, record)

        child = Child(_TRAIN_BIG, str(big), str(args.train_seconds), FILTERS, log=log)
        batches, seconds, windows = child.lines[-1].split()
        record["train_streamed_on_the_big_set"] = {
            "data_bytes": written["bytes"],
            "windows_in_epoch": int(windows),
            "batches": int(batches),
            "sequences_trained": int(batches) * BATCH,
            "seconds": round(float(seconds), 1),
            "peak_rss_bytes": child.peak_rss_bytes,
            "rss_samples_mib": child.rss_samples_mib,
            "load_average_1min": _load(),
            "note": _part_of_epoch(int(batches), float(seconds), int(windows)),
        }
        _save(args.out, record)

        from model_export.frames import data

        small.mkdir()
        lo = (40 - SIDE) // 2
        fits = data.generate(args.ab_sequences, seed=7)[:, :, lo : lo + SIDE, lo : lo + SIDE]
        np.save(small / "shard.npy", (fits * 255).astype(np.uint8))
        child = Child(
            _AB, str(small / "shard.npy"), str(args.ab_batches), str(args.rounds), FILTERS,
            log=log,
        )  # fmt: skip
        runs = [json.loads(line) for line in child.lines if line.startswith("{")]
        by_mode = {
            m: [r["sequences_per_second"] for r in runs if r["mode"] == m]
            for m in ("memory", "stream")
        }
        record["throughput"] = {
            "sequences": args.ab_sequences,
            "batches": args.ab_batches,
            "rounds": args.rounds,
            **by_mode,
            "streamed_over_in_memory": round(
                float(np.mean(by_mode["stream"]) / np.mean(by_mode["memory"])), 3
            ),
            "peak_rss_bytes": child.peak_rss_bytes,
            "load_average_1min": _load(),
        }
        reads = [record["read_quarter"], record["read_every_window"]]
        peaks = [p["peak_rss_bytes"] for p in (*reads, record["train_streamed_on_the_big_set"])]
        record["pass"] = {
            "dataset_at_least_4x_bound": written["bytes"] >= 4 * bound,
            "every_peak_under_bound": all(peak < bound for peak in peaks),
            "throughput_within_10_percent": record["throughput"]["streamed_over_in_memory"] >= 0.9,
        }
        record["read_peak_whole_minus_quarter_bytes"] = (
            reads[1]["peak_rss_bytes"] - reads[0]["peak_rss_bytes"]
        )
        record["complete"] = True
        record["machine"]["load_average_1min"] = _load()
        _save(args.out, record)
    finally:
        if Child.running is not None:
            Child.running.kill()
            Child.running.wait()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    return 0 if all(record["pass"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
