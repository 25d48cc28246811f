import keras
import numpy as np
import pytest
from keras import layers

from model_export.model import build, build_convlstm, format_table, parameter_table, to_inference

EXPECTED_CONVLSTM = {
    "convlstm_1": 35_760,
    "convlstm_2": 144_200,
    "convlstm_3": 237_840,
    "convlstm_4": 327_880,
}


def test_convlstm_parameters_match_the_reference_arithmetic() -> None:
    model = build_convlstm()
    rows = {r.name: r for r in parameter_table(model)}
    assert {n: rows[n].params for n in EXPECTED_CONVLSTM} == EXPECTED_CONVLSTM
    assert sum(r.params for r in rows.values() if r.part == "body") == 745_680
    assert rows["next_frame"].params == 3 * 3 * 70 * 3 + 3
    assert rows["next_frame"].part == "head"
    assert rows["convlstm_2"].formula == "4 × (3·3·(30+50)·50 + 50)"


def test_formulas_evaluate_to_the_counts() -> None:
    for variant in ("convlstm", "cnn_lstm"):
        for row in parameter_table(build(variant)):
            expr = row.formula.replace("×", "*").replace("·", "*")
            assert eval(expr) == row.params, row  # noqa: S307 - our own arithmetic strings


def test_printed_table_shows_every_count() -> None:
    text = format_table(build_convlstm())
    for count in ("35,760", "144,200", "237,840", "327,880", "745,680", "1,893"):
        assert count in text


def test_io_shapes() -> None:
    for variant in ("convlstm", "cnn_lstm"):
        model = build(variant)
        assert tuple(model.input.shape) == (None, 15, 40, 40, 3)
        assert tuple(model.output.shape) == (None, 40, 40, 3)
        assert tuple(build(variant, every_step=True).output.shape) == (None, 15, 40, 40, 3)


@pytest.mark.parametrize("variant", ["convlstm", "cnn_lstm"])
def test_every_step_weights_load_into_inference_model(variant: str) -> None:
    # The claim behind every-step training: same weights, and the inference
    # model's output is the training model's last step.
    trained = build(variant, every_step=True)
    inference = to_inference(trained, variant)  # type: ignore[arg-type]
    assert trained.count_params() == inference.count_params()
    x = np.random.default_rng(0).random((2, 15, 40, 40, 3), dtype=np.float32)
    every = np.asarray(trained.predict(x, verbose=0))
    last = np.asarray(inference.predict(x, verbose=0))
    np.testing.assert_allclose(every[:, -1], last, atol=1e-5)


def test_every_formula_evaluates_to_its_parameter_count() -> None:
    inputs = keras.Input((4, 8, 8, 3))
    x = layers.ConvLSTM2D(4, (3, 3), padding="same", return_sequences=True)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.TimeDistributed(layers.Conv2D(4, 3, padding="same", groups=2))(x)
    x = layers.Conv3D(3, (3, 3, 3), padding="same", use_bias=False)(x)
    series = keras.Input((5, 16, 2))
    y = layers.ConvLSTM1D(4, 3, padding="same", return_sequences=True)(series)
    y = layers.TimeDistributed(layers.Conv1D(2, 3, padding="same"))(y)
    models = [keras.Model(inputs, x), keras.Model(series, y), build("convlstm"), build("cnn_lstm")]
    rows = [row for model in models for row in parameter_table(model)]
    assert {row.kind for row in rows} >= {"ConvLSTM1D", "BatchNormalization", "Conv3D", "Dense"}
    for row in rows:
        arithmetic = row.formula.replace("×", "*").replace("·", "*")
        assert eval(arithmetic, {"__builtins__": {}}) == row.params, row
