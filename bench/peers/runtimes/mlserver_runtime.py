"""The MLServer runtime of ``make bench-peers``: one ONNX model behind MLServer's V2
REST, with the session options every arm of the comparison shares. Runs in MLServer's
own venv (``.venv-peers/mlserver``), so it imports nothing from this project."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from onnx_session import session


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self._session = session(str(self.settings.parameters.uri))
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        frames = NumpyCodec.decode_input(payload.inputs[0])
        (out,) = self._session.run([self._output], {self._input: frames})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self._output, out)]
        )
