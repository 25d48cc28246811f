"""Prometheus metrics of streams, in the app's own registry beside the service's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.metrics import Metrics


class StreamMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.open = Gauge(
            "convlstm_streams_open", "Streams open now, by model.", ["model"], registry=r
        )
        self.state_bytes = Gauge(
            "convlstm_stream_state_bytes",
            "Bytes of ConvLSTM state held for open streams (float32 h and c of every layer).",
            registry=r,
        )
        self.steps = Counter(
            "convlstm_stream_steps",
            "Step-graph steps taken for requests (one per frame given or predicted), by model.",
            ["model"],
            registry=r,
        )
        self.opened = Counter(
            "convlstm_streams_opened", "Streams opened, by model.", ["model"], registry=r
        )
        self.expired = Counter(
            "convlstm_streams_expired",
            "Streams dropped after CONVLSTM_STREAM_IDLE_S without a request, by model.",
            ["model"],
            registry=r,
        )
        self.refused = Counter(
            "convlstm_streams_refused",
            "Streams not opened because CONVLSTM_MAX_STREAMS were open.",
            registry=r,
        )
        # Squared errors of pixels in [0, 1]: the committed model's next-frame MSE is about
        # 0.007 on the test split, copy-last's about 0.023.
        mse_buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
        self.prediction_mse = Histogram(
            "convlstm_stream_prediction_mse",
            "Live accuracy: MSE of a stream's predicted next frame against the frame that "
            "then arrived, by model and version.",
            ["model", "version"],
            buckets=mse_buckets,
            registry=r,
        )
        self.copy_last_mse = Histogram(
            "convlstm_stream_copy_last_mse",
            "The same frames' MSE had the stream copied its last frame (the baseline); "
            "rate(prediction_mse_sum) / rate(copy_last_mse_sum) above 1: the model no "
            "longer beats copying.",
            ["model", "version"],
            buckets=mse_buckets,
            registry=r,
        )
        self.batch_size = Histogram(
            "convlstm_stream_batch_size",
            "Streams per step-graph run, by model.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
