"""The serving-overhead benchmarks: a smoke run of ``bench.floor`` against the real
server, and the profile grouping on a made-up py-spy file. They check what was
measured and printed, never how fast anything was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.profile_paths import breakdown
from bench.server import REPO

pytestmark = pytest.mark.slow


def test_floor_smoke_prints_every_path_beside_the_floor() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.floor", "--requests", "4", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| predict tensor (JSON, base64)",
        "| OIP infer, JSON data",
        "| OIP infer, binary tensors",
    ]


def test_breakdown_charges_the_innermost_frame_that_names_a_group(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (uvicorn/server.py:1);infer (service/api/oip.py:2);"
        "Session.run (onnxruntime/capi/x.py:3) 3\n"
        "run (uvicorn/server.py:1);parse_request (service/api/oip.py:178) 1\n"
    )
    total, groups, leaves = breakdown(raw, top=1)
    assert total == 4
    assert groups == {"model (onnxruntime)": 3, "JSON parse": 1}
    assert list(leaves) == ["Session.run (onnxruntime/capi/x.py:3)"]
