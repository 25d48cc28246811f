"""Evaluation of the exported ONNX models on the held-out test split.

The served artifact is the ONNX file, so that is what gets scored: next-frame
MSE, PSNR and SSIM for each model and for the copy-last-frame baseline, and
per-sequence latency of each model on onnxruntime (CPU), all in one run on one
machine so the figures compare. Beside them: the tint error (how far the colour of
the predicted digits is from the true colour, ``tint_error``) and, for horizons
1..8, the same scores when each prediction is fed back as the newest input frame
(``rollout``), each against copying the last observed frame. The same scores on the
out-of-distribution set (``ood``: other glyphs, speeds, bounce rules, occlusion and
backgrounds, never trained on) go beside them under ``ood``: the gap between the two is
how much of a model's skill belongs to its own generator.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convlstm_card import card_path, read_card, write_card
from model_export.files import find_onnx
from model_export.frames import data
from model_export.frames.model import INPUT_NAME, OUTPUT_NAME
from model_export.host import describe_machine

BASELINE = "copy_last_frame"
# Fed-back horizons scored by ``evaluate``: frame 16 ... frame 23 from frames 1-15.
HORIZON = 8
# A pixel belongs to a digit where the truth's brightest channel reaches this: the
# digits' colours have every channel in [0.3, 1], the background is 0.
DIGIT_THRESHOLD = 0.25

Predictor = Callable[[NDArray[np.float32]], NDArray[np.float32]]


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


def tint_error(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-frame colour error of the digits: the mean RGB of the prediction and of the
    truth over the truth's digit pixels, each reduced to its chromaticity
    ``(r, g, b) / (r + g + b)``, and the mean absolute difference of the two over the
    channels. Brightness and blur cancel out; a grey prediction of a coloured digit
    scores its full tint (0.19 for a digit of colour (1, 0.3, 0.3)). Frames with
    no digit pixel count 0."""
    mask = (truth.max(axis=-1) >= DIGIT_THRESHOLD)[..., None]
    count = np.maximum(mask.sum(axis=(1, 2)), 1)
    mean_pred = (pred.astype(np.float64) * mask).sum(axis=(1, 2)) / count
    mean_truth = (truth.astype(np.float64) * mask).sum(axis=(1, 2)) / count

    def chroma(c: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(c / np.maximum(c.sum(axis=-1, keepdims=True), 1e-6))

    return np.asarray(np.abs(chroma(mean_pred) - chroma(mean_truth)).mean(axis=-1))


def scores(pred: NDArray[np.float32], truth: NDArray[np.float32]) -> dict[str, float]:
    per_seq = mse(pred, truth)
    return {
        "mse": float(per_seq.mean()),
        "psnr_db": float(psnr(per_seq).mean()),
        "ssim": float(ssim(pred, truth).mean()),
        "tint_error": float(tint_error(pred, truth).mean()),
    }


def rollout(predict: Predictor, frames: NDArray[np.float32], horizon: int) -> NDArray[np.float32]:
    """Predictions (n, horizon, H, W, C) for the ``horizon`` frames after ``frames``
    (n, T, H, W, C): each prediction joins the window as its newest frame and the
    oldest leaves, so step k sees k - 1 of the model's own frames."""
    window = frames
    out = []
    for _ in range(horizon):
        nxt = predict(window)
        out.append(nxt)
        window = np.concatenate([window[:, 1:], nxt[:, None]], axis=1)
    return np.stack(out, axis=1)


def horizon_split(samples: int, horizon: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Test-split inputs (n, 15, ...) and the ``horizon`` true frames after them.

    The generator's random draws do not depend on the sequence length, so the first 16
    frames are exactly ``generate_split(samples, "test")``: step 1 is the next-frame test.
    """
    seqs = data.generate_split(samples, "test", frames=data.FRAMES + horizon)
    return seqs[:, : data.FRAMES], seqs[:, data.FRAMES :]


def horizon_scores(
    predictions: NDArray[np.float32], inputs: NDArray[np.float32], future: NDArray[np.float32]
) -> list[dict[str, float]]:
    """Scores per fed-back step (1-based in ``step``), each with copy-last-frame's MSE,
    SSIM and tint error at that step and the model's MSE as a fraction of it."""
    last = inputs[:, -1]
    rows = []
    for k in range(future.shape[1]):
        model = scores(predictions[:, k], future[:, k])
        base = scores(last, future[:, k])
        rows.append(
            {
                "step": k + 1,
                **model,
                "mse_vs_copy_last": model["mse"] / base["mse"],
                "copy_last_mse": base["mse"],
                "copy_last_ssim": base["ssim"],
                "copy_last_tint_error": base["tint_error"],
            }
        )
    return rows


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
    horizon: int = HORIZON,
    horizon_samples: int = 64,
    ood_samples: int = 256,
) -> dict[str, Any]:
    """Score each named ONNX model in ``models_dir`` and the baseline on the test split:
    the next frame on ``samples`` sequences, and ``horizon`` fed-back steps on the
    first ``horizon_samples`` of them (0: none); then the same on ``ood_samples``
    sequences of the out-of-distribution set (0: none)."""
    models = {name: OnnxModel(find_onnx(models_dir, name)) for name in names}
    x, future = horizon_split(samples, max(horizon, 1))
    results, predictions = score_models(models, x, future, horizon, horizon_samples)
    for name, model in models.items():
        results[name]["latency_ms_batch1"] = model.latency_ms(x, latency_repeats)
    report: dict[str, Any] = {
        "split": "test",
        "sequences": samples,
        "target": "frame 16 given frames 1-15",
        "fed_back": f"frames 16-{data.FRAMES + horizon}, each prediction fed back as input, "
        f"on the first {min(horizon_samples, samples)} sequences",
        "machine": describe_machine(),
        "provider": "CPUExecutionProvider",
        "metrics": results,
    }
    if ood_samples > 0:
        report["ood"] = evaluate_ood(models, ood_samples, horizon, horizon_samples)
    if write_cards:
        for name in names:
            path = card_path(find_onnx(models_dir, name))
            write_card(path, read_card(path).model_copy(update={"evaluation": report}))
    if grid_path is not None:
        from model_export.frames.plots import prediction_grid

        prediction_grid(x[:4], future[:4, 0], predictions, grid_path)
    return report


def score_models(
    models: Mapping[str, Predictor],
    x: NDArray[np.float32],
    future: NDArray[np.float32],
    horizon: int,
    horizon_samples: int,
) -> tuple[dict[str, Any], dict[str, NDArray[np.float32]]]:
    """Next-frame scores of each model and of copy-last-frame on ``x`` (frame 1 of
    ``future`` is the truth), each model's MSE as a fraction of the baseline's, and the
    fed-back steps on the first ``horizon_samples``; with the next-frame predictions."""
    truth = future[:, 0]
    results: dict[str, Any] = {BASELINE: scores(x[:, -1], truth)}
    predictions = {}
    for name, model in models.items():
        predictions[name] = model(x)
        results[name] = scores(predictions[name], truth)
        if horizon > 0 and horizon_samples > 0:
            n = min(horizon_samples, len(x))
            fed = rollout(model, x[:n], horizon)
            results[name]["fed_back"] = horizon_scores(fed, x[:n], future[:n, :horizon])
    base = results[BASELINE]["mse"]
    for name in models:
        results[name]["mse_vs_copy_last"] = results[name]["mse"] / base
    return results, predictions


def evaluate_ood(
    models: Mapping[str, Predictor], samples: int, horizon: int, horizon_samples: int
) -> dict[str, Any]:
    """``score_models`` on ``samples`` sequences of the out-of-distribution set."""
    from model_export.frames.ood import OOD, ood_horizon_split

    x, future = ood_horizon_split(samples, max(horizon, 1))
    results, _ = score_models(models, x, future, horizon, horizon_samples)
    return {
        "set": OOD.as_dict(),
        "sequences": samples,
        "target": "frame 16 given frames 1-15",
        "fed_back": f"frames 16-{data.FRAMES + horizon}, on the first "
        f"{min(horizon_samples, samples)} sequences",
        "metrics": results,
    }
