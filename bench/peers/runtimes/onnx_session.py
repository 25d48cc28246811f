"""The one onnxruntime session every arm of ``make bench-peers`` shares (imports
onnxruntime only, so each peer's venv can load it)."""

from __future__ import annotations

import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    """2 intra-op threads that do not spin, every graph optimisation: the same session
    as this project's server (``CONVLSTM_INTRA_OP_THREADS=2``) and the raw baseline."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
