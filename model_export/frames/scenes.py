"""Moving glyphs with more variety than ``data``: the renderer shared by the varied
training family and the out-of-distribution (OOD) evaluation family.

A ``SceneSpec`` says what a family draws: which glyphs (scikit-learn's bundled digits,
scaled up, and digits rendered from TrueType/OpenType fonts installed by Debian's font
packages, ``make fonts``), how many per sequence, how fast and by which rule they move,
their colours, the background and an optional occluder. ``render`` turns a spec and a
seed into sequences of the same task as ``data`` (n, T, 40, 40, 3) in [0, 1].

The two families are kept apart by construction: ``TRAIN_VARIED`` draws the training
pool of scikit-learn's digits and the DejaVu and Liberation fonts; ``OOD`` (in
``model_export.frames.ood``) draws the held-out scikit-learn digits at other scales and
the FreeFont and Comic Neue fonts, which no training sequence uses
(``tests/test_scenes.py`` checks that the sets are disjoint). The glyphs themselves
(fonts and scikit-learn's digits in a sprite box) come from ``glyphs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from model_export.frames.data import CANVAS, CHANNELS, FRAMES, Split
from model_export.frames.glyphs import (
    SPRITE,
    TRAIN_FONTS,
    font_file,
    font_glyph,
    sklearn_glyphs,
)

Bounce = Literal["reflect", "wrap", "inset"]
Background = Literal["black", "flat", "gradient"]
Colours = Literal["any hue", "tint"]
Blend = Literal["over", "max"]

# Background colours stay this dark, so that a pixel whose brightest channel reaches
# ``evaluate.DIGIT_THRESHOLD`` (0.25) belongs to a glyph and the tint error keeps its
# meaning; glyph colours have their brightest channel at 0.5 or more.
BACKGROUND_MAX = 0.2
# ``inset`` bounces off walls this many pixels inside the canvas.
INSET = 4


def require_fonts(spec: SceneSpec) -> None:
    """Raise ``glyphs.MissingFont`` now for any font ``spec`` draws, before sequences
    are drawn."""
    for font in spec.fonts:
        font_file(font)


@dataclass(frozen=True)
class SceneSpec:
    """What one family of sequences draws (written into records and reports)."""

    name: str
    # Where scikit-learn's digits come from ("train" or "test" pool) and the sizes (px)
    # they are scaled to, bilinear, inside the sprite.
    sklearn_pool: Split
    sklearn_sizes: tuple[int, ...]
    fonts: tuple[str, ...]
    font_sizes: tuple[int, ...]
    # Chance that a glyph comes from a font rather than scikit-learn's digits.
    font_share: float
    digits: tuple[int, int]
    # Speed per axis in px per frame, inclusive; the sign is random.
    speed: tuple[int, int]
    bounces: tuple[Bounce, ...]
    backgrounds: tuple[Background, ...]
    # Chance that a sequence has a static bar drawn over the glyphs.
    occlusion: float
    seeds: tuple[tuple[str, int], ...] = field(default=())
    # Glyph colours: any hue with the brightest channel in [0.5, 1], or ``tint``, each
    # channel uniform in [0.3, 1] as ``data``'s generator draws them.
    colours: Colours = "any hue"
    # Glyphs alpha-composited ``over`` what is below, or the brighter of the two per
    # channel (``max``, as ``data``'s generator draws them).
    blend: Blend = "over"

    def as_dict(self) -> dict[str, object]:
        """As JSON holds it (lists for tuples), so a card read back compares equal."""
        d = asdict(self)
        d["seeds"] = dict(self.seeds)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


TRAIN_VARIED = SceneSpec(
    name="varied moving glyphs (training family)",
    sklearn_pool="train",
    sklearn_sizes=(16,),
    fonts=TRAIN_FONTS,
    font_sizes=(14, 17, 20),
    font_share=0.5,
    digits=(1, 3),
    speed=(0, 3),
    bounces=("reflect",),
    backgrounds=("black", "black", "flat", "gradient"),
    occlusion=0.25,
    seeds=(("train", 11), ("validation", 12)),
)


def _glyph(spec: SceneSpec, rng: np.random.Generator) -> tuple[NDArray[np.float32], str]:
    """A glyph's alpha mask and what it is, in words."""
    if spec.fonts and rng.random() < spec.font_share:
        font = spec.fonts[int(rng.integers(len(spec.fonts)))]
        size = spec.font_sizes[int(rng.integers(len(spec.font_sizes)))]
        digit = int(rng.integers(10))
        article = "an" if digit == 8 else "a"
        return font_glyph(font, size, digit), f"{article} {digit} in {Path(font).stem} {size} px"
    size = spec.sklearn_sizes[int(rng.integers(len(spec.sklearn_sizes)))]
    pool = sklearn_glyphs(spec.sklearn_pool, size)
    glyph: NDArray[np.float32] = pool[int(rng.integers(len(pool)))]
    held_out = "held-out " if spec.sklearn_pool == "test" else ""
    return glyph, f"a {held_out}handwritten digit {size} px"


