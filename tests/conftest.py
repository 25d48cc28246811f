import os

# Quiet TensorFlow's start-up banner in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The fast graph's convolutions are channels-first. TensorFlow's own CPU kernels take
# NHWC only; its oneDNN kernels take both, and TensorFlow turns them on by default only
# on some Intel CPUs (not on the AMD EPYC machines this project also runs on).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
