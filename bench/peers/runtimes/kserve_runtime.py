"""The KServe runtime of ``make bench-peers``: the committed models behind KServe's
Python model server (V2 REST), with the session options every arm shares. Runs in
KServe's own venv (``.venv-peers/kserve``), so it imports nothing from this project.

    python kserve_runtime.py PORT MODEL.onnx [MODEL.onnx ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest import server as rest_server
from onnx_session import session

_rest_init = rest_server.RESTServer.__init__


def _loopback_init(self: Any, *args: Any, **kwargs: Any) -> None:
    # KServe hard-codes host="0.0.0.0" in its uvicorn config; a benchmark binds loopback.
    _rest_init(self, *args, **kwargs)
    self.config.host = "127.0.0.1"


rest_server.RESTServer.__init__ = _loopback_init  # type: ignore[method-assign]


class OnnxModel(kserve.Model):
    def __init__(self, path: Path) -> None:
        super().__init__(path.stem)
        self._session = session(str(path))
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self.ready = True

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        frames = payload.inputs[0].as_numpy()
        (out,) = self._session.run([self._output], {self._input: frames})
        output = InferOutput(name=self._output, shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=False)
        return InferResponse(response_id="", model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    port, *paths = sys.argv[1:]
    models = [OnnxModel(Path(p)) for p in paths]
    kserve.ModelServer(http_port=int(port), enable_grpc=False, workers=1).start(models)
