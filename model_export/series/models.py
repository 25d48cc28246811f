"""The series models, each on the same window of W = S*K rows of F features, folded as
the export's framing says, forecasting the next h values of one target feature:

- ``convlstm2d``: ConvLSTM2D with a (1, k) kernel over (S, 1, K, F);
- ``convlstm1d``: ConvLSTM1D over (S, K, F);
- ``cnn_lstm``: TimeDistributed(Conv1D) -> TimeDistributed(MaxPooling1D) ->
  TimeDistributed(Flatten) -> LSTM -> Dense over (S, K, F);
- ``lstm``: a plain LSTM over the unfolded (W, F).

Every one adds its Dense head to the window's last target value (a fixed, untrained
Dense that picks it): the network learns the change from the last value, which keeps it
honest on series that leave the training range (CO2 rises every year). Built from
stock layers only, so that ``export --keras`` loads the saved file without custom code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SERIES_MODELS = ("convlstm2d", "convlstm1d", "cnn_lstm", "lstm")
FILTERS = 16
KERNEL = 3


def input_shape(kind: str, s: int, k: int, f: int) -> tuple[int, ...]:
    """The folded window's shape for ``kind`` (no batch axis)."""
    if kind == "convlstm2d":
        return (s, 1, k, f)
    if kind in ("convlstm1d", "cnn_lstm"):
        return (s, k, f)
    if kind == "lstm":
        return (s * k, f)
    raise ValueError(f"unknown series model {kind!r}; choose from {', '.join(SERIES_MODELS)}")


def build_series_model(kind: str, s: int, k: int, f: int, h: int, target: int) -> Any:
    """An uncompiled Keras model (folded window) -> (h,) in the scaled target's units."""
    import keras
    from keras import layers

    shape = input_shape(kind, s, k, f)
    inputs = keras.Input(shape, name="window")
    kernel = min(KERNEL, k)
    if kind == "convlstm2d":
        x = layers.ConvLSTM2D(FILTERS, (1, kernel), padding="same", name="convlstm")(inputs)
        x = layers.Flatten(name="flatten")(x)
    elif kind == "convlstm1d":
        x = layers.ConvLSTM1D(FILTERS, kernel, padding="same", name="convlstm")(inputs)
        x = layers.Flatten(name="flatten")(x)
    elif kind == "cnn_lstm":
        x = layers.TimeDistributed(
            layers.Conv1D(FILTERS, kernel, padding="same", activation="relu"), name="conv"
        )(inputs)
        x = layers.TimeDistributed(layers.MaxPooling1D(2, padding="same"), name="pool")(x)
        x = layers.TimeDistributed(layers.Flatten(), name="flatten")(x)
        x = layers.LSTM(FILTERS * 2, name="lstm")(x)
    else:
        x = layers.LSTM(FILTERS * 2, name="lstm")(inputs)
    change = layers.Dense(h, name="head")(x)
    last = _last_target(inputs, s * k, f, h, target)
    outputs = layers.Add(name="forecast")([change, last])
    return keras.Model(inputs, outputs, name=kind)


def _last_target(inputs: Any, w: int, f: int, h: int, target: int) -> Any:
    """The window's last value of ``target``, repeated h times, by stock layers."""
    import keras
    from keras import layers

    rows = layers.Reshape((w, f), name="rows")(inputs)
    last = layers.Cropping1D((w - 1, 0), name="last_row")(rows)
    pick = np.zeros((f, h), np.float32)
    pick[target] = 1.0
    last = layers.Reshape((f,), name="last_values")(last)
    return layers.Dense(
        h,
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(pick),
        name="last_target",
    )(last)
