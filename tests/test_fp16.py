"""The opt-in float16 graph: converted from the float32 graph, gated on the test split's
MSE, carded, and served as any other model."""

from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from convlstm_card import read_card, sha256_of
from model_export.export.fp16 import Fp16Error, convert, fp16_path
from model_export.export.frame_models import export
from model_export.frames.model import build_convlstm
from service.inference.session import GraphOptions, OnnxSession

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ConvLSTM, exported by tf2onnx as the fast graph with its card."""
    keras.utils.set_random_seed(11)
    directory = tmp_path_factory.mktemp("models")
    build_convlstm(filters=(4, 6)).save(directory / "convlstm.keras")
    return export(directory / "convlstm.keras").onnx_path


def test_fp16_graph_is_gated_carded_and_served(exported: Path) -> None:
    card = convert(exported, sequences=8)
    out = fp16_path(exported)
    assert out == exported.parent / "fp16" / "convlstm_fp16.onnx"
    graph = onnx.load(str(out)).graph
    weights = {i.data_type for i in graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights  # the arithmetic is float16...
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # ...its IO not
    assert card.sha256 == sha256_of(out) and card.stream is None
    assert card.graph is not None and card.graph.kind == "fp16"
    assert card.graph.source is not None and card.graph.source.sha256 == sha256_of(exported)
    parity = card.parity or {}
    assert parity["mse_ratio"] <= 1.01 and parity["sequences"] == 8
    assert read_card(out.with_suffix(".json")) == card
    # The server loads it as any carded model and answers float32 frames.
    session = OnnxSession(out, GraphOptions(provider="cpu"))
    x = np.random.default_rng(0).random((2, *session.input_shape[1:]), dtype=np.float32)  # type: ignore[misc]
    y = session.run(x)
    reference = OnnxSession(exported, GraphOptions(provider="cpu")).run(x)
    assert y.dtype == np.float32 and y.shape == reference.shape
    np.testing.assert_allclose(y, reference, atol=parity["max_abs_diff"] * 10 + 1e-3)


def test_a_graph_that_predicts_worse_is_refused_and_nothing_written(
    exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "refused_fp16.onnx"
    with pytest.raises(Fp16Error, match="at most 0.5x allowed"):
        convert(exported, out, sequences=4, tolerance=-0.5)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_writes_it_and_says_the_gate(exported: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_export",
            "fp16",
            "--models",
            str(exported.parent),
            "--sequences",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "fp16/convlstm_fp16.onnx: MSE" in result.stdout and "x), max |fp16 - fp32|" in result.stdout
    )
