"""A closed-loop load generator: N clients, each sending its next request when the last
is answered, until a request count or a time limit is reached (whichever comes first)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    fixed_percentiles: dict[float, float] = field(default_factory=dict)
    """Percentiles a generator reported itself (wrk keeps no list of latencies)."""

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if q in self.fixed_percentiles:
            return self.fixed_percentiles[q]
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": sum(self.statuses.values()) + self.transport_errors,
            "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "transport_errors": self.transport_errors,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


async def _closed_loop(
    url: str,
    body: dict[str, Any] | bytes,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    path: str,
    headers: dict[str, str] | None,
) -> LoadResult:
    result = LoadResult(concurrency, 0.0)
    issued = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                try:
                    if isinstance(body, bytes):
                        r = await client.post(path, content=body, headers=headers)
                    else:
                        r = await client.post(path, json=body, headers=headers)
                except httpx.TransportError:
                    result.transport_errors += 1
                    continue
                result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
                result.statuses[r.status_code] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def closed_loop(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    path: str = "/predict",
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """``body`` is JSON to encode per request, or bytes sent as they are (encoded once,
    so the load generator's CPU stays off the shared cores)."""
    return asyncio.run(
        _closed_loop(url, body, concurrency, max_requests, max_seconds, path, headers)
    )
