"""The out-of-distribution (OOD) evaluation set: moving digits no training sequence
resembles closely, for scores that say whether a model learned moving digits or only
its own generator.

Other glyphs (the held-out scikit-learn digits scaled to 10-14 px instead of the
training's 16, and the FreeFont and Comic Neue fonts), other speeds (0-4 px per frame
instead of 1-3), other bounce rules (walls inside the canvas, wrapping around it),
1-3 digits, a static occluding bar in half the sequences, any hue, and dark flat or
graded backgrounds. Training never draws from this spec (``tests/test_scenes.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_export.frames.data import FRAMES
from model_export.frames.glyphs import OOD_FONTS
from model_export.frames.scenes import SceneSpec, render

# Its own seed, used by no training or validation stream.
OOD_SEED = 31

OOD = SceneSpec(
    name="out-of-distribution moving glyphs",
    sklearn_pool="test",
    sklearn_sizes=(10, 12, 14),
    fonts=OOD_FONTS,
    font_sizes=(11, 13, 15),
    font_share=0.6,
    digits=(1, 3),
    speed=(0, 4),
    bounces=("reflect", "inset", "wrap"),
    backgrounds=("black", "flat", "gradient"),
    occlusion=0.5,
    seeds=(("ood", OOD_SEED),),
)


def ood_horizon_split(
    samples: int, horizon: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """OOD inputs (n, 15, ...) and the ``horizon`` true frames after them."""
    seqs = render(OOD, samples, seed=OOD_SEED, frames=FRAMES + horizon)
    return seqs[:, :FRAMES], seqs[:, FRAMES:]
