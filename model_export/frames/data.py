"""Moving-digit sequences generated offline from scikit-learn's bundled digits.

Each sequence shows one or two tinted 16x16 digits moving over a black 40x40
canvas and bouncing off its edges. Nothing is downloaded: ``load_digits`` reads
a file that ships inside scikit-learn. Everything is a pure function of a seed,
so the train, validation and test splits are reproducible from their seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Split = Literal["train", "validation", "test"]

CANVAS = 40
DIGIT = 16
FRAMES = 15
CHANNELS = 3
MAX_POS = CANVAS - DIGIT

# Fixed seeds per split, so that a split means the same sequences everywhere
# (training, evaluation, tests, the model card).
SPLIT_SEEDS: dict[str, int] = {"train": 1, "validation": 2, "test": 3}
# Fraction of the 1,797 digit images held out for the test split only.
TEST_DIGIT_FRACTION = 0.2
_DIGIT_SPLIT_SEED = 0


@dataclass(frozen=True)
class DataSpec:
    """What the generator makes; written into the model card."""

    source: str = "sklearn.datasets.load_digits (8x8, bundled), upscaled x2 to 16x16"
    canvas: int = CANVAS
    digit_size: int = DIGIT
    digits_per_sequence: str = "1-2"
    colour_range: str = "each RGB channel uniform in [0.3, 1]"
    speed_px_per_frame: str = "1-3 in x and in y, random sign, bouncing off edges"
    overlap: str = "max"
    split_seeds: tuple[tuple[str, int], ...] = tuple(SPLIT_SEEDS.items())
    held_out_digit_fraction: float = TEST_DIGIT_FRACTION

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["split_seeds"] = dict(self.split_seeds)
        return d


@lru_cache(maxsize=1)
def _digit_images() -> NDArray[np.float32]:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    # Nearest-neighbour x2 keeps strokes crisp and the values in [0, 1].
    return np.kron(images, np.ones((2, 2), dtype=np.float32))


def digit_pool(split: Split) -> NDArray[np.float32]:
    """The 16x16 digit images a split may draw from.

    The test split draws from a held-out set of images that train and
    validation never see, so test scores measure generalisation to new digits.
    """
    images = _digit_images()
    order = np.random.default_rng(_DIGIT_SPLIT_SEED).permutation(len(images))
    n_test = int(round(len(images) * TEST_DIGIT_FRACTION))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return images[np.sort(idx)]


def _trajectory(rng: np.random.Generator, steps: int) -> NDArray[np.int64]:
    """Top-left corners (steps, 2) of one digit bouncing inside the canvas."""
    pos = rng.integers(0, MAX_POS + 1, size=2)
    vel = rng.integers(1, 4, size=2) * rng.choice([-1, 1], size=2)
    out = np.empty((steps, 2), dtype=np.int64)
    for t in range(steps):
        out[t] = pos
        nxt = pos + vel
        for axis in range(2):
            if nxt[axis] < 0:
                nxt[axis] = -nxt[axis]
                vel[axis] = -vel[axis]
            elif nxt[axis] > MAX_POS:
                nxt[axis] = 2 * MAX_POS - nxt[axis]
                vel[axis] = -vel[axis]
        pos = nxt
    return out


def generate(
    n: int,
    *,
    seed: int,
    split: Split = "train",
    frames: int = FRAMES + 1,
    digits: tuple[int, int] = (1, 2),
    skip: int = 0,
) -> NDArray[np.float32]:
    """``n`` sequences of ``frames`` RGB frames, shape (n, frames, 40, 40, 3), in [0, 1].

    The default length is 16: 15 input frames and the frame that follows them.
    ``digits`` is the inclusive range of digits per sequence. ``skip`` returns the
    sequences after the first ``skip`` of the same seed (drawn, not drawn on a canvas).
    """
    if n < 0 or skip < 0 or frames < 1 or not 1 <= digits[0] <= digits[1]:
        raise ValueError(
            f"need n >= 0, skip >= 0, frames >= 1, 1 <= digits; got {n}, {skip}, {frames}, {digits}"
        )
    rng = np.random.default_rng(seed)
    pool = digit_pool(split)
    out = np.zeros((n, frames, CANVAS, CANVAS, CHANNELS), dtype=np.float32)
    for i in range(-skip, n):
        for _ in range(int(rng.integers(digits[0], digits[1] + 1))):
            glyph = pool[rng.integers(len(pool))]
            colour = rng.uniform(0.3, 1.0, size=CHANNELS).astype(np.float32)
            sprite = glyph[:, :, None] * colour
            path = _trajectory(rng, frames)
            if i < 0:
                continue
            for t, (y, x) in enumerate(path):
                window = out[i, t, y : y + DIGIT, x : x + DIGIT]
                np.maximum(window, sprite, out=window)
    return out


def generate_split(
    n: int, split: Split, *, frames: int = FRAMES + 1, skip: int = 0
) -> NDArray[np.float32]:
    """``generate`` with the split's fixed seed."""
    return generate(n, seed=SPLIT_SEEDS[split], split=split, frames=frames, skip=skip)


def inputs_and_targets(
    sequences: NDArray[np.float32], *, every_step: bool, feedback_steps: int = 1
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Split (n, T+K, ...) sequences into inputs (n, T, ...) and next-frame targets,
    ``K = feedback_steps`` (1 unless training on fed-back steps, ``feedback.py``).

    With ``every_step`` the target at step t is frame t+1: (n, T+K-1, ...), the T
    every-step targets of the inputs then the K-1 frames after them; otherwise only
    the frame after the last input (n, ...), which is what the served model predicts.
    """
    if feedback_steps > 1 and not every_step:
        raise ValueError("fed-back steps go with every-step targets")
    x = sequences[:, : sequences.shape[1] - feedback_steps]
    y = sequences[:, 1:] if every_step else sequences[:, -1]
    return x, y
