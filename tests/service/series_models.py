"""Tiny real Keras series models "written elsewhere", saved as .keras files and exported
by ``python -m model_export export --keras PATH --task series`` (run in process through
``model_export.__main__.main``): the fixtures of ``test_series.py``.

- ``conv2d``: a ConvLSTM2D with a (1, 2) kernel, input (S=3, 1, K=4, F=2), output
  (h=3, F'=2): multivariate in and out, raw units;
- ``conv1d``: a ConvLSTM1D, input (S=3, K=4, F=2), output (h=2,) of feature 1, scaled
  per feature (``--offset`` and ``--scale``);
- ``uni``: a ConvLSTM1D, input (S=2, K=3, F=1), output (h=2,), scaled: rolls out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_export.__main__ import main


@dataclass(frozen=True)
class SeriesModel:
    name: str
    path: Path
    keras_model: Any
    offset: NDArray[np.float64] = field(default_factory=lambda: np.zeros(1))
    scale: NDArray[np.float64] = field(default_factory=lambda: np.ones(1))

    def folded(self, rows: NDArray[np.float64]) -> NDArray[np.float32]:
        """The last W rows of (T, F), scaled and folded to the model's input, batch of 1."""
        shape = tuple(int(d) for d in self.keras_model.input.shape[1:])
        window = int(np.prod(shape)) // rows.shape[1]
        scaled = (rows[-window:] - self.offset) / self.scale
        return scaled.astype(np.float32).reshape(1, *shape)

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self.keras_model.predict(x, verbose=0), dtype=np.float64)


def _conv2d() -> Any:
    import keras

    inputs = keras.Input((3, 1, 4, 2))
    x = keras.layers.ConvLSTM2D(4, (1, 2), padding="same", name="lstm")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, name="head")(x)
    return keras.Model(inputs, keras.layers.Reshape((3, 2))(x), name="conv2d")


def _conv1d(steps: int, subsequences: int, features: int, horizon: int) -> Any:
    import keras

    inputs = keras.Input((subsequences, steps, features))
    x = keras.layers.ConvLSTM1D(4, 2, padding="same", name="lstm")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(horizon, name="head")(x))


def export_series(directory: Path, name: str, model: Any, *flags: str) -> Path:
    source = directory / f"{name}.keras"
    model.save(source)
    args = ["export", "--keras", str(source), "--task", "series", "--name", name]
    code = main([*args, "--models", str(directory / "models"), "--range", "-2", "2", *flags])
    assert code == 0, f"export of {name} failed"
    return directory / "models" / f"{name}.onnx"


def build_series_models(directory: Path) -> dict[str, SeriesModel]:
    import keras

    keras.utils.set_random_seed(5)
    conv2d = _conv2d()
    conv1d = _conv1d(steps=4, subsequences=3, features=2, horizon=2)
    uni = _conv1d(steps=3, subsequences=2, features=1, horizon=2)
    offset2, scale2 = np.array([10.0, -3.0]), np.array([2.0, 0.5])
    offset1, scale1 = np.array([100.0]), np.array([20.0])
    return {
        "conv2d": SeriesModel(
            "conv2d",
            export_series(directory, "conv2d", conv2d, "--frequency", "W"),
            conv2d,
            np.zeros(2),
            np.ones(2),
        ),
        "conv1d": SeriesModel(
            "conv1d",
            export_series(
                directory,
                "conv1d",
                conv1d,
                "--target",
                "1",
                "--offset",
                *map(str, offset2),
                "--scale",
                *map(str, scale2),
            ),
            conv1d,
            offset2,
            scale2,
        ),
        "uni": SeriesModel(
            "uni",
            export_series(
                directory,
                "uni",
                uni,
                "--frequency",
                "month",
                "--offset",
                str(offset1[0]),
                "--scale",
                str(scale1[0]),
            ),
            uni,
            offset1,
            scale1,
        ),
    }
