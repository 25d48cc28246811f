"""Where a model's ONNX files live, for the stages that write them and those that read
them (evaluation reads what quantisation wrote, without importing the quantiser)."""

from __future__ import annotations

from pathlib import Path

INT8_DIR = "int8"


def int8_path(onnx_path: Path) -> Path:
    """Where the int8 variant of a graph goes: ``convlstm.onnx`` -> ``int8/convlstm_int8.onnx``.

    A directory of its own because the server serves every carded model in its
    default model's directory: a variant nobody asked for would cost every
    server its memory (about 200 MB) and warm-up. A name of its own so that,
    served, it answers as ``convlstm_int8``.
    """
    return onnx_path.parent / INT8_DIR / f"{onnx_path.stem}_int8.onnx"


def find_onnx(models_dir: Path, name: str) -> Path:
    """The ONNX file of a model name: ``<name>.onnx`` in ``models_dir`` or its int8 directory."""
    path = models_dir / f"{name}.onnx"
    other = models_dir / INT8_DIR / f"{name}.onnx"
    return other if not path.exists() and other.exists() else path
