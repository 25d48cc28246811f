"""The committed models: the ONNX files match their checkpoints and cards."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convlstm_card import read_card, sha256_of
from model_export.export.frame_models import check
from model_export.frames.model import VARIANTS

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("variant", VARIANTS)
def test_committed_files_exist(variant: str) -> None:
    for suffix in (".keras", ".onnx", ".json"):
        assert (MODELS / f"{variant}{suffix}").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_committed_onnx_matches_checkpoint_and_card(variant: str) -> None:
    assert check(MODELS / f"{variant}.keras") <= 1e-4
    card = read_card(MODELS / f"{variant}.json")
    assert card.sha256 == sha256_of(MODELS / f"{variant}.onnx")


def test_convlstm_contract_and_card() -> None:
    session = ort.InferenceSession(
        str(MODELS / "convlstm.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).random((2, 15, 40, 40, 3), dtype=np.float32)
    (y,) = session.run(["next_frame"], {"frames": x})
    assert y.shape == (2, 40, 40, 3)
    assert y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0

    card = read_card(MODELS / "convlstm.json")
    params = {r.name: r.params for r in card.layers}
    assert [params[f"convlstm_{i}"] for i in range(1, 5)] == [35_760, 144_200, 237_840, 327_880]
    assert card.parameters is not None and card.parameters.body == 745_680
    assert card.evaluation is not None
    metrics = card.evaluation["metrics"]
    assert {"convlstm", "cnn_lstm", "copy_last_frame"} <= metrics.keys()