def _colour(spec: SceneSpec, rng: np.random.Generator) -> NDArray[np.float32]:
    """Any hue, from pale to saturated, with the brightest channel in [0.5, 1]; or
    ``data``'s tints (``colours="tint"``)."""
    if spec.colours == "tint":
        return rng.uniform(0.3, 1.0, size=CHANNELS).astype(np.float32)
    c = rng.uniform(0.0, 1.0, size=CHANNELS)
    c = c / max(float(c.max()), 1e-6) * rng.uniform(0.5, 1.0)
    return c.astype(np.float32)


def trajectory(rng: np.random.Generator, spec: SceneSpec, steps: int) -> NDArray[np.int64]:
    """Top-left corners (steps, 2) of one glyph under one of the spec's bounce rules:
    ``reflect`` off the canvas' edges, ``inset`` off walls INSET px inside them,
    ``wrap`` around a torus (leaving on one side, coming back on the other)."""
    return _motion(rng, spec, steps).path


@dataclass(frozen=True)
class Motion:
    """One glyph's path, the bounce rule it follows and its speed (px per frame, y and x)."""

    path: NDArray[np.int64]
    bounce: Bounce
    speed: tuple[int, int]


def _motion(rng: np.random.Generator, spec: SceneSpec, steps: int) -> Motion:
    rule = spec.bounces[int(rng.integers(len(spec.bounces)))]
    low, high = (INSET, CANVAS - SPRITE - INSET) if rule == "inset" else (0, CANVAS - SPRITE)
    pos = rng.integers(low, high + 1, size=2)
    vel = rng.integers(spec.speed[0], spec.speed[1] + 1, size=2) * rng.choice([-1, 1], size=2)
    speed = (abs(int(vel[0])), abs(int(vel[1])))
    out = np.empty((steps, 2), dtype=np.int64)
    for t in range(steps):
        out[t] = pos
        nxt = pos + vel
        if rule == "wrap":
            nxt = nxt % CANVAS
        else:
            for axis in range(2):
                if nxt[axis] < low:
                    nxt[axis] = 2 * low - nxt[axis]
                    vel[axis] = -vel[axis]
                elif nxt[axis] > high:
                    nxt[axis] = 2 * high - nxt[axis]
                    vel[axis] = -vel[axis]
        pos = nxt
    return Motion(out, rule, speed)


def _background(
    spec: SceneSpec, rng: np.random.Generator
) -> tuple[NDArray[np.float32], Background]:
    kind = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]
    bg = np.zeros((CANVAS, CANVAS, CHANNELS), dtype=np.float32)
    if kind == "flat":
        bg[:] = rng.uniform(0.0, BACKGROUND_MAX, size=CHANNELS)
    elif kind == "gradient":
        a, b = rng.uniform(0.0, BACKGROUND_MAX, size=(2, CHANNELS))
        ramp = np.linspace(0.0, 1.0, CANVAS, dtype=np.float32)[:, None, None]
        bg[:] = a + (b - a) * (ramp if rng.random() < 0.5 else ramp.transpose(1, 0, 2))
    return bg, kind


