"""The card of a graph made from the served graph (the int8 and float16 variants): the
source's card, renamed to the new file, with how it was made and how it was checked.
The source's step graph is dropped: a float32 step graph would not predict what the
variant predicts, so a variant serves no streams."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convlstm_card import ModelCard, card_path, read_card, sha256_of, write_card


def write_variant_card(
    source: Path,
    out: Path,
    *,
    kind: str,
    description: str,
    producer: str,
    parity: dict[str, Any],
    graph_extra: dict[str, Any] | None = None,
) -> ModelCard:
    """Write ``out``'s card from ``source``'s (the file both cards name, and its sha256)."""
    fields = read_card(card_path(source)).to_json()
    fields.pop("stream", None)
    card = ModelCard.model_validate(
        {
            **fields,
            "name": out.stem,
            "file": out.name,
            "sha256": sha256_of(out),
            "format": {**fields.get("format", {}), "producer": producer},
            "graph": {
                "kind": kind,
                "description": description,
                "source": {
                    "file": os.path.relpath(source, out.parent),
                    "sha256": sha256_of(source),
                },
                **(graph_extra or {}),
            },
            "parity": {"reference": source.name, **parity},
            "evaluation": None,
        }
    )
    write_card(card_path(out), card)
    return card
