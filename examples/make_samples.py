"""Make the demo page's sample sequences from the test split.

    python examples/make_samples.py

Writes ``service/web/samples/<name>/input_00.png`` … ``input_14.png`` (the 15 frames
the model sees), ``truth_00.png`` … ``truth_07.png`` (the 8 frames that really follow,
enough for the largest horizon) and ``service/web/samples/samples.json`` (the index the
page reads). Needs the ``train`` extra for the data generator; the output is the same
on every run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from model_export.frames import data

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "service" / "web" / "samples"
TRUTH_FRAMES = 8
LENGTH = data.FRAMES + TRUTH_FRAMES
# Test-split sequences chosen by eye: digits that stay apart long enough to follow.
CHOSEN = {0: "a 4 and a 3", 2: "one 7", 3: "a 0 and a 6", 6: "a 9 and an 8"}


def sample_name(index: int) -> str:
    return f"test-{index:02d}"


def save_png(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(path, format="PNG", optimize=True)


def main() -> None:
    sequences = data.generate(
        max(CHOSEN) + 1, seed=data.SPLIT_SEEDS["test"], split="test", frames=LENGTH
    )
    index = []
    for i, title in CHOSEN.items():
        folder = SAMPLES_DIR / sample_name(i)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for t, frame in enumerate(sequences[i]):
            kind, step = ("input", t) if t < data.FRAMES else ("truth", t - data.FRAMES)
            save_png(frame, folder / f"{kind}_{step:02d}.png")
        index.append(
            {
                "name": sample_name(i),
                "title": f"Test sequence {i}: {title}",
                "input_frames": data.FRAMES,
                "truth_frames": TRUTH_FRAMES,
            }
        )
    source = {
        "generator": "model_export.frames.data.generate",
        "split": "test",
        "seed": data.SPLIT_SEEDS["test"],
        "frames": LENGTH,
    }
    text = json.dumps({"source": source, "samples": index}, indent=2)
    (SAMPLES_DIR / "samples.json").write_text(text + "\n")
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*.png"))
    print(f"{len(index)} samples, {LENGTH} PNGs each, {total} bytes in {SAMPLES_DIR}")


if __name__ == "__main__":
    main()
