"""Keras -> ONNX with tf2onnx, onnxruntime's answer on the result, and the tool versions a
card records: what every exporter here (frame models, any Keras file, the step graph,
the int8 graph) shares, so none of them imports another for it.

TensorFlow, tf2onnx and onnxruntime are imported inside the functions that need them,
so training (which may run on another Keras backend) never loads them.
"""

from __future__ import annotations

import platform
from pathlib import Path

import keras
import numpy as np
from numpy.typing import NDArray

from model_export.frames.model import INPUT_NAME, OUTPUT_NAME

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_SEQUENCES = 8
MODEL_VERSION = "1.0.0"
PLAIN_DESCRIPTION = "plain: the tf2onnx export of the Keras model as is"


def to_onnx_bytes(
    model: keras.Model,
    opset: int = OPSET,
    *,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """The model as a serialised ONNX graph with a dynamic batch axis.

    Input and output are renamed (``frames`` and ``next_frame`` unless told
    otherwise) so that clients never see tf2onnx's generated names.
    """
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name=input_name),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    graph = proto.graph
    old_out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = output_name
    graph.output[0].name = output_name
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return bytes(proto.SerializeToString())


def onnx_predict(onnx_model: bytes | Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    import onnxruntime as ort

    source = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    out: NDArray[np.float32] = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return out


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
