from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from model_export.frames.model import (
    build,
    build_convlstm,
    copy_weights_by_name,
    format_table,
    parameter_table,
    to_inference,
)

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


def test_blend_head_keeps_the_stack_and_lists_its_own_parameters() -> None:
    rows = {r.name: r for r in parameter_table(build_convlstm(head="blend"))}
    assert {n: rows[n].params for n in EXPECTED_CONVLSTM} == EXPECTED_CONVLSTM
    assert sum(r.params for r in rows.values() if r.part == "body") == 745_680
    head = {n: r.params for n, r in rows.items() if r.part == "head"}
    assert head == {"next_frame": 1_893, "next_frame_keep": 1_893}


def _with_keep_bias(model: keras.Model, bias: float) -> keras.Model:
    layer = next(
        layer for layer in model.layers if "next_frame_keep" in (layer.name, _inner_name(layer))
    )
    kernel, b = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.full_like(b, bias)])
    return model


def _inner_name(layer: keras.layers.Layer) -> str:
    return str(layer.layer.name) if isinstance(layer, layers.TimeDistributed) else str(layer.name)


def test_blend_head_passes_the_last_frame_or_the_drawn_frame() -> None:
    x = np.random.default_rng(1).random((2, 15, 40, 40, 3), dtype=np.float32)
    keep_all = _with_keep_bias(build_convlstm(filters=(4,), head="blend"), 40.0)
    np.testing.assert_allclose(keep_all.predict(x, verbose=0), x[:, -1], atol=1e-6)
    keep_none = _with_keep_bias(build_convlstm(filters=(4,), head="blend"), -40.0)
    drawn = build_convlstm(filters=(4,))
    drawn.set_weights(keep_none.get_weights()[: len(drawn.get_weights())])
    np.testing.assert_allclose(
        keep_none.predict(x, verbose=0), drawn.predict(x, verbose=0), atol=1e-6
    )


def test_blend_every_step_weights_load_into_inference_model() -> None:
    trained = build("convlstm", every_step=True, head="blend")
    inference = to_inference(trained, "convlstm")
    assert trained.count_params() == inference.count_params() == 745_680 + 2 * 1_893
    x = np.random.default_rng(0).random((1, 15, 40, 40, 3), dtype=np.float32)
    every = np.asarray(trained.predict(x, verbose=0))
    np.testing.assert_allclose(every[:, -1], inference.predict(x, verbose=0), atol=1e-5)


def test_warm_start_copies_shared_layers_by_name() -> None:
    source = build_convlstm(filters=(4, 6))
    target = build_convlstm(filters=(4, 6), every_step=True, head="blend")
    copied = copy_weights_by_name(source, target)
    assert copied == ["convlstm_1", "convlstm_2", "next_frame"]
    for name in copied:
        a = next(layer for layer in source.layers if _inner_name(layer) == name)
        b = next(layer for layer in target.layers if _inner_name(layer) == name)
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(wa, wb)
    wider = build_convlstm(filters=(5, 6))
    assert "convlstm_1" not in copy_weights_by_name(wider, target)  # shapes differ


def test_warm_start_finds_the_cnn_lstms_wrapped_layers_by_their_own_names(
    tmp_path: Path,
) -> None:
    # Keras numbers the layers inside the CNN-LSTM's TimeDistributed wrappers per build
    # (conv2d, conv2d_1, ...); the wrappers carry the names. A saved model, built earlier
    # in another session, must still warm-start every layer of a fresh every-step build.
    build("cnn_lstm")  # a first build takes the unnumbered inner names
    source = build("cnn_lstm")
    source.set_weights([np.full_like(w, 0.5) for w in source.get_weights()])
    source.save(tmp_path / "cnn.keras")
    saved = keras.models.load_model(tmp_path / "cnn.keras")
    target = build("cnn_lstm", every_step=True)
    assert copy_weights_by_name(saved, target) == ["frame_conv", "lstm", "decode"]
    for w in target.get_weights():
        np.testing.assert_array_equal(w, np.full_like(w, 0.5))


def test_blend_head_is_for_the_convlstm_only() -> None:
    with pytest.raises(ValueError, match="convlstm variant only"):
        build("cnn_lstm", head="blend")


def test_carry_head_draws_one_intensity_coloured_from_the_last_frame() -> None:
    rows = {r.name: r for r in parameter_table(build_convlstm(head="carry"))}
    assert sum(r.params for r in rows.values() if r.part == "body") == 745_680
    head = {n: r.params for n, r in rows.items() if r.part == "head"}
    assert head == {"next_frame": 3 * 3 * 70 + 1, "next_frame_keep": 3 * 3 * 70 + 1}
    # A red digit in the last frame, intensity 1 everywhere, the gate shut: the output
    # is red wherever the 7x7 window reaches the digit, black elsewhere.
    x = np.zeros((1, 15, 40, 40, 3), np.float32)
    x[0, -1, 10:14, 10:14] = [0.9, 0.3, 0.3]
    model = _with_keep_bias(build_convlstm(filters=(4,), head="carry"), -40.0)
    drawn = model.get_layer("next_frame")
    kernel, bias = drawn.get_weights()
    drawn.set_weights([np.zeros_like(kernel), np.full_like(bias, 40.0)])
    y = model.predict(x, verbose=0)[0]
    np.testing.assert_allclose(y[7, 7], [0.9, 0.3, 0.3], atol=1e-6)  # 3 px off the corner
    np.testing.assert_allclose(y[16, 16], [0.9, 0.3, 0.3], atol=1e-6)
    np.testing.assert_allclose(y[6, 6], [0, 0, 0], atol=1e-6)  # 4 px off: out of reach
    np.testing.assert_allclose(y[17, 10], [0, 0, 0], atol=1e-6)


def test_carry_warm_start_takes_the_mean_of_a_three_channel_head() -> None:
    source = build_convlstm(filters=(4,))
    target = build_convlstm(filters=(4,), every_step=True, head="carry")
    assert copy_weights_by_name(source, target) == ["convlstm_1", "next_frame"]
    kernel, bias = source.get_layer("next_frame").get_weights()
    wrapped = target.get_layer("next_frame_every_step").layer
    np.testing.assert_allclose(wrapped.get_weights()[0], kernel.mean(axis=-1, keepdims=True))
    np.testing.assert_allclose(wrapped.get_weights()[1], bias.mean(keepdims=True))
