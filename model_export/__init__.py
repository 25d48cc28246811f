"""Training stage: data, the Keras models, training, evaluation and ONNX export."""
