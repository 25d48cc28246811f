"""The Python client of the ConvLSTM inference service, and ``convlstm-predict``.

Needs only httpx, NumPy and Pillow: no onnxruntime, FastAPI or the server's package."""

from __future__ import annotations

from convlstm_client.client import (
    ClientError,
    Forecast,
    FrameStream,
    NextFrameClient,
    Prediction,
    ReadyInfo,
)

__all__ = [
    "ClientError",
    "Forecast",
    "FrameStream",
    "NextFrameClient",
    "Prediction",
    "ReadyInfo",
]
