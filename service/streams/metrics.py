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
        self.batch_size = Histogram(
            "convlstm_stream_batch_size",
            "Streams per step-graph run, by model.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
