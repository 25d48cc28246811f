"""The BentoML service of ``make bench-peers``: the committed models as two batchable
APIs with BentoML's own JSON (``{"frames": nested lists}`` in, nested lists out), with
the session options every arm shares. Runs in BentoML's own venv
(``.venv-peers/bentoml``), so it imports nothing from this project.

    PEER_MODELS=/abs/cnn_lstm.onnx:/abs/convlstm.onnx bentoml serve bentoml_service:Peers
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from onnx_session import session


def _paths() -> dict[str, str]:
    paths = os.environ["PEER_MODELS"].split(":")
    return {os.path.basename(p).removesuffix(".onnx"): p for p in paths}


@bentoml.service(workers=1)
class Peers:
    def __init__(self) -> None:
        self.sessions = {name: session(path) for name, path in _paths().items()}

    def _run(self, name: str, frames: np.ndarray) -> np.ndarray:
        s = self.sessions[name]
        (out,) = s.run(None, {s.get_inputs()[0].name: frames.astype(np.float32)})
        return np.asarray(out)

    @bentoml.api(batchable=True, max_batch_size=8)
    def cnn_lstm(self, frames: np.ndarray) -> np.ndarray:
        return self._run("cnn_lstm", frames)

    @bentoml.api(batchable=True, max_batch_size=8)
    def convlstm(self, frames: np.ndarray) -> np.ndarray:
        return self._run("convlstm", frames)
