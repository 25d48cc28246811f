"""Training stage: data, the Keras models, training, evaluation and ONNX export."""

import os

# The fast graph's convolutions are channels-first. TensorFlow's own CPU kernels take
# NHWC only; its oneDNN kernels take both, and TensorFlow turns them on by default only
# on some Intel CPUs (not on AMD EPYC). Set before anything here imports TensorFlow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
