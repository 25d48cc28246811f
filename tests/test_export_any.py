"""``python -m model_export export --keras``: real tf2onnx exports of small Keras models of
many shapes, each run in onnxruntime against Keras; and the refusals, which write nothing."""

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from keras import layers

from convlstm_card import read_card, sha256_of
from model_export.__main__ import main
from model_export.export.fast import fast_graph_refusal

pytestmark = pytest.mark.slow


def sequential_convlstm2d() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((4, 8, 8, 2)),
            layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True),
            layers.ConvLSTM2D(4, (3, 3), padding="same"),
            layers.Conv2D(2, (3, 3), padding="same", activation="sigmoid"),
        ]
    )


def batchnorm_conv3d_per_step() -> keras.Model:
    inputs = keras.Input((5, 8, 8, 3))
    x = layers.ConvLSTM2D(4, (3, 3), padding="same", return_sequences=True)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.ConvLSTM2D(
        4, (5, 5), padding="same", activation="relu", return_sequences=True, dropout=0.1
    )(x)
    out = layers.Conv3D(3, (3, 3, 3), padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, out)


def non_square_one_channel_next_frame() -> keras.Model:
    inputs = keras.Input((6, 12, 20, 1))
    x = layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True)(inputs)
    x = layers.ConvLSTM2D(5, (5, 5), padding="same")(x)
    out = layers.Conv2D(1, (3, 3), padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, out)


def raw_feature_map() -> keras.Model:
    inputs = keras.Input((4, 8, 8, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, (3, 3), strides=2, padding="same"))(inputs)
    x = layers.ConvLSTM2D(7, (3, 3), padding="valid", activation="relu")(x)
    return keras.Model(inputs, x)


def convlstm1d() -> keras.Model:
    inputs = keras.Input((5, 16, 2))
    x = layers.ConvLSTM1D(4, 3, padding="same", return_sequences=True)(inputs)
    x = layers.ConvLSTM1D(3, 3, padding="same")(x)
    out = layers.Conv1D(2, 3, padding="same")(x)
    return keras.Model(inputs, out)


def conv3d_only() -> keras.Model:
    inputs = keras.Input((4, 8, 8, 2))
    x = layers.Conv3D(4, (3, 3, 3), padding="same", activation="relu")(inputs)
    return keras.Model(inputs, layers.Conv3D(2, (1, 3, 3), padding="same")(x))


CASES: dict[str, tuple[Callable[[], keras.Model], str, str, str, str]] = {
    # name: (builder, task, output kind, graph kind, input kind)
    "sequential": (sequential_convlstm2d, "next_frame", "next_frame", "fast", "tensor"),
    "per_step": (batchnorm_conv3d_per_step, "next_frame", "frame_per_step", "plain", "image"),
    "non_square": (non_square_one_channel_next_frame, "next_frame", "next_frame", "fast", "image"),
    "feature_map": (raw_feature_map, "next_frame", "tensor", "plain", "image"),
    "convlstm1d": (convlstm1d, "tensor", "next_frame", "plain", "tensor"),
    "conv3d": (conv3d_only, "next_frame", "frame_per_step", "plain", "tensor"),
}


def stack(**head: object) -> keras.Model:
    inputs = keras.Input((4, 8, 8, 1))
    x = layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True)(inputs)
    x = layers.ConvLSTM2D(3, (3, 3), padding="same")(x)
    config: dict[str, object] = {"padding": "same", "activation": "sigmoid"} | head
    return keras.Model(inputs, layers.Conv2D(1, (3, 3), **config)(x))


def test_the_fast_graph_rules_say_why_a_stack_does_not_fit() -> None:
    assert fast_graph_refusal(stack()) is None
    assert "'activation': 'relu'" in str(fast_graph_refusal(stack(activation="relu")))
    assert "'padding': 'valid'" in str(fast_graph_refusal(stack(padding="valid")))
    inputs = keras.Input((4, 8, 8, 1))
    strided = layers.ConvLSTM2D(3, (3, 3), strides=2, padding="same")(inputs)
    head = layers.Conv2D(1, (3, 3), padding="same", activation="sigmoid")
    assert "'strides': (2, 2)" in str(fast_graph_refusal(keras.Model(inputs, head(strided))))
    per_step = layers.Conv3D(1, 3, padding="same")(
        layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True)(inputs)
    )
    assert "then one Conv2D head" in str(fast_graph_refusal(keras.Model(inputs, per_step)))


