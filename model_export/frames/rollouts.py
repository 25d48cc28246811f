"""The two ways to predict h frames ahead, scored against the truth on the test split.

- ``window``: the windowed graph on the last T frames, each prediction appended to the
  window and the oldest frame dropped, every step from a zero state (what ``/predict``
  did first): T steps per predicted frame.
- ``state``: the step graph over the T frames from a zero state, then each prediction fed
  back as one more step (``/predict``'s ``rollout: "state"``, and streams): T + h - 1 steps
  in all.

Both give the same first frame; after it they differ, since the window forgets its
oldest real frames while the state carries them. ``python -m model_export rollouts``
prints the per-step table the README shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convlstm_card import read_card
from model_export.frames import data
from model_export.frames.evaluate import mse, ssim
from model_export.frames.model import INPUT_NAME, OUTPUT_NAME


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def window_rollout(onnx_path: Path, x: NDArray[np.float32], horizon: int) -> NDArray[np.float32]:
    """(N, T, H, W, C) -> (N, horizon, H, W, C) by the sliding window."""
    session = _session(onnx_path)
    window = x.copy()
    out = []
    for _ in range(horizon):
        frame = session.run([OUTPUT_NAME], {INPUT_NAME: window})[0]
        out.append(frame)
        window = np.concatenate([window[:, 1:], frame[:, None]], axis=1)
    return np.stack(out, axis=1)


def state_rollout(onnx_path: Path, x: NDArray[np.float32], horizon: int) -> NDArray[np.float32]:
    """(N, T, H, W, C) -> (N, horizon, H, W, C) by the step graph, state carried on."""
    card = read_card(onnx_path.with_suffix(".json"))
    if card.stream is None:
        raise ValueError(f"{onnx_path}: its card names no step graph")
    spec = card.stream
    session = _session(onnx_path.parent / spec.step_graph.file)
    state = {
        s.name: np.zeros((len(x), *(int(d) for d in s.shape[1:])), np.float32) for s in spec.state
    }
    names = [s.name for s in spec.state]
    out = []
    frame = x[:, 0]
    for t in range(x.shape[1] + horizon - 1):
        feed = x[:, t] if t < x.shape[1] else frame
        results = session.run(None, {spec.frame.name: feed, **state})
        frame = results[0]
        state = dict(zip(names, results[1:], strict=True))
        if t >= x.shape[1] - 1:
            out.append(frame)
    return np.stack(out, axis=1)


def compare(onnx_path: Path, samples: int = 64, horizon: int = 8) -> dict[str, Any]:
    """Per-step MSE and SSIM of both roll-outs on ``samples`` test sequences."""
    frames = 15
    seqs = data.generate_split(samples, "test", frames=frames + horizon)
    x, truth = seqs[:, :frames], seqs[:, frames:]
    preds = {
        "window": window_rollout(onnx_path, x, horizon),
        "state": state_rollout(onnx_path, x, horizon),
    }
    table: dict[str, Any] = {"samples": samples, "split": "test", "model": onnx_path.name}
    for name, pred in preds.items():
        table[name] = [
            {
                "step": h + 1,
                "mse": float(mse(pred[:, h], truth[:, h]).mean()),
                "ssim": float(ssim(pred[:, h], truth[:, h]).mean()),
            }
            for h in range(horizon)
        ]
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| h | MSE window | MSE state | SSIM window | SSIM state |",
        "|---|---|---|---|---|",
    ]
    for w, s in zip(table["window"], table["state"], strict=True):
        lines.append(
            f"| {w['step']} | {w['mse']:.5f} | {s['mse']:.5f} | {w['ssim']:.4f} | {s['ssim']:.4f} |"
        )
    return "\n".join(lines)


def main(onnx_path: Path, samples: int, horizon: int, out: Path | None) -> int:
    table = compare(onnx_path, samples, horizon)
    if out is not None:
        out.write_text(json.dumps(table, indent=2) + "\n")
    print(markdown(table))
    return 0
