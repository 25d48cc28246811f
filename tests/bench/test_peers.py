"""``make bench-peers`` without the peers (CI installs none): the answer check, the
per-round pairing of ratios, the targets and the report on made-up cells, and this
project's own arms end to end at a size that takes seconds. Nothing here checks how
fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.peers.report import (
    FLOOR_BINARY,
    MLSERVER,
    PROJECT_BINARY,
    PROJECT_JSON,
    RAW,
    markdown,
    plot,
    summarise,
    targets,
)
from bench.peers.run import AnswerMismatch, check_answer
from bench.server import REPO


def test_check_answer_passes_within_tolerance_and_refuses_a_wrong_answer() -> None:
    want = np.random.default_rng(0).random((1, 40, 40, 3), dtype=np.float32)
    assert check_answer("ok", want + 1e-6, want) < 1e-4
    with pytest.raises(AnswerMismatch, match="wrong: differs from raw onnxruntime by 0.01"):
        check_answer("wrong", want + 0.01, want)
    with pytest.raises(AnswerMismatch, match=r"shape \(40, 40, 3\)"):
        check_answer("shape", want[0], want)
    nan = want.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(AnswerMismatch):
        check_answer("nan", nan, want)


def cell(r: int, model: str, c: int, arm: str, rps: float, cpu: float = 1.0) -> dict[str, Any]:
    return {
        "round": r,
        "model": model,
        "concurrency": c,
        "arm": arm,
        "requests": 10,
        "ok": 10,
        "errors": 0,
        "rps": rps,
        "p50_ms": 1000.0 / rps,
        "p99_ms": 2000.0 / rps,
        "cpu_ms_per_request": cpu,
    }


def test_ratios_to_raw_pair_figures_of_the_same_round() -> None:
    # Raw onnxruntime drifts between rounds; the median of per-round ratios (0.4) is not
    # the ratio of the medians (60 / 100 = 0.6).
    cells = [
        cell(0, "cnn_lstm", 8, RAW, 100),
        cell(0, "cnn_lstm", 8, PROJECT_BINARY, 60),
        cell(1, "cnn_lstm", 8, RAW, 300),
        cell(1, "cnn_lstm", 8, PROJECT_BINARY, 60),
        cell(2, "cnn_lstm", 8, RAW, 100),
        cell(2, "cnn_lstm", 8, PROJECT_BINARY, 40),
    ]
    rows = summarise(cells)
    assert [r["arm"] for r in rows] == [RAW, PROJECT_BINARY]
    binary = rows[1]
    assert binary["rps"] == 60
    assert binary["x_raw"] == 0.4
    assert binary["rounds"] == 3


def test_targets_say_met_not_met_and_not_measured() -> None:
    cells = []
    for r in range(2):
        cells += [
            cell(r, "cnn_lstm", 8, RAW, 200, cpu=1.5),
            cell(r, "cnn_lstm", 8, PROJECT_JSON, 100, cpu=8.0),
            cell(r, "cnn_lstm", 8, PROJECT_BINARY, 60, cpu=4.0),
            cell(r, "cnn_lstm", 8, FLOOR_BINARY, 900, cpu=1.0),
            cell(r, "convlstm", 1, RAW, 7.0),
            cell(r, "convlstm", 1, PROJECT_JSON, 6.9),
            cell(r, "convlstm", 1, PROJECT_BINARY, 7.0),
        ]
    got = {t["target"].split(" (")[0]: (t["measured"], t["met"]) for t in targets(cells)}
    assert got["cnn_lstm: V2 JSON server CPU per request ≤ 10 ms"] == ("8.00 ms", True)
    assert got["cnn_lstm: V2 binary server CPU per request ≤ 3 ms"] == ("4.00 ms", False)
    assert got["cnn_lstm: V2 binary req/s ≥ 0.4× raw onnxruntime"] == ("0.30×", False)
    assert got["cnn_lstm: V2 binary CPU per request ≤ 2× the bare endpoint's"] == ("4.00×", False)
    assert got["cnn_lstm: V2 JSON req/s ≥ 1.5× MLServer's"] == ("not measured", None)
    assert got["convlstm unchanged: this project's req/s ≥ 0.9× raw onnxruntime"] == (
        "0.99×",
        True,
    )
    cells += [cell(r, "cnn_lstm", 8, MLSERVER, 50) for r in range(2)]
    json_vs_mlserver = targets(cells)[4]
    assert (json_vs_mlserver["measured"], json_vs_mlserver["met"]) == ("2.00×", True)


def test_report_lists_every_server_and_target(tmp_path: Path) -> None:
    cells = [
        cell(0, "cnn_lstm", c, arm, rps)
        for c in (1, 8)
        for arm, rps in ((RAW, 400), (PROJECT_JSON, 100), (MLSERVER, 40))
    ]
    summary = summarise(cells)
    report = {
        "machine": {"cpu": "test CPU", "cores": 2, "provider": "CPU", "python": "3.11"},
        "versions": {"MLServer": "1.7.1"},
        "settings": {
            "session": "2 threads",
            "rounds": 1,
            "requests": 10,
            "slow_requests": 2,
            "models": ["cnn_lstm"],
            "answer_tolerance": 1e-4,
        },
        "answers_max_abs_diff": {"x": 0.0},
        "load_seen": [{"load1": 3.5, "busy_cores": 1.2}],
        "summary": summary,
        "targets": targets(cells),
    }
    text = markdown(report)
    assert "| 8 | MLServer, V2 JSON | 40.0 | 0.10 |" in text
    assert "| 1 | this project, V2 JSON | 100.0 | 0.25 |" in text
    assert "1-minute load average 3.50–3.50" in text
    assert "| cnn_lstm: V2 JSON req/s ≥ 1.5× MLServer's (concurrency 8) | 2.50× | yes |" in text
    plot(summary, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_project_arms_end_to_end_without_peers(tmp_path: Path) -> None:
    """This project's server and the bare endpoint, real processes on loopback, checked
    against raw onnxruntime, a few requests each."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers.run", "--peers", "--models", "cnn_lstm"]
        + ["--rounds", "1", "--requests", "3", "--concurrency", "1", "2"]
        + ["--max-wait", "0", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "peers.json").read_text())
    arms = {c["arm"] for c in report["cells"]}
    assert arms == {RAW, PROJECT_JSON, PROJECT_BINARY, "bare endpoint, V2 JSON", FLOOR_BINARY}
    assert all(c["ok"] == c["requests"] for c in report["cells"])
    assert len(report["cells"]) == 2 * len(arms)
    assert set(report["answers_max_abs_diff"]) == {f"{a} on cnn_lstm" for a in arms - {RAW}}
    assert (tmp_path / "peers.png").is_file()
    assert "## cnn_lstm" in (tmp_path / "peers.md").read_text()
