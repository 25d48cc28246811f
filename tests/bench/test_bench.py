"""Smoke runs of the benchmark suite and the soak test, so that both keep working.
They assert what was measured and written, never how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.redis_server import REDIS_SERVER
from bench.server import REPO
from bench.soak import markdown, soak
from bench.workload import flops_per_sequence
from convlstm_card import read_card
from tests.service.stream_tools import require

pytestmark = pytest.mark.slow


def test_gflop_arithmetic_matches_the_issue() -> None:
    # 17.9 G multiply-adds per sequence for the 30/50/60/70 stack (the head adds 3 M),
    # counted from the served model's card.
    card = read_card(REPO / "models" / "convlstm.json")
    assert flops_per_sequence(card) / 1e9 == pytest.approx(35.75, abs=0.01)


def test_suite_smoke_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["smoke"] is True
    assert {"cpu", "cores", "provider"} <= data["machine"].keys()
    assert {r["graph"] for r in data["compute"]["rows"]} >= {"served graph"}
    for key in ("load_batching_on", "load_batching_off"):
        rows = data[key]["rows"]
        assert [r["concurrency"] for r in rows] == [1, 2]
        assert all(r["ok"] == r["requests"] > 0 for r in rows), rows
    assert {v["target"] for v in data["verdicts"]} >= {
        "ready within 5 s",
        "resident memory < 500 MB",
    }
    int8 = data["load_int8"]
    assert int8["model"] == "convlstm_int8.onnx"
    assert [r["concurrency"] for r in int8["rows"]] == [1, 2]
    assert all(r["ok"] == r["requests"] > 0 for r in int8["rows"]), int8
    assert {r["graph"] for r in data["compute"]["rows"]} >= {"served graph", "int8 graph (opt-in)"}
    markdown = (tmp_path / "results.md").read_text()
    assert "SMOKE RUN" in markdown and "opt-in int8 graph as its model" in markdown
    with Image.open(tmp_path / "results.png") as img:
        assert img.format == "PNG" and img.width > 100
    # The sim section: every point answered, every ratio beside its baseline.
    sim = json.loads((tmp_path / "sim.json").read_text())
    assert sim["smoke"] is True and sim["generator"]
    rows = sim["against_ideal"]["rows"]
    assert {(r["path"], r["clients"]) for r in rows} == {
        (p, c) for p in ("oip_binary", "predict_png") for c in (1, 4)
    }
    assert all(r["ok"] == r["requests"] > 0 and r["of_ideal"] > 0 for r in rows), rows
    ratios = sim["change_cost"]["ratios"]
    assert {r["path"] for r in ratios} == {"oip_binary", "predict_horizon3", "streams"}
    assert all(r["no_change_rps"] > 0 and r["change_rps"] > 0 for r in ratios), ratios
    controls = sim["change_cost"]["controls"]
    assert len(controls) == 4 and all(r["ok"] == r["requests"] > 0 for r in controls), controls
    assert "simulated device" in (tmp_path / "sim.md").read_text()
    # The transports section: every transport answered at both client counts.
    transports = json.loads((tmp_path / "transports.json").read_text())
    assert {(r["transport"], r["clients"]) for r in transports["rows"]} == {
        (t, c) for t in ("gRPC raw", "REST binary", "REST JSON") for c in (1, 8)
    }
    assert all(r["ok"] > 0 and r["failed"] == 0 and r["of_raw"] > 0 for r in transports["rows"])
    assert "gRPC beside REST" in (tmp_path / "transports.md").read_text()
    # The stream-store section: every store answered every step, its ratios beside memory.
    store = json.loads((tmp_path / "stream_store.json").read_text())
    if "skipped" in store:  # no redis-server: skips, or fails under REQUIRE_STREAM_TOOLS=1
        require(REDIS_SERVER)
    assert store["smoke"] is True and set(store["runs"]) == {
        f"{name}@2" for name in ("memory", "redis_drain", "redis_step")
    }
    assert all(r["p50_ms"] > 0 and r["steps_per_s"] > 0 for r in store["runs"].values())
    assert store["components"]["blob_bytes"] > store["components"]["state_bytes"] > 0
    assert "Stream state in Redis" in (tmp_path / "stream_store.md").read_text()


def test_soak_smoke_reports_windows_and_memory() -> None:
    report = soak(
        REPO / "models" / "convlstm.onnx",
        minutes=0.05,
        concurrency=2,
        window_s=0.5,
        horizon=1,
        warmup_s=0.5,
    )
    assert report["requests_ok"] > 0
    assert report["unexpected_errors"] == 0
    assert report["warmup"]["ok"] > 0
    # A window ends when its time is up and its requests are answered, so a slow machine
    # may fit only one in the time.
    assert len(report["windows"]) >= 1
    assert sum(w["ok"] for w in report["windows"]) == report["requests_ok"]
    assert report["rss_mb_after_warmup"] > 0 and "memory_growth" in report
    assert "Requests served" in markdown(report)
