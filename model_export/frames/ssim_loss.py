"""An SSIM term for the training loss (``train --ssim-weight W``).

Binary cross-entropy and the squared error score each pixel on its own, so a blurred
digit where the truth is uncertain costs little; SSIM scores local means, contrasts and
correlations, and a blur loses contrast and structure. It is the farther of the cards'
targets (issue: SSIM >= 0.90), so the loss can add ``W * (1 - SSIM)`` per sequence.

``ssim`` is the cards' SSIM (``evaluate.ssim``: scikit-image's ``structural_similarity``
with a 7 x 7 uniform window, sample covariance, ``data_range`` 1, the interior windows,
the mean over channels) in Keras ops, so it trains on every backend (TensorFlow here,
PyTorch on the GPU machine). Written here because scikit-image runs on NumPy arrays,
outside the graph, and Keras ships no SSIM; the test checks it against scikit-image.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

WINDOW = 7
# scikit-image's constants for data_range 1: (K1 * L)^2 and (K2 * L)^2.
C1 = 0.01**2
C2 = 0.03**2
# Sample covariance over a window of N pixels, as scikit-image's default.
COV_NORM = WINDOW**2 / (WINDOW**2 - 1)


def ssim(y_true: Any, y_pred: Any) -> Any:
    """Mean SSIM per sample: ``(N, ..., H, W, C)`` -> ``(N,)``, every frame and channel
    alike (frames of at least 7 x 7 pixels)."""
    shape = ops.shape(y_true)
    h, w, c = shape[-3], shape[-2], shape[-1]
    x = ops.reshape(ops.cast(y_true, "float32"), (-1, h, w, c))
    y = ops.reshape(ops.cast(y_pred, "float32"), (-1, h, w, c))

    def mean(v: Any) -> Any:
        # 'valid' windows are scikit-image's interior ones (its border crop of 3 px).
        return ops.average_pool(v, pool_size=WINDOW, strides=1, padding="valid")

    mx, my = mean(x), mean(y)
    vx = COV_NORM * (mean(x * x) - mx * mx)
    vy = COV_NORM * (mean(y * y) - my * my)
    vxy = COV_NORM * (mean(x * y) - mx * my)
    s = ((2 * mx * my + C1) * (2 * vxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return ops.mean(ops.reshape(s, (shape[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="model_export")
class PlusSsim(keras.losses.Loss):  # type: ignore[misc]
    """``inner`` per sequence (a Keras loss name, or a loss object such as
    ``FedBackLoss``) plus ``weight * (1 - ssim)`` over every frame of the target."""

    def __init__(
        self,
        inner: str | keras.losses.Loss = "binary_crossentropy",
        weight: float = 0.1,
        name: str = "plus_ssim",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        check_ssim_weight(weight)
        if isinstance(inner, dict):  # from a saved checkpoint's config
            inner = keras.saving.deserialize_keras_object(inner)
        self.inner = inner
        self.weight = weight
        self._inner = keras.losses.get(inner) if isinstance(inner, str) else inner

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if isinstance(self._inner, keras.losses.Loss):
            base = self._inner.call(y_true, y_pred)  # per sample, unreduced
        else:
            base = self._inner(y_true, y_pred)  # reduces the channel axis only
        base = ops.mean(ops.reshape(base, (ops.shape(base)[0], -1)), axis=1)
        return base + self.weight * (1.0 - ssim(y_true, y_pred))

    def get_config(self) -> dict[str, Any]:
        inner = (
            self.inner
            if isinstance(self.inner, str)
            else keras.saving.serialize_keras_object(self.inner)
        )
        return {**super().get_config(), "inner": inner, "weight": self.weight}


def check_ssim_weight(weight: float) -> None:
    """Refuse a ``--ssim-weight`` that is no weight (0 turns the term off)."""
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"--ssim-weight {weight}: give a weight >= 0 (0: no SSIM term)")
