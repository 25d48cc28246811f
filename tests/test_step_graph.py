"""The step graph of a small real ConvLSTM stack, exported by tf2onnx, run in onnxruntime."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convlstm_card import read_card, sha256_of
from model_export.export.frame_models import ParityError, check_graphs, export
from model_export.export.keras_to_onnx import onnx_predict
from model_export.export.step_graph import (
    StepGraphError,
    build_step_model,
    export_step_graph,
    run_steps,
    step_path,
    to_step_onnx_bytes,
)
from model_export.frames.model import build_cnn_lstm, build_convlstm

pytestmark = pytest.mark.slow

FILTERS = (4, 6)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer stack exported by the project's export: windowed and step graph."""
    path = tmp_path_factory.mktemp("step") / "small.keras"
    build_convlstm(filters=FILTERS).save(path)
    return export(path).onnx_path


def frames(n: int = 2, t: int = 15) -> np.ndarray:
    return np.random.default_rng(7).random((n, t, 40, 40, 3), dtype=np.float32)


def test_export_writes_the_step_graph_and_its_card_section(exported: Path) -> None:
    step = step_path(exported)
    card = read_card(exported.with_suffix(".json"))
    assert card.stream is not None
    assert card.stream.step_graph.file == step.name
    assert card.stream.step_graph.sha256 == sha256_of(step)
    assert [(s.name, s.shape) for s in card.stream.state] == [
        ("h_1", ["N", 4, 40, 40]),
        ("c_1", ["N", 4, 40, 40]),
        ("h_2", ["N", 6, 40, 40]),
        ("c_2", ["N", 6, 40, 40]),
    ]
    assert card.stream.state_bytes_per_stream == 4 * 40 * 40 * (4 + 6) * 2
    assert card.stream.parity is not None and card.stream.parity["max_abs_diff"] <= 1e-5
    # The step graph has no card of its own, so a server never serves it as a model.
    assert not step.with_suffix(".json").exists()
    session = ort.InferenceSession(str(step), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["frame", "h_1", "c_1", "h_2", "c_2"]
    assert [o.name for o in session.get_outputs()] == [
        "next_frame",
        "next_h_1",
        "next_c_1",
        "next_h_2",
        "next_c_2",
    ]


def test_fifteen_steps_from_zero_state_equal_the_windowed_graph(exported: Path) -> None:
    model, layout = build_step_model(build_convlstm(filters=FILTERS))
    del model
    x = frames()
    stepped = run_steps(step_path(exported), layout, x)
    assert float(np.max(np.abs(stepped - onnx_predict(exported, x)))) <= 1e-5
    # The state carries the earlier frames: fewer steps give another answer.
    fewer = run_steps(step_path(exported), layout, x[:, 5:])
    assert float(np.max(np.abs(fewer - stepped))) > 1e-4


def test_step_graph_of_other_weights_fails_parity(tmp_path: Path, exported: Path) -> None:
    other, layout = build_step_model(build_convlstm(filters=FILTERS))  # fresh random weights
    x = frames(1)
    stepped = run_steps(to_step_onnx_bytes(other, layout, 17), layout, x)
    assert float(np.max(np.abs(stepped - onnx_predict(exported, x)))) > 1e-3


def test_failed_parity_writes_nothing(tmp_path: Path) -> None:
    ckpt = tmp_path / "strict.keras"
    build_convlstm(filters=(4,)).save(ckpt)
    export(ckpt)
    step_path(ckpt.with_suffix(".onnx")).unlink()
    before = ckpt.with_suffix(".json").read_text()
    with pytest.raises(StepGraphError, match="differs from"):
        export_step_graph(ckpt, tolerance=-1.0)
    assert not step_path(ckpt.with_suffix(".onnx")).exists()
    assert ckpt.with_suffix(".json").read_text() == before


def test_a_model_without_convlstm_state_gets_no_step_graph() -> None:
    with pytest.raises(ValueError, match="no step graph"):
        build_step_model(build_cnn_lstm())


def test_check_covers_the_step_graph(tmp_path: Path) -> None:
    ckpt = tmp_path / "checked.keras"
    build_convlstm(filters=(4,)).save(ckpt)
    export(ckpt)
    step = step_path(ckpt.with_suffix(".onnx"))
    diffs = check_graphs(ckpt)
    assert diffs[step.name] <= 1e-5
    step.write_bytes(step.read_bytes() + b"\0")
    with pytest.raises(ParityError, match="sha256"):
        check_graphs(ckpt)


@pytest.mark.parametrize("head", ["blend", "carry"])
def test_gated_heads_step_with_this_frame_as_the_last_input_frame(
    tmp_path: Path, head: str
) -> None:
    # The blend and carry heads mix in the last input frame: in the step graph that is
    # the frame just given, so 15 steps must still equal the windowed graph.
    import keras

    path = tmp_path / f"{head}.keras"
    build_convlstm(filters=FILTERS, head=head).save(path)
    onnx_path = export(path).onnx_path
    card = read_card(onnx_path.with_suffix(".json"))
    assert card.stream is not None and card.stream.parity is not None
    assert card.stream.parity["max_abs_diff"] <= 1e-5
    _, layout = build_step_model(keras.models.load_model(path))
    x = frames()
    stepped = run_steps(step_path(onnx_path), layout, x)
    np.testing.assert_allclose(stepped, onnx_predict(onnx_path, x), atol=1e-5)
    # ... and the frame matters: other last frames give other predictions.
    other = x.copy()
    other[:, -1] = 1.0 - other[:, -1]
    assert np.abs(run_steps(step_path(onnx_path), layout, other) - stepped).max() > 1e-3
