"""The fed-back training objective (``train --feedback-steps K``).

Served at a horizon above 1, the model sees its own predictions: the last 15 frames,
the newest of them predicted, go through it again. Trained only on true frames, it
never sees its own blur. With K > 1 the training graph does what serving does: the
every-step model (shared weights) runs K times on a sliding 15-frame window, each
window dropping its oldest frame and taking the previous pass's prediction of the next
frame as its newest. Its output is the first pass's 15 every-step predictions followed
by the K - 1 fed-back ones, against a sequence's frames 2 to 15 + K; gradients flow
through the fed-back predictions into the passes that made them.

The loss (``FedBackLoss``) is today's every-step loss (the mean over the 15 frames of
the first pass) plus ``weight`` times the mean over the K - 1 fed-back frames, of the
same loss or of another (``fed_base``: L1 there does not reward a fed-back prediction
for smearing an uncertain digit, as binary cross-entropy does; docs/recipe.md). Nothing
here reaches the saved model: ``single_pass`` takes the every-step model back out, and
its weights go into the same 15 -> 1 inference model as with K = 1.

Plain functional Keras, two weightless layers and a loss: it runs on every Keras
backend (TensorFlow here, PyTorch on the GPU machine).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers, ops

from model_export.frames.data import FRAMES

# Beyond this many passes the window would hold no observed frame at all.
MAX_FEEDBACK_STEPS = FRAMES
FED_BACK_NAME = "fed_back"


def check_feedback_steps(steps: int, weight: float = 1.0, *, every_step: bool = True) -> None:
    """Refuse a K (or a weight) the objective cannot take, before any data is drawn."""
    if not 1 <= steps <= MAX_FEEDBACK_STEPS:
        raise ValueError(
            f"--feedback-steps {steps}: give 1 (next frame only) to {MAX_FEEDBACK_STEPS} "
            f"(beyond that the {FRAMES}-frame window holds no observed frame)"
        )
    if steps > 1 and not every_step:
        raise ValueError(
            f"--feedback-steps {steps} adds fed-back steps to every-step supervision; "
            "it does not go with --supervise last"
        )
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"--feedback-weight {weight}: give a weight > 0")


def resolve_feedback_flags(
    steps: int, weight: float | None, loss: str | None, *, every_step: bool = True
) -> float:
    """The weight to train with, after refusing what ``train`` and ``gpu.train`` both
    refuse: a weight or a fed-back loss given without K > 1 (they would be ignored
    silently), and what ``check_feedback_steps`` refuses. ``None``: not given."""
    for flag, value in (("--feedback-weight", weight), ("--feedback-loss", loss)):
        if value is not None and steps == 1:
            raise ValueError(f"{flag} goes with --feedback-steps K > 1")
    resolved = 1.0 if weight is None else weight
    check_feedback_steps(steps, resolved, every_step=every_step)
    return resolved


@keras.saving.register_keras_serializable(package="model_export")
class NewestStep(layers.Layer):  # type: ignore[misc]
    """``x[:, -1:]``: an every-step prediction's last step, the frame after the window."""

    def call(self, x: Any) -> Any:
        return x[:, -1:]

    def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (shape[0], 1, *shape[2:])


@keras.saving.register_keras_serializable(package="model_export")
class SlideWindow(layers.Layer):  # type: ignore[misc]
    """``[window, newest]`` -> the window without its oldest frame, ``newest`` (one
    frame, ``(N, 1, H, W, C)``) appended: what serving feeds back at the next step."""

    def call(self, inputs: list[Any]) -> Any:
        window, newest = inputs
        return ops.concatenate([window[:, 1:], ops.cast(newest, window.dtype)], axis=1)

    def compute_output_shape(self, shapes: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
        return shapes[0]


def build_fed_back(every_step: keras.Model, steps: int) -> keras.Model:
    """``every_step`` (frames -> a prediction per step) applied ``steps`` times on a
    sliding window: (N, T, ...) -> (N, T + steps - 1, ...), the first pass's T
    predictions then each later pass's prediction of the frame after its window."""
    check_feedback_steps(steps)
    # float32 like the heads: a prediction goes back into the window exactly as it
    # came out, under a mixed-precision policy too.
    inputs = keras.Input(shape=every_step.input.shape[1:], name=every_step.input.name)
    first = every_step(inputs)
    predicted = [first]
    window, newest = inputs, NewestStep(dtype="float32", name="newest_1")(first)
    for k in range(2, steps + 1):
        window = SlideWindow(dtype="float32", name=f"window_{k}")([window, newest])
        newest = NewestStep(dtype="float32", name=f"newest_{k}")(every_step(window))
        predicted.append(newest)
    out = layers.Concatenate(axis=1, dtype="float32", name=FED_BACK_NAME)(predicted)
    return keras.Model(inputs, out, name=f"{every_step.name}_fed_back_{steps}")


def single_pass(model: keras.Model) -> keras.Model:
    """The every-step model inside a ``build_fed_back`` graph (a checkpoint of one, too);
    any other model as it is."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if FED_BACK_NAME in {layer.name for layer in model.layers} and len(nested) == 1:
        return nested[0]
    return model


@keras.saving.register_keras_serializable(package="model_export")
class FedBackLoss(keras.losses.Loss):  # type: ignore[misc]
    """Per sequence: the mean of ``base`` over the first ``teacher_frames`` frames (the
    every-step loss of today), plus ``weight`` times the mean of ``fed_base`` (``base``
    when not given) over the frames after them (the fed-back ones). Both are Keras loss
    names that reduce the channel axis (binary cross-entropy, mean squared or absolute
    error)."""

    def __init__(
        self,
        base: str = "binary_crossentropy",
        teacher_frames: int = FRAMES,
        weight: float = 1.0,
        fed_base: str | None = None,
        name: str = "fed_back_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.base = base
        self.teacher_frames = teacher_frames
        self.weight = weight
        self.fed_base = fed_base or base
        self._base = keras.losses.get(base)
        self._fed_base = keras.losses.get(self.fed_base)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        t = self.teacher_frames
        # Each loss reduces the channel axis: (N, frames, H, W), then a mean per frame.
        teacher = self._base(y_true[:, :t], y_pred[:, :t])
        fed = self._fed_base(y_true[:, t:], y_pred[:, t:])
        return ops.mean(teacher, axis=(1, 2, 3)) + self.weight * ops.mean(fed, axis=(1, 2, 3))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "base": self.base,
            "teacher_frames": self.teacher_frames,
            "weight": self.weight,
            "fed_base": self.fed_base,
        }
