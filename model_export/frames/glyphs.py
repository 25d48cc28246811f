"""The glyphs the scenes move: digits rendered from TrueType/OpenType fonts that Debian's
font packages install (``make fonts``), and scikit-learn's bundled 8x8 digits scaled up,
each as an alpha mask centred in a SPRITE x SPRITE box.

Fonts are looked up by file name under ``/usr/share/fonts``, or first under
``$MODEL_EXPORT_FONT_DIR`` where the GPU machine's training job keeps the copies
``gpu.pack`` carries (it has no Debian fonts).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model_export.frames.data import Split, digit_pool

# Every glyph is drawn in a SPRITE x SPRITE box (the moving-digit canvas' 16 px).
SPRITE = 16

FONT_ROOT = Path("/usr/share/fonts")
# Fonts of the training family (fonts-dejavu-core, fonts-liberation) and of the OOD
# family (fonts-freefont-ttf, fonts-comic-neue): file names under FONT_ROOT.
TRAIN_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSans-Bold.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationMono-Regular.ttf",
)
OOD_FONTS: tuple[str, ...] = (
    "FreeSans.ttf",
    "FreeSerifBoldItalic.ttf",
    "FreeMonoBold.ttf",
    "ComicNeue-Regular.otf",
    "ComicNeue-Bold.otf",
)
# The Debian packages that ship them (installed by ``make fonts``).
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation", "fonts-freefont-ttf", "fonts-comic-neue")

# Looked in first when set: the GPU machine has no Debian fonts, so ``gpu.pack`` carries
# the training family's files and ``gpu/run.sh train`` points this at them.
FONT_DIR_ENV = "MODEL_EXPORT_FONT_DIR"


class MissingFont(RuntimeError):
    """A font a family needs is not installed."""


def font_roots() -> list[Path]:
    """Where fonts are looked for, in order: ``$MODEL_EXPORT_FONT_DIR``, then FONT_ROOT."""
    extra = os.environ.get(FONT_DIR_ENV)
    return [Path(extra), FONT_ROOT] if extra else [FONT_ROOT]


def font_file(font: str) -> Path:
    """The first file named ``font`` under ``font_roots()``."""
    roots = font_roots()
    for root in roots:
        matches = sorted(root.rglob(font)) if root.is_dir() else []
        if matches:
            return matches[0]
    where = " or ".join(str(r) for r in roots)
    raise MissingFont(
        f"font {font} is not under {where}: run `make fonts` "
        f"(apt-get install {' '.join(FONT_PACKAGES)})"
    )


@lru_cache(maxsize=64)
def font_glyph(font: str, size: int, digit: int) -> NDArray[np.float32]:
    """The digit ``digit`` of ``font`` at ``size`` px, centred in a SPRITE box, in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font_file(font)), size)
    image = Image.new("L", (SPRITE, SPRITE), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=face)
    x = (SPRITE - (right - left)) / 2 - left
    y = (SPRITE - (bottom - top)) / 2 - top
    draw.text((x, y), str(digit), fill=255, font=face)
    return np.asarray(image, dtype=np.float32) / 255.0


@lru_cache(maxsize=8)
def sklearn_glyphs(pool: Split, size: int) -> NDArray[np.float32]:
    """scikit-learn's 8x8 digits of ``pool`` scaled (bilinear) to ``size`` px and centred
    in a SPRITE box: (n, SPRITE, SPRITE)."""
    from PIL import Image

    if size == SPRITE:
        return np.asarray(digit_pool(pool), dtype=np.float32)  # ``data``'s nearest x2
    half = digit_pool(pool)[:, ::2, ::2]  # back to the 8x8 originals
    out = np.zeros((len(half), SPRITE, SPRITE), dtype=np.float32)
    at = (SPRITE - size) // 2
    for i, g in enumerate(half):
        scaled = Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)
        out[i, at : at + size, at : at + size] = np.clip(np.asarray(scaled), 0.0, 1.0)
    return out