def _paste(
    frame: NDArray[np.float32],
    alpha: NDArray[np.float32],
    colour: NDArray[np.float32],
    y: int,
    x: int,
    blend: Blend = "over",
) -> None:
    """Alpha-composite a glyph at (y, x) (or take the brighter, ``blend="max"``); the
    part off the canvas (wrap) comes in on the other side."""
    ys = (np.arange(SPRITE) + y) % CANVAS
    xs = (np.arange(SPRITE) + x) % CANVAS
    region = frame[np.ix_(ys, xs)]
    a = alpha[:, :, None]
    if blend == "max":
        frame[np.ix_(ys, xs)] = np.maximum(region, colour * a)
    else:
        frame[np.ix_(ys, xs)] = region * (1.0 - a) + colour * a


@dataclass(frozen=True)
class Sprite:
    """One glyph of a scene: its mask, colour and motion, and what it is in words."""

    glyph: NDArray[np.float32]
    colour: NDArray[np.float32]
    motion: Motion
    what: str


@dataclass(frozen=True)
class Occluder:
    """A static bar across the whole canvas, in front of the glyphs."""

    orientation: Literal["horizontal", "vertical"]
    at: int
    thick: int
    colour: NDArray[np.float32]


@dataclass(frozen=True)
class Scene:
    """Everything drawn for one sequence: ``render`` paints it, ``describe`` says it."""

    background: NDArray[np.float32]
    background_kind: Background
    sprites: tuple[Sprite, ...]
    occluder: Occluder | None

    def describe(self) -> str:
        """The scene in one sentence, from its draws: glyphs, motion, background, bar."""
        rules = sorted({s.motion.bounce for s in self.sprites}, key=list(BOUNCE_WORDS).index)
        speeds = sorted({v for s in self.sprites for v in s.motion.speed})
        pace = f"{speeds[0]}-{speeds[-1]}" if len(speeds) > 1 else str(speeds[0])
        parts = [
            ", ".join(s.what for s in self.sprites),
            f"{' and '.join(BOUNCE_WORDS[r] for r in rules)} at {pace} px per frame",
            BACKGROUND_WORDS[self.background_kind],
        ]
        if self.occluder is not None:
            bar = self.occluder
            parts.append(f"a {bar.orientation} bar {bar.thick} px wide in front")
        return "; ".join(parts)


BOUNCE_WORDS: dict[Bounce, str] = {
    "reflect": "bouncing off the edges",
    "inset": f"bouncing off walls {INSET} px in",
    "wrap": "wrapping around",
}
BACKGROUND_WORDS: dict[Background, str] = {
    "black": "black background",
    "flat": "dark flat background",
    "gradient": "dark graded background",
}


def draw_scene(spec: SceneSpec, rng: np.random.Generator, frames: int) -> Scene:
    """One sequence's draws from ``spec``, in the order ``render`` has always made them."""
    background, kind = _background(spec, rng)
    count = int(rng.integers(spec.digits[0], spec.digits[1] + 1))
    sprites = []
    for _ in range(count):
        glyph, what = _glyph(spec, rng)
        colour = _colour(spec, rng)
        sprites.append(Sprite(glyph, colour, _motion(rng, spec, frames), what))
    occluder = _occluder(rng) if rng.random() < spec.occlusion else None
    return Scene(background, kind, tuple(sprites), occluder)


def _streams(n: int, seed: int, frames: int) -> list[np.random.Generator]:
    if n < 0 or frames < 1:
        raise ValueError(f"need n >= 0 and frames >= 1; got {n}, {frames}")
    # A sequence's draws come from its own stream, so the length changes nothing.
    return np.random.default_rng(seed).spawn(n)


