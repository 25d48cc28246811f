"""How a bench section leaves its figures: ``NAME.json`` (the record), ``NAME.md`` (its
tables) under the results folder, and the tables on standard output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_record(
    out: Path, name: str, record: dict[str, Any], markdown: Callable[[dict[str, Any]], str]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    (out / f"{name}.md").write_text(text)
    print(text)
