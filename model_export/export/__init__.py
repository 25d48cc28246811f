"""Keras -> ONNX: the shared conversion and parity run (keras_to_onnx), the frame models
with their fast graph and step graph (frame_models, fast, step_graph), any Keras file
(any_model), and the opt-in int8 graph (quantize). Each writes a model card beside its
graph."""
