import subprocess
import sys
from pathlib import Path

import pytest

from model_export.export.frame_models import export
from model_export.frames.model import build_convlstm


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_export", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_summary_prints_both_tables() -> None:
    out = run_cli("summary")
    assert out.returncode == 0, out.stderr
    for text in ("convlstm:", "cnn_lstm:", "35,760", "144,200", "237,840", "327,880", "745,680"):
        assert text in out.stdout
    assert "next_frame_keep" in out.stdout and "1,262" in out.stdout  # the carry head


def test_unknown_variant_is_refused_with_a_message() -> None:
    out = run_cli("train", "--variant", "resnet")
    assert out.returncode == 2
    assert "invalid choice: 'resnet'" in out.stderr


@pytest.mark.slow
def test_check_fails_when_the_onnx_file_was_replaced(tmp_path: Path) -> None:
    # Two checkpoints of the same shape; the ONNX file of one is passed off as the other's.
    build_convlstm(filters=(4,)).save(tmp_path / "convlstm.keras")
    build_convlstm(filters=(4,)).save(tmp_path / "cnn_lstm.keras")
    export(tmp_path / "convlstm.keras")
    export(tmp_path / "cnn_lstm.keras")
    assert run_cli("check", "--models", str(tmp_path)).returncode == 0

    for suffix in (".onnx", ".json"):
        (tmp_path / f"cnn_lstm{suffix}").write_bytes((tmp_path / f"convlstm{suffix}").read_bytes())
    out = run_cli("check", "--models", str(tmp_path))
    assert out.returncode == 1
    assert "cnn_lstm" in out.stderr and "differs from" in out.stderr
