"""The model card written by ``model_export`` beside each ONNX file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(card_path: Path, model_path: Path, sha256: str) -> dict[str, Any]:
    """The card for ``model_path``, checked to describe that very file.

    A model without a card is served under its file name with version ``unknown``;
    a card that names another file (by sha256) is refused, since its metrics and
    shapes would describe a different model.
    """
    if not card_path.is_file():
        return {"name": model_path.stem, "version": "unknown", "sha256": sha256}
    try:
        card: dict[str, Any] = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"model card {card_path} is not readable JSON: {err}") from None
    if not isinstance(card, dict):
        raise ModelLoadError(f"model card {card_path} is not a JSON object")
    if card.get("sha256") not in (None, sha256):
        raise ModelLoadError(
            f"model card {card_path} is for sha256 {card['sha256']}, "
            f"but {model_path} has sha256 {sha256}"
        )
    card.setdefault("name", model_path.stem)
    card.setdefault("version", "unknown")
    card["sha256"] = sha256
    return card


def card_input_shape(card: dict[str, Any]) -> list[int | str] | None:
    """The first input's shape as the card states it, if it does."""
    try:
        shape = card["inputs"][0]["shape"]
    except (KeyError, IndexError, TypeError):
        return None
    return list(shape) if isinstance(shape, list) else None
