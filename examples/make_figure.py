"""Make the README's example request and its picture from a running server.

    python examples/make_figure.py [--url http://127.0.0.1:8000]

Writes ``examples/request.json`` (15 frames of one test-split moving-digit sequence,
horizon 3) and ``docs/prediction.png``: for that sequence and for one of the
out-of-distribution (OOD) set, which the model never trained on, the last input frames,
the true next three frames and the three the server predicted, each predicted frame
with its MSE as a multiple of copying the last input frame (lower is better; 1.0 =
copying it). Needs the ``train`` extra for the data generators and the fonts (``make
fonts``); the server needs nothing but its own extras.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from model_export.frames import data, scenes
from model_export.frames.ood import OOD, OOD_SEED

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 3
SAMPLE = 5  # which test-split sequence
# Which OOD sequence (one of the demo page's): another font, a held-out digit at another
# scale, a graded background and an occluding bar.
OOD_SAMPLE = 5
SCALE = 4
SHOWN_INPUTS = 5
SIZE, GAP, LABEL_W, TITLE_H, CAPTION_H = 40 * SCALE, 6, 110, 22, 18


def png_b64(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def tile(frame: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.rint(np.clip(frame, 0, 1) * 255).astype(np.uint8))
    return img.resize((img.width * SCALE, img.height * SCALE), Image.Resampling.NEAREST)


def vs_copy_last(inputs: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> list[float]:
    """Per step, the predicted frame's MSE as a multiple of the last input frame's."""
    return [
        float(np.mean((p - t) ** 2) / np.mean((inputs[-1] - t) ** 2))
        for p, t in zip(predicted, truth, strict=True)
    ]


def block(
    draw: ImageDraw.ImageDraw,
    canvas: Image.Image,
    top: int,
    title: str,
    frames: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> int:
    """One sequence's rows (truth, predicted) under a title; returns the next free y."""
    inputs, truth, predicted = frames
    draw.text((8, top + 4), title, fill="black")
    y = top + TITLE_H
    for name, row in (("truth", truth), ("predicted", predicted)):
        draw.text((8, y + SIZE // 2), name, fill="black")
        shown = [*inputs[-SHOWN_INPUTS:], *row] if name == "truth" else list(row)
        first = 0 if name == "truth" else SHOWN_INPUTS
        for c, frame in enumerate(shown, start=first):
            canvas.paste(tile(frame), (LABEL_W + c * (SIZE + GAP), y))
        y += SIZE + GAP
    for c, ratio in enumerate(vs_copy_last(inputs, truth, predicted), start=SHOWN_INPUTS):
        x = LABEL_W + c * (SIZE + GAP)
        draw.text((x + 4, y - GAP + 2), f"MSE {ratio:.2f}x copy-last", fill="black")
    return y + CAPTION_H


def figure(
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    ood: tuple[np.ndarray, np.ndarray, np.ndarray],
    ood_title: str,
) -> Image.Image:
    cols = SHOWN_INPUTS + HORIZON
    height = 24 + 2 * (TITLE_H + 2 * (SIZE + GAP) + CAPTION_H)
    canvas = Image.new("RGB", (LABEL_W + cols * (SIZE + GAP), height), "white")
    draw = ImageDraw.Draw(canvas)
    first = data.FRAMES - SHOWN_INPUTS + 1
    for c in range(cols):
        label = f"t={first + c}" + (" (input)" if c < SHOWN_INPUTS else "")
        draw.text((LABEL_W + c * (SIZE + GAP) + 4, 4), label, fill="black")
    y = block(draw, canvas, 24, f"Test split, sequence {SAMPLE}", test)
    block(draw, canvas, y, ood_title, ood)
    return canvas


def predict(url: str, inputs: np.ndarray) -> tuple[dict[str, object], np.ndarray]:
    request = {"frames": [png_b64(f) for f in inputs], "horizon": HORIZON}
    response = httpx.post(f"{url}/predict", json=request, timeout=60)
    response.raise_for_status()
    body = response.json()
    predicted = np.stack(
        [np.asarray(Image.open(io.BytesIO(base64.b64decode(f)))) / 255.0 for f in body["frames"]]
    )
    return body, predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    length = data.FRAMES + HORIZON
    seq = data.generate_split(SAMPLE + 1, "test", frames=length)
    test_inputs, test_truth = seq[SAMPLE, : data.FRAMES], seq[SAMPLE, data.FRAMES :]
    request = {"frames": [png_b64(f) for f in test_inputs], "horizon": HORIZON}
    (ROOT / "examples" / "request.json").write_text(json.dumps(request) + "\n")
    body, test_predicted = predict(args.url, test_inputs)

    ood_seq = scenes.render(OOD, OOD_SAMPLE + 1, seed=OOD_SEED, frames=length)[OOD_SAMPLE]
    scene = scenes.draw_scenes(OOD, OOD_SAMPLE + 1, seed=OOD_SEED, frames=length)[OOD_SAMPLE]
    ood_inputs, ood_truth = ood_seq[: data.FRAMES], ood_seq[data.FRAMES :]
    _, ood_predicted = predict(args.url, ood_inputs)
    ood_title = f"Out of distribution, sequence {OOD_SAMPLE}: {scene.describe()}"
    figure(
        (test_inputs, test_truth, test_predicted),
        (ood_inputs, ood_truth, ood_predicted),
        ood_title,
    ).save(ROOT / "docs" / "prediction.png", optimize=True)
    for name, frames in (
        ("test", (test_inputs, test_truth, test_predicted)),
        ("ood", (ood_inputs, ood_truth, ood_predicted)),
    ):
        ratios = ", ".join(f"{r:.2f}" for r in vs_copy_last(*frames))
        print(f"{name}: MSE x copy-last per step {ratios}")
    print(f"{body['model']} {body['model_version']} on {body['provider']}")


if __name__ == "__main__":
    main()
