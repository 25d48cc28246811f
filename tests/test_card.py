"""The model card contract (``convlstm_card``): the committed cards read as typed cards,
write back unchanged, and say what they would have said had ``task`` and
``output_kind`` existed when they were written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from convlstm_card import ModelCard, card_path, infer_output_kind, infer_task, read_card

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted([*REPO.glob("models/*.json"), *REPO.glob("models/int8/*.json")])
# models/training/*.json are training records, not cards.
assert COMMITTED, "no committed cards found"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_cards_validate_and_write_back_unchanged(path: Path) -> None:
    card = read_card(path)
    assert (card.task, card.output_kind) == ("next_frame", "next_frame")
    assert card.input.shape == ["N", 15, 40, 40, 3] and card.input.range == (0.0, 1.0)
    assert card.output.shape == ["N", 40, 40, 3]
    assert card.sha256 is not None and card.file == path.with_suffix(".onnx").name
    written = card.to_json()
    on_disk = json.loads(path.read_text())
    # A card written before `task` and `output_kind` existed gets them inferred; nothing
    # else is new, and every section the file has is kept as it was.
    for field in ("task", "output_kind"):
        assert on_disk.get(field, written[field]) == written[field] == "next_frame"
        on_disk.setdefault(field, written[field])
    assert written == on_disk


def test_card_path_is_the_model_path_with_json() -> None:
    assert card_path(Path("models/convlstm.onnx")) == Path("models/convlstm.json")
    assert card_path(Path("m/convlstm.plain.onnx")) == Path("m/convlstm.plain.json")


@pytest.mark.parametrize(
    ("inputs", "outputs", "task", "kind"),
    [
        (["N", 15, 40, 40, 3], ["N", 40, 40, 3], "next_frame", "next_frame"),
        (["N", 10, 64, 64, 1], ["N", 64, 64, 1], "next_frame", "next_frame"),
        (["N", 15, 40, 40, 3], ["N", 15, 40, 40, 3], "next_frame", "frame_per_step"),
        (["N", 15, 40, 40, 3], ["N", 20, 20, 3], "next_frame", "tensor"),
        (["N", 8], ["N", 8], "tensor", "tensor"),
        (["N", 40, 40, 3], ["N", 40, 40, 3], "tensor", "tensor"),
    ],
)
def test_task_and_output_kind_follow_from_the_shapes(
    inputs: list[int | str], outputs: list[int | str], task: str, kind: str
) -> None:
    assert infer_task(inputs) == task
    assert infer_output_kind(infer_task(inputs), inputs, outputs) == kind
    card = ModelCard.model_validate(
        {
            "name": "m",
            "inputs": [{"name": "x", "shape": inputs}],
            "outputs": [{"name": "y", "shape": outputs}],
        }
    )
    assert (card.task, card.output_kind) == (task, kind)


def test_a_stated_task_is_kept() -> None:
    card = ModelCard.model_validate(
        {
            "name": "m",
            "task": "tensor",
            "inputs": [{"name": "x", "shape": ["N", 4, 8, 8, 1]}],
            "outputs": [{"name": "y", "shape": ["N", 8, 8, 1]}],
        }
    )
    assert (card.task, card.output_kind) == ("tensor", "tensor")


def test_a_card_that_states_neither_task_nor_shapes_is_refused() -> None:
    with pytest.raises(ValidationError, match="task"):
        ModelCard.model_validate({"name": "m", "version": "1"})
    with pytest.raises(ValidationError, match="task"):
        ModelCard.model_validate({"name": "m", "task": "audio", "inputs": []})


def test_the_contract_imports_neither_tensorflow_nor_onnxruntime() -> None:
    code = (
        "import sys, convlstm_card; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'onnx', 'onnxruntime', 'service', 'model_export')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
