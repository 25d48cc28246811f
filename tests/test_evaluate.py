from pathlib import Path

import numpy as np
import pytest

from convlstm_card import read_card
from model_export.export.frame_models import export
from model_export.frames import data
from model_export.frames.evaluate import (
    BASELINE,
    evaluate,
    horizon_scores,
    horizon_split,
    mse,
    psnr,
    rollout,
    scores,
    tint_error,
)
from model_export.frames.model import build_convlstm
from model_export.frames.ood import OOD, ood_horizon_split


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
    report = evaluate(
        tmp_path, ["small"], samples=8, latency_repeats=2, grid_path=grid, ood_samples=8
    )

    seqs = data.generate_split(8, "test")
    x, y = data.inputs_and_targets(seqs, every_step=False)
    expected_base = float(mse(x[:, -1], y).mean())
    assert report["metrics"][BASELINE]["mse"] == pytest.approx(expected_base)
    small = report["metrics"]["small"]
    assert small["mse_vs_copy_last"] == pytest.approx(small["mse"] / expected_base)
    assert small["latency_ms_batch1"] > 0
    assert read_card(tmp_path / "small.json").evaluation == report
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = small["fed_back"]
    assert [row["step"] for row in steps] == list(range(1, 9))
    assert steps[0]["mse"] == pytest.approx(small["mse"], rel=1e-5)  # 8 sequences of 8
    assert steps[0]["copy_last_mse"] == pytest.approx(expected_base)
    assert steps[0]["tint_error"] == pytest.approx(small["tint_error"], rel=1e-5)
    # The out-of-distribution set, scored the same way beside the test split.
    ood = report["ood"]
    ox, ofuture = ood_horizon_split(8, 1)
    assert ood["sequences"] == 8 and ood["set"]["name"] == OOD.name
    ood_base = float(mse(ox[:, -1], ofuture[:, 0]).mean())
    assert ood["metrics"][BASELINE]["mse"] == pytest.approx(ood_base)
    assert ood["metrics"]["small"]["mse_vs_copy_last"] == pytest.approx(
        ood["metrics"]["small"]["mse"] / ood_base
    )
    assert len(ood["metrics"]["small"]["fed_back"]) == 8


def test_tint_error_ignores_brightness_and_counts_grey() -> None:
    truth = np.zeros((3, 40, 40, 3), np.float32)
    truth[:, 10:20, 10:20] = [1.0, 0.3, 0.3]
    assert tint_error(truth, truth) == pytest.approx([0, 0, 0])
    dimmer = truth * 0.4  # a faded digit of the right colour
    assert tint_error(dimmer, truth) == pytest.approx([0, 0, 0], abs=1e-7)
    grey = (truth.max(axis=-1, keepdims=True) > 0) * np.float32(0.6) * np.ones(3, np.float32)
    # chromaticity (1, .3, .3)/1.6 against 1/3 each: mean |diff| = 2 * (0.625 - 1/3) / 3
    expected = 2 * (1 / 1.6 - 1 / 3) / 3
    assert tint_error(grey.astype(np.float32), truth) == pytest.approx([expected] * 3)
    # Pixels outside the true digit do not count.
    noisy = truth.copy()
    noisy[:, 30:, 30:] = [0.0, 0.0, 1.0]
    assert tint_error(noisy, truth) == pytest.approx([0, 0, 0])


def test_rollout_feeds_each_prediction_back() -> None:
    frames = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1, 1, 1)
    seen = []

    def next_is_sum(window: np.ndarray) -> np.ndarray:
        seen.append(window.copy())
        return np.asarray(window.sum(axis=1), dtype=np.float32)

    out = rollout(next_is_sum, frames, 3)
    assert out.shape == (2, 3, 1, 1, 1)
    first = frames.sum(axis=1)
    np.testing.assert_array_equal(out[:, 0], first)
    np.testing.assert_array_equal(seen[1][:, -1], first)  # its own frame, now the newest
    np.testing.assert_array_equal(seen[1][:, :-1], frames[:, 1:])
    np.testing.assert_array_equal(out[:, 1], frames[:, 1:].sum(axis=1) + first)


def test_horizon_split_extends_the_next_frame_test_split() -> None:
    x, future = horizon_split(4, 3)
    seqs = data.generate_split(4, "test")
    np.testing.assert_array_equal(x, seqs[:, :15])
    np.testing.assert_array_equal(future[:, 0], seqs[:, 15])
    assert future.shape == (4, 3, 40, 40, 3)


def test_horizon_scores_of_copy_last_are_its_own_baseline() -> None:
    x, future = horizon_split(4, 3)
    copies = np.repeat(x[:, -1:], 3, axis=1)
    rows = horizon_scores(copies, x, future)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["mse_vs_copy_last"] == pytest.approx(1.0)
        assert row["ssim"] == pytest.approx(row["copy_last_ssim"])
    # The farther ahead, the more the digits have moved away from the last frame.
    assert rows[0]["copy_last_mse"] < rows[2]["copy_last_mse"]
