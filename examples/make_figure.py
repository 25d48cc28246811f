"""Make the README's example request and its picture from a running server.

    python examples/make_figure.py [--url http://127.0.0.1:8000]

Writes ``examples/request.json`` (15 frames of one test-split moving-digit sequence,
horizon 3) and ``docs/prediction.png`` (the last input frames, the true next three
frames, and the three the server predicted). Needs the ``train`` extra for the data
generator; the server needs nothing but its own extras.
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

from model_export.frames import data

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 3
SAMPLE = 5  # which test-split sequence
SCALE = 4
SHOWN_INPUTS = 5


def png_b64(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def tile(frame: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.rint(np.clip(frame, 0, 1) * 255).astype(np.uint8))
    return img.resize((img.width * SCALE, img.height * SCALE), Image.Resampling.NEAREST)


def figure(inputs: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> Image.Image:
    size, gap, label_w = 40 * SCALE, 6, 110
    cols = SHOWN_INPUTS + HORIZON
    canvas = Image.new("RGB", (label_w + cols * (size + gap), 2 * (size + gap) + 24), "white")
    draw = ImageDraw.Draw(canvas)
    first = data.FRAMES - SHOWN_INPUTS + 1
    for c in range(cols):
        x = label_w + c * (size + gap)
        step = first + c
        draw.text((x + 4, 4), f"t={step}" + (" (input)" if c < SHOWN_INPUTS else ""), fill="black")
    rows = [("truth", truth), ("predicted", predicted)]
    for r, (name, frames) in enumerate(rows):
        y = 24 + r * (size + gap)
        draw.text((8, y + size // 2), name, fill="black")
        for c, frame in enumerate([*inputs[-SHOWN_INPUTS:], *frames]):
            if r == 1 and c < SHOWN_INPUTS:
                continue
            canvas.paste(tile(frame), (label_w + c * (size + gap), y))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    seq = data.generate(SAMPLE + 1, seed=data.SPLIT_SEEDS["test"], split="test", frames=18)[SAMPLE]
    inputs, truth = seq[: data.FRAMES], seq[data.FRAMES :]
    request = {"frames": [png_b64(f) for f in inputs], "horizon": HORIZON}
    (ROOT / "examples" / "request.json").write_text(json.dumps(request) + "\n")
    response = httpx.post(f"{args.url}/predict", json=request, timeout=60)
    response.raise_for_status()
    body = response.json()
    predicted = np.stack(
        [np.asarray(Image.open(io.BytesIO(base64.b64decode(f)))) / 255.0 for f in body["frames"]]
    )
    mse = float(np.mean((predicted - truth) ** 2))
    figure(inputs, truth, predicted).save(ROOT / "docs" / "prediction.png")
    print(f"{body['model']} on {body['provider']}: {body['inference_ms']:.0f} ms, MSE {mse:.4f}")


if __name__ == "__main__":
    main()
