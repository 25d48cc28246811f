"""Two servers side by side, ``python -m bench.compare``: server CPU per request and
req/s of arm B over arm A on the paths of ``bench.floor``, in interleaved rounds (the
order flips each round), so both see the same machine. How each change in
``bench/results/profile.md`` was measured.

    python -m bench.compare --a before=/path/to/other/checkout \\
        --b after=. [--requests 300] [--rounds 2]

An arm is ``LABEL=CHECKOUT[=PYTHON]``: the server runs from that checkout, after the
optional Python statements (say ``import os; os.environ['CONVLSTM_X']='1'``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from bench.floor import MODEL, Measured, measure, ratio, request_paths
from bench.server import free_port


def start(spec: str) -> tuple[str, subprocess.Popen[bytes], str]:
    label, cwd, *prelude = spec.split("=", 2)
    port = free_port()
    code = (prelude[0] + "\n" if prelude else "") + (
        "import sys\nfrom service.__main__ import main\n"
        f"sys.exit(main(['--port', '{port}', '--model', '{MODEL}']))"
    )
    env = {**os.environ, "CONVLSTM_ACCESS_LOG": "false", "CONVLSTM_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return label, process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{label}: not ready within 120 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    arms = [start(args.a), start(args.b)]
    paths = request_paths(MODEL)
    got: dict[tuple[str, str], list[Measured]] = {(a[0], p.name): [] for a in arms for p in paths}
    try:
        for r in range(args.rounds):
            for p in paths:
                for label, process, url in arms if r % 2 == 0 else arms[::-1]:
                    got[label, p.name].append(measure(process.pid, url, p, args.requests, 4))
    finally:
        for _, process, _ in arms:
            process.terminate()
            process.wait(timeout=30)
    a, b = arms[0][0], arms[1][0]
    print(
        f"| path | {a} CPU ms/req | {b} CPU ms/req | CPU {b}/{a} | {a} req/s | {b} req/s | req/s {b}/{a} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        ma, mb = got[a, p.name], got[b, p.name]
        if any(m.ok != args.requests for m in ma + mb):
            raise SystemExit(f"{p.name}: not every request was answered 200")
        ca = min(m.cpu_ms_per_request for m in ma)
        cb = min(m.cpu_ms_per_request for m in mb)
        ra, rb = max(m.rps for m in ma), max(m.rps for m in mb)
        print(
            f"| {p.name} | {ca:.2f} | {cb:.2f} | {ratio(cb, ca)} | {ra:.0f} | {rb:.0f} | {ratio(rb, ra)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
