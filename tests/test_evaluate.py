from pathlib import Path

import numpy as np
import pytest

from convlstm_card import read_card
from model_export import data
from model_export.evaluate import BASELINE, evaluate, mse, psnr, scores
from model_export.export import export
from model_export.model import build_convlstm


def test_metrics_on_known_values() -> None:
    truth = np.zeros((2, 40, 40, 3), np.float32)
    pred = np.full_like(truth, 0.1)
    np.testing.assert_allclose(mse(pred, truth), [0.01, 0.01], rtol=1e-6)
    np.testing.assert_allclose(psnr(np.array([0.01])), [20.0])
    same = scores(truth + 0.5, truth + 0.5)
    assert same["mse"] == 0.0
    assert same["ssim"] == pytest.approx(1.0)
    assert scores(pred, truth)["ssim"] < 1.0


@pytest.mark.slow
def test_evaluate_scores_onnx_model_and_baseline_and_fills_the_card(tmp_path: Path) -> None:
    ckpt = tmp_path / "small.keras"
    build_convlstm(filters=(4,)).save(ckpt)
    export(ckpt)
    grid = tmp_path / "grid.png"
    report = evaluate(tmp_path, ["small"], samples=8, latency_repeats=2, grid_path=grid)

    seqs = data.generate_split(8, "test")
    x, y = data.inputs_and_targets(seqs, every_step=False)
    expected_base = float(mse(x[:, -1], y).mean())
    assert report["metrics"][BASELINE]["mse"] == pytest.approx(expected_base)
    small = report["metrics"]["small"]
    assert small["mse_vs_copy_last"] == pytest.approx(small["mse"] / expected_base)
    assert small["latency_ms_batch1"] > 0
    assert read_card(tmp_path / "small.json").evaluation == report
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
