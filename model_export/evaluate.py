"""Evaluation of the exported ONNX models on the held-out test split.

The served artifact is the ONNX file, so that is what gets scored: next-frame
MSE, PSNR and SSIM for each model and for the copy-last-frame baseline, and
per-sequence latency of each model on onnxruntime (CPU), all in one run on one
machine so the figures compare.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convlstm_card import card_path, read_card, write_card
from model_export import data
from model_export.host import describe_machine
from model_export.model import INPUT_NAME, OUTPUT_NAME
from model_export.quantize import find_onnx

BASELINE = "copy_last_frame"


def mse(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-sequence mean squared error over pixels and channels."""
    return np.asarray(np.mean((pred.astype(np.float64) - truth) ** 2, axis=(1, 2, 3)))


def psnr(per_seq_mse: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-sequence PSNR in dB for values in [0, 1]; an exact match is capped at 100 dB."""
    return np.asarray(10.0 * np.log10(1.0 / np.maximum(per_seq_mse, 1e-10)))


def ssim(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> NDArray[np.float64]:
    from skimage.metrics import structural_similarity

    return np.array(
        [
            structural_similarity(p, t, channel_axis=-1, data_range=1.0)  # type: ignore[no-untyped-call]
            for p, t in zip(pred, truth, strict=True)
        ]
    )


def scores(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> dict[str, float]:
    per_seq = mse(pred, truth)
    return {
        "mse": float(per_seq.mean()),
        "psnr_db": float(psnr(per_seq).mean()),
        "ssim": float(ssim(pred, truth).mean()),
    }


class OnnxModel:
    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: NDArray[np.float32], batch: int = 16) -> NDArray[np.float32]:
        parts = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0]
            for i in range(0, len(x), batch)
        ]
        return np.concatenate(parts)

    def latency_ms(self, x: NDArray[np.float32], repeats: int) -> float:
        """Median wall time of one batch-1 call, after one warm-up call."""
        one = x[:1]
        self(one)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self(one)
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)


def evaluate(
    models_dir: Path,
    names: list[str],
    *,
    samples: int = 256,
    latency_repeats: int = 10,
    grid_path: Path | None = None,
    write_cards: bool = True,
) -> dict[str, Any]:
    """Score each named ONNX model in ``models_dir`` and the baseline on the test split."""
    seqs = data.generate_split(samples, "test")
    x, truth = data.inputs_and_targets(seqs, every_step=False)
    results: dict[str, Any] = {BASELINE: scores(x[:, -1], truth)}
    predictions = {}
    for name in names:
        model = OnnxModel(find_onnx(models_dir, name))
        predictions[name] = model(x)
        results[name] = scores(predictions[name], truth)
        results[name]["latency_ms_batch1"] = model.latency_ms(x, latency_repeats)
    base = results[BASELINE]["mse"]
    for name in names:
        results[name]["mse_vs_copy_last"] = results[name]["mse"] / base
    report = {
        "split": "test",
        "sequences": samples,
        "target": "frame 16 given frames 1-15",
        "machine": describe_machine(),
        "provider": "CPUExecutionProvider",
        "metrics": results,
    }
    if write_cards:
        for name in names:
            path = card_path(find_onnx(models_dir, name))
            write_card(path, read_card(path).model_copy(update={"evaluation": report}))
    if grid_path is not None:
        from model_export.plots import prediction_grid

        prediction_grid(x[:4], truth[:4], predictions, grid_path)
    return report
