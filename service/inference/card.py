"""The card of a model about to be served, checked against the file it describes.

The contract itself (fields, where the card lies) is ``convlstm_card``'s; what is here
is the service's policy: a model without a card is still served, a card for another
file is refused, and the shapes the card states must be the graph's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from convlstm_card import ModelCard, card_path
from service.errors import ModelLoadError


def served_card(
    model_path: Path, sha256: str, inputs: dict[str, Any], outputs: dict[str, Any]
) -> ModelCard:
    """The card for ``model_path`` (whose sha256 is ``sha256``), checked to describe that
    very file. ``inputs`` and ``outputs`` are the graph's own (``name``, ``shape``).

    A model without a card is served under its file name with version ``unknown``, and
    its shapes from the graph; a card that names another file (by sha256) is refused,
    since its metrics and shapes would describe a different model.
    """
    path = card_path(model_path)
    written: dict[str, Any] = _read_json(path) if path.is_file() else {"version": "unknown"}
    if written.get("sha256") not in (None, sha256):
        raise ModelLoadError(
            f"model card {path} is for sha256 {written['sha256']}, "
            f"but {model_path} has sha256 {sha256}"
        )
    raw: dict[str, Any] = {"name": model_path.stem, **written, "sha256": sha256}
    # A card that states no shapes (or no card) borrows the graph's.
    raw.setdefault("inputs", [inputs])
    raw.setdefault("outputs", [outputs])
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        raise ModelLoadError(
            f"model card {path} is not a model card: {where}: {first['msg']}"
        ) from None
    for kind, declared, graph in (
        ("input", card.input.shape, inputs["shape"]),
        ("output", card.output.shape, outputs["shape"]),
    ):
        if declared[1:] != graph[1:]:
            raise ModelLoadError(
                f"model card {path} states {kind} shape {declared}, "
                f"but {model_path} {'takes' if kind == 'input' else 'gives'} {graph}"
            )
    return card


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"model card {path} is not readable JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"model card {path} is not a JSON object")
    return raw
