"""Where a card lies, how it is read and written, and the hash that ties it to its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from convlstm_card.schema import ModelCard


def card_path(model_path: Path) -> Path:
    """The card beside an ONNX file: ``models/convlstm.onnx`` -> ``models/convlstm.json``."""
    return model_path.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(path: Path) -> ModelCard:
    """The card at ``path``; raises ``OSError``, ``ValueError`` (not JSON) or pydantic's
    ``ValidationError`` (not a card)."""
    return ModelCard.model_validate(json.loads(path.read_text()))


def write_card(path: Path, card: ModelCard) -> None:
    path.write_text(json.dumps(card.to_json(), indent=2, ensure_ascii=False) + "\n")