@pytest.mark.parametrize("case", list(CASES))
def test_a_keras_model_exports_with_a_card_and_matches_keras(case: str, tmp_path: Path) -> None:
    build, task, kind, graph, input_kind = CASES[case]
    keras.utils.set_random_seed(3)
    model = build()
    source = tmp_path / f"{case}.keras"
    model.save(source)
    models = tmp_path / "models"

    assert main(["export", "--keras", str(source), "--name", case, "--models", str(models)]) == 0

    assert sorted(p.name for p in models.iterdir()) == [f"{case}.json", f"{case}.onnx"]
    card = read_card(models / f"{case}.json")
    assert (card.task, card.output_kind) == (task, kind)
    assert card.graph is not None and card.graph.kind == graph and card.graph.reason
    assert card.sha256 == sha256_of(models / f"{case}.onnx")
    assert card.input.shape == ["N", *model.input_shape[1:]]
    assert card.output.shape == ["N", *model.output_shape[1:]]
    # Frames of 2 channels are no image, but the next_frame task takes [0, 1] all the same;
    # a tensor model states no range nobody declared.
    assert card.input.kind == input_kind
    assert card.input.range == (None if task == "tensor" else (0.0, 1.0))
    assert card.parity is not None and card.parity["max_abs_diff"] <= 1e-4
    assert card.model_extra is not None
    assert card.model_extra["source"]["sha256"] == sha256_of(source)

    x = np.random.default_rng(7).random((3, *model.input_shape[1:]), dtype=np.float32)
    session = ort.InferenceSession(str(models / f"{case}.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {card.input.name: x})[0]
    expected = keras.models.load_model(source).predict(x, verbose=0)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= 1e-4


def test_series_task_and_data_are_recorded(tmp_path: Path) -> None:
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, layers.Dense(2)(layers.LSTM(4)(inputs)))
    source = tmp_path / "series.keras"
    model.save(source)
    data = tmp_path / "seqs.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(5, 6, 3)).astype(np.float32))
    models = tmp_path / "models"
    args = ["export", "--keras", str(source), "--name", "s", "--models", str(models)]
    code = main([*args, "--task", "series", "--range", "-3", "3", "--data", str(data)])
    assert code == 0
    card = read_card(models / "s.json")
    assert (card.task, card.output_kind, card.input.range) == ("series", "tensor", (-3.0, 3.0))
    assert card.parity is not None and str(data) in card.parity["inputs"]


@keras.saving.register_keras_serializable(package="tests")
class QR(layers.Layer):  # type: ignore[misc]
    """An op tf2onnx has no conversion for."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.linalg.qr(x)[0]


def unconvertible(path: Path) -> None:
    inputs = keras.Input((4, 6, 6, 1))
    keras.Model(inputs, QR()(layers.Reshape((4, 36))(inputs))).save(path)


def not_keras(path: Path) -> None:
    path.write_text("not a model\n")


def missing(path: Path) -> None:
    pass


def unknown_custom_layer(path: Path) -> None:
    class Doubled(layers.Layer):  # type: ignore[misc]
        def call(self, x: tf.Tensor) -> tf.Tensor:
            return 2 * x

    inputs = keras.Input((4, 6, 6, 1))
    keras.Model(inputs, Doubled()(inputs)).save(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (missing, "no such file"),
        (not_keras, "not a Keras model file"),
        (unknown_custom_layer, "Keras could not load it"),
        (unconvertible, "tf2onnx could not convert the TensorFlow op(s) Qr"),
    ],
)
def test_a_model_that_cannot_be_exported_is_refused_and_nothing_is_written(
    make: Callable[[Path], None],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "model.keras"
    make(source)
    models = tmp_path / "models"
    models.mkdir()
    assert main(["export", "--keras", str(source), "--name", "m", "--models", str(models)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("export failed: ") and message in err[-1], err
    assert list(models.iterdir()) == []


def test_a_next_frame_model_takes_pixel_values_in_0_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "m.keras"
    batchnorm_conv3d_per_step().save(source)
    models = tmp_path / "models"
    args = ["export", "--keras", str(source), "--name", "m", "--models", str(models)]
    assert main([*args, "--range", "-1", "1"]) == 1
    assert "a next_frame model takes pixel values in [0, 1]" in capsys.readouterr().err
    assert not models.exists()
    assert main([*args, "--range", "-1", "1", "--task", "tensor"]) == 0
    card = read_card(models / "m.json")
    assert (card.task, card.output_kind, card.input.range) == ("tensor", "frame_per_step", (-1, 1))


def test_failed_parity_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_export.export.any_model import ExportError, export_keras

    source = tmp_path / "m.keras"
    sequential_convlstm2d().save(source)
    models = tmp_path / "models"
    with pytest.raises(ExportError, match=r"parity failed: .* \(max abs, allowed -1\)"):
        export_keras(source, name="m", models_dir=models, tolerance=-1.0)
    assert not models.exists()
