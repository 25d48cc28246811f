"""The opt-in int8 graph: made from the float32 graph by onnxruntime, checked, carded."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from convlstm_card import GraphFile, read_card, sha256_of
from model_export.export.frame_models import export
from model_export.export.quantize import (
    MEAN_ABS_TOLERANCE,
    QuantizationError,
    check_int8,
    compare,
    quantize,
)
from model_export.files import find_onnx, int8_path
from model_export.frames.model import build_convlstm

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parent.parent / "models"


def copy_files(source: Path, destination: Path) -> None:
    """The export's files (not the int8 directory an earlier test may have added)."""
    for path in source.iterdir():
        if path.is_file():
            (destination / path.name).write_bytes(path.read_bytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ConvLSTM, exported by tf2onnx as the fast graph with its card."""
    keras.utils.set_random_seed(11)
    directory = tmp_path_factory.mktemp("models")
    build_convlstm(filters=(4, 6)).save(directory / "convlstm.keras")
    return export(directory / "convlstm.keras").onnx_path


def test_int8_graph_lies_apart_under_a_model_name_of_its_own(tmp_path: Path) -> None:
    assert int8_path(Path("models/convlstm.onnx")) == Path("models/int8/convlstm_int8.onnx")
    assert find_onnx(tmp_path, "convlstm_int8") == tmp_path / "convlstm_int8.onnx"  # neither
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "convlstm_int8.onnx").touch()
    assert find_onnx(tmp_path, "convlstm_int8") == tmp_path / "int8" / "convlstm_int8.onnx"
    (tmp_path / "convlstm_int8.onnx").touch()
    assert find_onnx(tmp_path, "convlstm_int8") == tmp_path / "convlstm_int8.onnx"


def test_quantize_writes_an_int8_graph_and_its_card(exported: Path) -> None:
    card = quantize(exported, calibration_sequences=16)
    out = int8_path(exported)
    graph = onnx.load(str(out)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "no int8 weight in the quantized graph"
    # The input contract does not change: float32 frames in, float32 frame out.
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    on_disk = read_card(out.with_suffix(".json"))
    assert on_disk == card
    assert card.name == "convlstm_int8" and card.file == "convlstm_int8.onnx"
    assert card.sha256 == sha256_of(out)
    assert card.graph is not None and card.graph.kind == "int8"
    assert card.graph.source == GraphFile(file=f"../{exported.name}", sha256=sha256_of(exported))
    assert card.inputs == read_card(exported.with_suffix(".json")).inputs
    assert card.parity is not None
    assert 0 < card.parity["mean_abs_diff"] <= MEAN_ABS_TOLERANCE
    assert card.evaluation is None
    # The float32 step graph beside the source would not predict what int8 does.
    assert read_card(exported.with_suffix(".json")).stream is not None and card.stream is None
    assert check_int8(exported)["mean_abs_diff"] == pytest.approx(card.parity["mean_abs_diff"])


def test_quantization_that_strays_too_far_is_refused_and_nothing_written(
    exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "refused.onnx"
    with pytest.raises(QuantizationError, match="exceeds 1e-09"):
        quantize(exported, out, calibration_sequences=8, tolerance=1e-9)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert list(tmp_path.iterdir()) == []


def test_check_refuses_an_int8_graph_made_from_another_float32_graph(
    exported: Path, tmp_path: Path
) -> None:
    copy_files(exported.parent, tmp_path)
    copied = tmp_path / exported.name
    quantize(copied, calibration_sequences=8)
    check_int8(copied)
    # A re-export changes the float32 file; the int8 graph is now stale.
    copied.write_bytes(copied.read_bytes() + b"\0")
    with pytest.raises(QuantizationError, match="convlstm.onnx sha256"):
        check_int8(copied)


def test_cli_quantize_then_check(exported: Path, tmp_path: Path) -> None:
    copy_files(exported.parent, tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_export", *args, "--models", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    out = cli("quantize", "--calibration-sequences", "8")
    assert out.returncode == 0, out.stderr
    assert "int8/convlstm_int8.onnx: mean |int8 - float32|" in out.stdout
    out = cli("check", "--variant", "convlstm")
    assert out.returncode == 0, out.stderr
    assert "convlstm_int8: made from convlstm.onnx" in out.stdout

    card_file = tmp_path / "int8" / "convlstm_int8.json"
    card = json.loads(card_file.read_text())
    card["sha256"] = "0" * 64
    card_file.write_text(json.dumps(card))
    out = cli("check", "--variant", "convlstm")
    assert out.returncode == 1 and "convlstm_int8.onnx sha256" in out.stderr


def test_committed_int8_graph_was_made_from_the_committed_float32_graph() -> None:
    result = check_int8(MODELS / "convlstm.onnx")
    assert result["mean_abs_diff"] <= MEAN_ABS_TOLERANCE
    card = read_card(MODELS / "int8" / "convlstm_int8.json")
    assert card.evaluation is not None
    evaluation = card.evaluation["metrics"]
    # Reported beside float32 on the same test split, and close to it.
    assert evaluation["convlstm_int8"]["mse"] <= 1.1 * evaluation["convlstm"]["mse"]
    assert evaluation["convlstm_int8"]["mse_vs_copy_last"] < 0.5


def test_compare_is_zero_for_a_graph_against_itself(exported: Path) -> None:
    x = np.random.default_rng(0).random((2, 15, 40, 40, 3), dtype=np.float32)
    assert compare(exported, exported, x) == {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}
