"""A real tf2onnx export of a small real ConvLSTM, run in onnxruntime."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convlstm_card import read_card, sha256_of
from model_export.export.frame_models import ParityError, check, export, parity
from model_export.export.keras_to_onnx import to_onnx_bytes
from model_export.frames.model import build_convlstm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "small.keras"
    build_convlstm(filters=(4, 6)).save(path)
    return path


def test_export_writes_a_matching_onnx_file_and_card(small_checkpoint: Path) -> None:
    result = export(small_checkpoint)
    assert result.max_abs_diff <= 1e-4
    card = read_card(result.card_path)
    assert card.sha256 == sha256_of(result.onnx_path)
    assert card.input.name == "frames"
    assert card.output.shape == ["N", 40, 40, 3]
    # The export states what the service would otherwise infer from the shapes.
    written = json.loads(result.card_path.read_text())
    assert (written["task"], written["output_kind"]) == ("next_frame", "next_frame")
    assert [r.params for r in card.layers] == [
        4 * (9 * 7 * 4 + 4),
        4 * (9 * 10 * 6 + 6),
        9 * 6 * 3 + 3,
    ]
    assert card.format is not None and card.format.onnx_opset == 17
    assert card.versions is not None
    assert {"tensorflow", "keras", "tf2onnx", "onnx"} <= card.versions.keys()

    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("frames", "next_frame")
    for batch in (1, 3):  # dynamic batch axis
        x = np.zeros((batch, 15, 40, 40, 3), np.float32)
        assert session.run(None, {"frames": x})[0].shape == (batch, 40, 40, 3)
    assert check(small_checkpoint) <= 1e-4


def test_failed_parity_writes_nothing(tmp_path: Path) -> None:
    ckpt = tmp_path / "strict.keras"
    build_convlstm(filters=(4,)).save(ckpt)
    with pytest.raises(ParityError, match="differs from Keras"):
        export(ckpt, tolerance=-1.0)
    assert not ckpt.with_suffix(".onnx").exists()
    assert not ckpt.with_suffix(".json").exists()


def test_parity_detects_a_different_graph() -> None:
    a = build_convlstm(filters=(4,))
    b = build_convlstm(filters=(4,))  # same shape, other random weights
    x = np.random.default_rng(1).random((2, 15, 40, 40, 3), dtype=np.float32)
    assert parity(a, to_onnx_bytes(a), x) <= 1e-4
    assert parity(a, to_onnx_bytes(b), x) > 1e-3


def test_check_catches_a_card_that_does_not_match(small_checkpoint: Path) -> None:
    export(small_checkpoint)
    card_file = small_checkpoint.with_suffix(".json")
    card_file.write_text(card_file.read_text().replace(str(read_card(card_file).sha256), "0" * 64))
    with pytest.raises(ParityError, match="sha256"):
        check(small_checkpoint)
