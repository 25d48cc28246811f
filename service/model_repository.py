"""What the model directory holds: which models, which versions of each, and where their
files lie. Reading it is cheap (a stat of each file, and the small card of a flat file),
so the registry can scan it at start-up, on every poll and on every control call.

Two layouts live side by side in one directory:

- flat: ``NAME.onnx`` with its card ``NAME.json``; one version, the card's ``version``;
- Triton's: ``NAME/VERSION/model.onnx`` (the card ``model.json`` beside it), ``VERSION`` a
  positive integer, so that several versions of one model coexist.

A name that has both keeps the directory and ignores the flat file, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from convlstm_card import card_path

log = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
"""The graph's file name inside a version directory, as in Triton's repository."""

Stamp = tuple[int, int, int, int]
"""The graph's and the card's (mtime in ns, size): a file replaced or rewritten has a new
stamp, so a rescan reloads exactly the versions whose files changed."""


@dataclass(frozen=True)
class ModelSource:
    """One version of one model in the directory."""

    name: str
    version: str
    path: Path
    stamp: Stamp


def _stamp(path: Path) -> Stamp:
    def one(p: Path) -> tuple[int, int]:
        try:
            st = p.stat()
        except OSError:
            return (0, -1)
        return (st.st_mtime_ns, st.st_size)

    return (*one(path), *one(card_path(path)))


def version_order(version: str) -> tuple[int, str]:
    """Sort key: numbered versions by number, any other name (a flat file's card
    version) before them."""
    return (int(version), "") if version.isdigit() else (-1, version)


def flat_version(path: Path) -> str:
    """A flat file's version: its card's ``version``, or ``unknown`` without a readable
    one (loading then reports what is wrong with the card)."""
    try:
        raw = json.loads(card_path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unknown"
    version = raw.get("version", "unknown") if isinstance(raw, dict) else "unknown"
    return str(version)


def flat_source(path: Path) -> ModelSource:
    return ModelSource(path.stem, flat_version(path), path, _stamp(path))


def versioned_sources(model_dir: Path) -> dict[str, ModelSource]:
    """The numbered versions under ``model_dir`` that hold a ``model.onnx``."""
    found: dict[str, ModelSource] = {}
    if not model_dir.is_dir():
        return found
    for child in model_dir.iterdir():
        graph = child / GRAPH_FILE
        if child.name.isdigit() and int(child.name) > 0 and graph.is_file():
            found[str(int(child.name))] = ModelSource(
                model_dir.name, str(int(child.name)), graph, _stamp(graph)
            )
    return found


def scan(default: Path, *, whole_directory: bool) -> dict[str, dict[str, ModelSource]]:
    """Every model the settings serve, by name, each with its versions.

    ``default`` is ``CONVLSTM_MODEL_PATH``: a flat ``.onnx`` file, or a model directory
    of numbered versions. It is always listed (a missing file is reported when it is
    loaded). With ``whole_directory`` every other carded flat file and every model
    directory beside it is listed too.
    """
    found: dict[str, dict[str, ModelSource]] = {}
    if default.is_dir():
        found[default.name] = versioned_sources(default)
    else:
        found[default.stem] = {(s := flat_source(default)).version: s}
    root = default.parent
    if not whole_directory or not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if entry.name in found or entry.stem in found:
            continue
        if entry.is_dir():
            versions = versioned_sources(entry)
            if versions:
                found[entry.name] = versions
    for entry in sorted(root.glob("*.onnx")):
        if entry.stem in found:
            if entry != default and (root / entry.stem).is_dir():
                log.warning(
                    "%s ignored: the model directory %s serves %r",
                    entry,
                    root / entry.stem,
                    entry.stem,
                )
            continue
        if card_path(entry).is_file():
            found[entry.stem] = {(s := flat_source(entry)).version: s}
    return found
