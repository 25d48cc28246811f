"""Where the server's time goes on each path of ``bench.floor``, ``python -m bench.profile_paths``:
py-spy samples the real server (at 200 Hz, Python frames, idle threads left out) while
closed-loop load runs on one path, and each sample goes to the group of the innermost
frame that names one (JSON parse, pydantic validation, array building, model, response
encoding, middleware, uvicorn and the event loop). Needs py-spy (the ``dev`` extra) and
ptrace rights over a child process.

    python -m bench.profile_paths [--requests 300] [--top 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.floor import MODEL, measure, request_paths
from bench.server import serve

# First match wins, so the more specific groups come first.
GROUPS = [
    ("model (onnxruntime)", r"onnxruntime|InferenceSession|session\.py"),
    (
        "response encoding",
        r"json/encoder|dumps|jsonable_encoder|serialize_response|_prepare_response_content"
        r"|encode_png|encode_tensor|tolist|\.render |JSONResponse|_response \(service/api/oip"
        r"|PngImagePlugin|ImageFile|Image\.save|b64encode|model_dump|dump_json",
    ),
    ("JSON parse", r"json/decoder|json/__init__|Request\.json|loads |parse_request"),
    (
        "pydantic validation",
        r"pydantic|_validate|request_body_to_args|solve_dependencies|model_validate",
    ),
    (
        "array building",
        r"numpy|codec\.py|b64decode|_input_batch|model_input|next_frame\.py|tasks/",
    ),
    ("middleware, metrics, logging", r"service/api/middleware|prometheus_client|logging/|uuid"),
    ("request body read", r"Request\.body|Request\.stream|receive"),
    (
        "worker-thread hand-offs",
        r"threading\.py|concurrent/futures|anyio/to_thread|anyio/_backends|scheduler\.py",
    ),
    (
        "uvicorn, starlette, fastapi, event loop",
        r"uvicorn|h11|httptools|asyncio|uvloop|starlette|fastapi",
    ),
]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in GROUPS]


def breakdown(raw: Path, top: int) -> tuple[int, Counter[str], Counter[str]]:
    """Samples in a py-spy ``raw`` file: total, per group, and per innermost frame."""
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            hit = next((name for name, rx in _COMPILED if rx.search(frame)), None)
            if hit:
                groups[hit] += n
                break
        else:
            groups["other"] += n
    return total, groups, Counter(dict(leaves.most_common(top)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_paths", description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="keep the py-spy raw files here")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install the dev extra)")
    env = {"CONVLSTM_ACCESS_LOG": "false", "CONVLSTM_LOG_LEVEL": "warning"}
    with serve(MODEL, env=env) as server, tempfile.TemporaryDirectory() as tmp:
        pid = server.process.pid
        for i, path in enumerate(request_paths(MODEL)):
            measure(pid, server.url, path, 30, 4)
            raw = Path(tmp) / f"path{i}.txt"
            record = subprocess.Popen(
                [spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(raw)]
                + ["--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            m = measure(pid, server.url, path, args.requests, 4)
            record.send_signal(signal.SIGINT)
            record.wait(timeout=60)
            total, groups, leaves = breakdown(raw, args.top)
            print(
                f"\n### {path.name}: {m.cpu_ms_per_request:.2f} ms CPU/request, {m.rps:.0f} req/s"
            )
            print(f"\n{total} samples\n\n| group | share |\n|---|---:|")
            for name, n in groups.most_common():
                print(f"| {name} | {100 * n / total:.1f}% |")
            print("\n| innermost frame | share |\n|---|---:|")
            for name, n in leaves.items():
                print(f"| `{name}` | {100 * n / total:.1f}% |")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, args.keep / raw.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
