"""Closed-loop load from ``wrk`` (Debian's ``wrk`` package), for the points where the
Python load generator would be the bottleneck: a C client on its own thread per core,
``connections`` clients each sending its next request when the last is answered.

A Lua script posts one prepared body with its headers and prints, at the end, a JSON line
with the request count, the errors and the latency percentiles, which ``run`` reads back
into the same ``LoadResult`` the Python generator fills.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.load import LoadResult

_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*all")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "mean_us": %f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    path: str,
    threads: int = 2,
) -> LoadResult:
    """``connections`` closed-loop clients posting ``body`` to ``url + path`` for
    ``seconds``. Requests that got a status other than 2xx or 3xx count as failed."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
        script = Path(tmp) / "post.lua"
        script.write_text(_SCRIPT.format(body=body_file, headers="\n".join(lines)))
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "60s",
                "-s",
                str(script),
                url + path,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 90,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    result = LoadResult(connections, data["duration_us"] / 1e6)
    failed = data["status"]
    result.statuses[200] = data["requests"] - failed
    if failed:
        result.statuses[0] = failed  # wrk counts them, without saying which status
    result.transport_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    # wrk keeps a histogram, not each latency: the percentiles stand in for the list.
    result.fixed_percentiles = {
        50.0: data["p50_us"] / 1000.0,
        95.0: data["p95_us"] / 1000.0,
        99.0: data["p99_us"] / 1000.0,
    }
    return result
