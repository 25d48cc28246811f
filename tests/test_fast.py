"""The fast ConvLSTM graph: the trained weights, no Loop, the Keras model's output."""

import json
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from convlstm_card import read_card, sha256_of
from model_export.export.fast import build_fast_convlstm
from model_export.export.frame_models import (
    ParityError,
    check_graphs,
    export,
    parity,
    parity_inputs,
)
from model_export.export.keras_to_onnx import to_onnx_bytes
from model_export.frames.model import build_cnn_lstm, build_convlstm

pytestmark = pytest.mark.slow

CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "convlstm.keras"


def op_types(onnx_bytes: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(onnx_bytes).graph.node}


@pytest.fixture(scope="module")
def small() -> keras.Model:
    keras.utils.set_random_seed(5)
    model = build_convlstm(filters=(4, 6))
    # Non-zero biases, so that a gate taken in the wrong order shows.
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            weights[-1] = np.random.default_rng(0).normal(size=weights[-1].shape)
            layer.set_weights(weights)
    return model


def test_fast_model_holds_the_trained_weights_unchanged(small: keras.Model) -> None:
    fast = build_fast_convlstm(small)
    assert fast.count_params() == small.count_params()
    for a, b in zip(fast.get_weights(), small.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fast_model_computes_what_the_keras_model_computes(small: keras.Model) -> None:
    x = np.random.default_rng(3).random((2, 15, 40, 40, 3), dtype=np.float32)
    expected = small.predict(x, verbose=0)
    np.testing.assert_allclose(
        build_fast_convlstm(small).predict(x, verbose=0), expected, atol=1e-5
    )


def test_fast_graph_matches_keras_without_a_loop(small: keras.Model) -> None:
    onnx_bytes = to_onnx_bytes(build_fast_convlstm(small))
    assert "Loop" not in op_types(onnx_bytes)
    x = np.random.default_rng(1).random((3, 15, 40, 40, 3), dtype=np.float32)
    assert parity(small, onnx_bytes, x) <= 1e-4

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("frames", ["N", 15, 40, 40, 3])
    assert (out.name, out.shape) == ("next_frame", ["N", 40, 40, 3])


def test_fast_graph_of_other_weights_differs(small: keras.Model) -> None:
    other = build_fast_convlstm(build_convlstm(filters=(4, 6)))
    x = np.random.default_rng(2).random((2, 15, 40, 40, 3), dtype=np.float32)
    assert parity(small, to_onnx_bytes(other), x) > 1e-3


def test_export_writes_fast_and_plain_graphs_and_check_checks_both(
    small: keras.Model, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "convlstm.keras"
    small.save(checkpoint)
    result = export(checkpoint)
    assert result.plain_path == tmp_path / "convlstm.plain.onnx"
    assert result.max_abs_diff <= 1e-4 and result.plain_max_abs_diff is not None
    assert "Loop" not in op_types(result.onnx_path.read_bytes())
    assert "Loop" in op_types(result.plain_path.read_bytes())

    card = read_card(result.card_path)
    assert card.graph is not None and card.graph.kind == "fast"
    assert card.graph.plain is not None
    assert card.graph.plain.file == "convlstm.plain.onnx"
    assert card.graph.plain.sha256 == sha256_of(result.plain_path)
    assert card.sha256 == sha256_of(result.onnx_path)
    # ... and the one-step graph that streams run, beside them.
    assert set(check_graphs(checkpoint)) == {
        "convlstm.onnx",
        "convlstm.plain.onnx",
        "convlstm.step.onnx",
    }

    # Another model's plain graph passed off as this one's is caught.
    other = tmp_path / "other.keras"
    build_convlstm(filters=(4, 6)).save(other)
    export(other)
    result.plain_path.write_bytes((tmp_path / "other.plain.onnx").read_bytes())
    written = card.to_json()
    written["graph"]["plain"]["sha256"] = sha256_of(result.plain_path)
    result.card_path.write_text(json.dumps(written))
    with pytest.raises(ParityError, match="convlstm.plain.onnx: differs from"):
        check_graphs(checkpoint)


def test_export_keeps_the_evaluation_only_when_asked(small: keras.Model, tmp_path: Path) -> None:
    checkpoint = tmp_path / "convlstm.keras"
    small.save(checkpoint)
    export(checkpoint)
    card_file = checkpoint.with_suffix(".json")
    card = read_card(card_file).to_json()
    card["evaluation"] = {"split": "test", "metrics": {}}
    card_file.write_text(json.dumps(card))
    assert read_card(export(checkpoint, keep_evaluation=True).card_path).evaluation == {
        "split": "test",
        "metrics": {},
    }
    assert read_card(export(checkpoint).card_path).evaluation is None


def test_cnn_lstm_is_exported_plain_only(tmp_path: Path) -> None:
    checkpoint = tmp_path / "cnn_lstm.keras"
    build_cnn_lstm().save(checkpoint)
    result = export(checkpoint)
    assert result.plain_path is None
    assert not (tmp_path / "cnn_lstm.plain.onnx").exists()
    graph = read_card(result.card_path).graph
    assert graph is not None and graph.kind == "plain"


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="no committed checkpoint")
def test_fast_graph_of_the_committed_checkpoint() -> None:
    trained = keras.models.load_model(CHECKPOINT)
    fast = build_fast_convlstm(trained)
    head = [layer for layer in fast.layers if layer.name.startswith("next_frame")]
    body = fast.count_params() - sum(layer.count_params() for layer in head)
    # the carry head: intensity and keep gate, 3·3·70·1 + 1 each
    assert (body, [layer.count_params() for layer in head]) == (745_680, [631, 631, 0])
    onnx_bytes = to_onnx_bytes(fast)
    assert "Loop" not in op_types(onnx_bytes)
    assert parity(trained, onnx_bytes, parity_inputs(trained)) <= 1e-4


@pytest.mark.parametrize("head", ["blend", "carry"])
def test_blend_and_carry_heads_export_as_fast_graphs_with_the_served_contract(
    head: str, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(6)
    model = build_convlstm(filters=(4, 6), head=head)  # type: ignore[arg-type]
    keep = model.get_layer("next_frame_keep")
    kernel, bias = keep.get_weights()
    keep.set_weights([kernel, np.full_like(bias, -0.5)])  # the gate about half open
    checkpoint = tmp_path / "convlstm.keras"
    model.save(checkpoint)
    result = export(checkpoint)
    assert result.max_abs_diff <= 1e-4
    onnx_bytes = result.onnx_path.read_bytes()
    assert "Loop" not in op_types(onnx_bytes)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("frames", ["N", 15, 40, 40, 3])
    assert (out.name, out.shape) == ("next_frame", ["N", 40, 40, 3])
    x = parity_inputs(model)
    (y,) = session.run(["next_frame"], {"frames": x})
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert parity(model, onnx_bytes, x) <= 1e-4
    card = read_card(result.card_path)
    assert card.graph is not None and card.graph.kind == "fast"
    assert card.parameters is not None
    drawn = 3 if head == "blend" else 1
    assert (card.parameters.head, card.parameters.total) == (
        2 * (3 * 3 * 6 * drawn + drawn),
        card.parameters.body + 2 * (3 * 3 * 6 * drawn + drawn),
    )
