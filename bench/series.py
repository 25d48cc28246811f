"""The time-series front's cost, ``python -m bench.series``: one series model served by
the real process, asked the same forecast sequentially over KServe's
``POST /v1/timeseries/forecast`` (a JSON list of numbers in the client's units, parsed,
checked, scaled and folded by the server) and over the Open Inference Protocol's
``POST /v2/models/NAME/infer`` (the window already folded and scaled by the client).
Medians of the round trip, and their ratio; both paths run the same graph once.

    python -m bench.series [--model models/series/co2_convlstm2d.onnx] [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.server import REPO, serve
from convlstm_card import card_path, read_card

MODEL = REPO / "models" / "series" / "co2_convlstm2d.onnx"


def timed(client: httpx.Client, path: str, body: dict[str, Any], n: int) -> list[float]:
    for _ in range(10):  # warm-up: connections, first runs
        client.post(path, json=body).raise_for_status()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.post(path, json=body).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.series", description=__doc__)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    card = read_card(card_path(args.model))
    spec = card.series
    if spec is None or spec.features != 1:
        parser.error(f"{args.model}: not a univariate series model")
    offset = spec.scaling.offset[0] if spec.scaling else 0.0
    scale = spec.scaling.scale[0] if spec.scaling else 1.0
    rng = np.random.default_rng(0)
    series = offset + scale * rng.normal(size=spec.window)
    forecast = {
        "model": args.model.stem,
        "inputs": [
            {
                "type": "univariate_time_series",
                "name": "bench",
                "series": series.tolist(),
                "frequency": spec.frequency or "day",
            }
        ],
        "options": {"horizon": spec.horizon},
    }
    window = ((series - offset) / scale).astype(np.float32)
    shape = [1, *[int(d) for d in card.input.shape[1:]]]
    infer = {
        "inputs": [
            {"name": card.input.name, "shape": shape, "datatype": "FP32", "data": window.tolist()}
        ]
    }
    with serve(args.model, "--log-level", "warning") as server, server.client() as client:
        ts = timed(client, "/v1/timeseries/forecast", forecast, args.requests)
        oip = timed(client, f"/v2/models/{args.model.stem}/infer", infer, args.requests)
    ts_ms, oip_ms = 1000 * statistics.median(ts), 1000 * statistics.median(oip)
    print(
        f"model {args.model.stem}, W={spec.window}, h={spec.horizon}, {args.requests} requests each"
    )
    print(f"/v1/timeseries/forecast  median {ts_ms:.3f} ms")
    print(f"/v2/.../infer (OIP)      median {oip_ms:.3f} ms")
    print(f"time-series / OIP        {ts_ms / oip_ms:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
