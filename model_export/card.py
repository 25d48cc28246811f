"""The model card: a JSON file beside each ONNX file that says what it is.

The service reads it to learn the input and output contract; people read it
to learn how the model was made and how good it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def read_card(path: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads(path.read_text())
    return card


def write_card(path: Path, card: dict[str, Any]) -> None:
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def update_card(path: Path, **sections: Any) -> dict[str, Any]:
    """Replace top-level sections of an existing card, keeping the rest."""
    card = read_card(path)
    card.update(sections)
    write_card(path, card)
    return card