def draw_scenes(spec: SceneSpec, n: int, *, seed: int, frames: int = FRAMES + 1) -> list[Scene]:
    """The scenes of ``render(spec, n, seed=seed, frames=frames)``, not painted."""
    return [draw_scene(spec, r, frames) for r in _streams(n, seed, frames)]


def paint(scene: Scene, out: NDArray[np.float32], blend: Blend = "over") -> None:
    """Paint ``scene`` into ``out`` (frames, 40, 40, 3)."""
    out[:] = scene.background
    for sprite in scene.sprites:
        for t, (y, x) in enumerate(sprite.motion.path):
            _paste(out[t], sprite.glyph, sprite.colour, int(y), int(x), blend)
    bar = scene.occluder
    if bar is not None:
        if bar.orientation == "horizontal":
            out[:, bar.at : bar.at + bar.thick, :] = bar.colour
        else:
            out[:, :, bar.at : bar.at + bar.thick] = bar.colour


def render(spec: SceneSpec, n: int, *, seed: int, frames: int = FRAMES + 1) -> NDArray[np.float32]:
    """``n`` sequences of ``frames`` frames drawn from ``spec``: (n, frames, 40, 40, 3).

    The draws for a sequence do not depend on ``frames``, so a longer render starts
    with the frames of a shorter one (horizon scoring relies on it)."""
    streams = _streams(n, seed, frames)
    out = np.empty((n, frames, CANVAS, CANVAS, CHANNELS), dtype=np.float32)
    # One scene at a time: a training set's scenes are not all held at once.
    for i, r in enumerate(streams):
        paint(draw_scene(spec, r, frames), out[i], spec.blend)
    return out


def _occluder(rng: np.random.Generator) -> Occluder:
    """A static bar, 4-8 px thick, across the whole canvas."""
    thick = int(rng.integers(4, 9))
    at = int(rng.integers(0, CANVAS - thick + 1))
    colour = rng.uniform(0.0, BACKGROUND_MAX, size=CHANNELS).astype(np.float32)
    orientation: Literal["horizontal", "vertical"] = (
        "horizontal" if rng.random() < 0.5 else "vertical"
    )
    return Occluder(orientation, at, thick, colour)


def augment(sequences: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Each sequence flipped up-down and left-right, transposed and its colour channels
    permuted at random (in place; returned): the motion stays physical, the glyphs and
    hues a model sees multiply by up to 48."""
    for seq in sequences:
        if rng.random() < 0.5:
            seq[:] = seq[:, ::-1]
        if rng.random() < 0.5:
            seq[:] = seq[:, :, ::-1]
        if rng.random() < 0.5:
            seq[:] = seq.transpose(0, 2, 1, 3)
        seq[:] = seq[..., rng.permutation(CHANNELS)]
    return sequences


def varied_mix(
    n: int,
    *,
    split: Split,
    share: float,
    seed: int,
    skip: int = 0,
    augmented: bool = False,
    frames: int = FRAMES + 1,
) -> NDArray[np.float32]:
    """``n`` training or validation sequences of ``frames`` frames: the first ``n - k``
    from ``data``'s generator (its split and seed, after ``skip``), the other
    ``k = round(n * share)`` from TRAIN_VARIED; with ``augmented``, every sequence
    augmented. Shuffled."""
    from model_export.frames import data

    k = int(round(n * share))
    plain = data.generate_split(n - k, split, skip=skip, frames=frames)
    seeds = dict(TRAIN_VARIED.seeds)
    varied = render(TRAIN_VARIED, k, seed=seeds[split] * 1000 + skip, frames=frames)
    out = np.concatenate([plain, varied])
    rng = np.random.default_rng(seed)
    if augmented:
        augment(out, rng)
    return out[rng.permutation(len(out))]
