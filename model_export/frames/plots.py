"""Pictures of predictions, kept apart from training and evaluation logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def prediction_grid(
    inputs: NDArray[np.float32],
    truth: NDArray[np.float32],
    predictions: dict[str, NDArray[np.float32]],
    path: Path,
    shown_inputs: int = 5,
) -> None:
    """One row per sequence: the last few input frames, the truth, each model's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(inputs)
    titles = [f"t={inputs.shape[1] - shown_inputs + i + 1}" for i in range(shown_inputs)]
    titles += ["truth", *predictions]
    fig, axes = plt.subplots(n, len(titles), figsize=(1.6 * len(titles), 1.7 * n), squeeze=False)
    for row in range(n):
        images = [*inputs[row, -shown_inputs:], truth[row]]
        images += [p[row] for p in predictions.values()]
        for col, (img, title) in enumerate(zip(images, titles, strict=True)):
            ax = axes[row, col]
            ax.imshow(np.clip(img, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
