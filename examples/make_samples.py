"""Make the demo page's sample sequences: from the test split and from the
out-of-distribution (OOD) set, with the committed model's figures on each set.

    python examples/make_samples.py

Writes ``service/web/samples/<name>/input_00.png`` … ``input_14.png`` (the 15 frames
the model sees), ``truth_00.png`` … ``truth_07.png`` (the 8 frames that really follow,
enough for the largest horizon) and ``service/web/samples/samples.json``, the index the
page reads: per sample its set (``test`` or ``ood``) and what it shows (for an OOD
sample, from the scene drawn: glyphs, motion, background, occluding bar); per set where
it comes from; and the committed ConvLSTM's figures on each set, read from its card
(``models/convlstm.json``, written by ``make evaluate``), with the sha256 of the graph
they were measured on, so the page shows them only beside that graph's predictions.
Needs the ``train`` extra and the fonts (``make fonts``); the output is the same on
every run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_export.frames import data, scenes
from model_export.frames.ood import OOD, OOD_SEED

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "service" / "web" / "samples"
CARD = ROOT / "models" / "convlstm.json"
TRUTH_FRAMES = 8
LENGTH = data.FRAMES + TRUTH_FRAMES
# Test-split sequences chosen by eye: digits that stay apart long enough to follow.
CHOSEN_TEST = {0: "a 4 and a 3", 2: "one 7", 3: "a 0 and a 6", 6: "a 9 and an 8"}
# OOD sequences chosen by eye for glyphs that stay visible, and for variety: other fonts,
# three glyphs, a graded and a flat background, occluding bars, wrapping around, 4 px
# per frame; in the picker's order (the first is also docs/prediction.png's). Their
# descriptions come from the scenes themselves.
CHOSEN_OOD = (5, 7, 26, 3)
SETS = {
    "test": {
        "label": "Test split",
        "about": "the training generator's moving digits, drawn from handwritten digit "
        "images that training never saw",
        "generator": "model_export.frames.data.generate",
        "split": "test",
        "seed": data.SPLIT_SEEDS["test"],
        "frames": LENGTH,
    },
    "ood": {
        "label": "Out of distribution: never trained on",
        "about": "moving glyphs the model never trained on: other fonts, held-out "
        "handwritten digits at other sizes, 0-4 px per frame, inner walls and "
        "wrap-around, 1-3 glyphs, occluding bars, dark backgrounds",
        "generator": "model_export.frames.scenes.render",
        "spec": OOD.name,
        "seed": OOD_SEED,
        "frames": LENGTH,
    },
}


def save_png(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(path, format="PNG", optimize=True)


def write_sample(name: str, sequence: np.ndarray) -> None:
    folder = SAMPLES_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for t, frame in enumerate(sequence):
        kind, step = ("input", t) if t < data.FRAMES else ("truth", t - data.FRAMES)
        save_png(frame, folder / f"{kind}_{step:02d}.png")


def split_samples() -> list[dict[str, Any]]:
    sequences = data.generate_split(max(CHOSEN_TEST) + 1, "test", frames=LENGTH)
    index = []
    for i, title in CHOSEN_TEST.items():
        name = f"test-{i:02d}"
        write_sample(name, sequences[i])
        index.append(
            {
                "name": name,
                "set": "test",
                "title": f"Test sequence {i}: {title}",
                "description": f"in distribution: {SETS['test']['about']}",
                "input_frames": data.FRAMES,
                "truth_frames": TRUTH_FRAMES,
            }
        )
    return index


def ood_samples() -> list[dict[str, Any]]:
    n = max(CHOSEN_OOD) + 1
    drawn = scenes.draw_scenes(OOD, n, seed=OOD_SEED, frames=LENGTH)
    sequences = scenes.render(OOD, n, seed=OOD_SEED, frames=LENGTH)
    index = []
    for i in CHOSEN_OOD:
        name = f"ood-{i:02d}"
        write_sample(name, sequences[i])
        index.append(
            {
                "name": name,
                "set": "ood",
                "title": f"OOD sequence {i}: {headline(drawn[i])}",
                "description": drawn[i].describe(),
                "input_frames": data.FRAMES,
                "truth_frames": TRUTH_FRAMES,
            }
        )
    return index


def headline(scene: scenes.Scene) -> str:
    """A few words for the picker; ``Scene.describe`` has the rest."""
    count = len(scene.sprites)
    words = ["one glyph" if count == 1 else f"{count} glyphs"]
    words.append(scenes.BACKGROUND_WORDS[scene.background_kind])
    rules = {sprite.motion.bounce for sprite in scene.sprites}
    if "wrap" in rules:
        words.append("wrapping around")
    if scene.occluder is not None:
        words.append("behind a bar")
    return ", ".join(words)


def set_figures(evaluation: dict[str, Any], fed_back_sequences: str) -> dict[str, Any]:
    """One set's figures from the card: next frame and each fed-back step vs copy-last."""
    model, copy = evaluation["metrics"]["convlstm"], evaluation["metrics"]["copy_last_frame"]
    return {
        "sequences": evaluation["sequences"],
        "mse": model["mse"],
        "mse_vs_copy_last": model["mse_vs_copy_last"],
        "ssim": model["ssim"],
        "copy_last_ssim": copy["ssim"],
        "fed_back": fed_back_sequences,
        "fed_back_mse_vs_copy_last": [step["mse_vs_copy_last"] for step in model["fed_back"]],
    }


def committed_figures() -> dict[str, Any]:
    """The committed ConvLSTM's figures on both sets, as its card holds them."""
    card = json.loads(CARD.read_text())
    evaluation = card["evaluation"]
    figures = {"test": set_figures(evaluation, evaluation["fed_back"])}
    if "ood" in evaluation:
        figures["ood"] = set_figures(evaluation["ood"], evaluation["ood"]["fed_back"])
    return {
        "name": card["name"],
        "version": card["version"],
        "sha256": card["sha256"],
        "card": str(CARD.relative_to(ROOT)),
        "provider": evaluation["provider"],
        "figures": figures,
    }


def main() -> None:
    for stale in SAMPLES_DIR.iterdir():
        if stale.is_dir():
            shutil.rmtree(stale)
    index = split_samples() + ood_samples()
    document = {"sets": SETS, "committed_model": committed_figures(), "samples": index}
    text = json.dumps(document, indent=2)
    (SAMPLES_DIR / "samples.json").write_text(text + "\n")
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*.png"))
    print(f"{len(index)} samples, {LENGTH} PNGs each, {total} bytes in {SAMPLES_DIR}")


if __name__ == "__main__":
    main()
