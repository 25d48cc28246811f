"""Prometheus metrics, in a registry of the app's own so that apps in one process
(tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.gpu_metrics import register_gpu_metrics

# Latency buckets from 5 ms to 30 s: one ConvLSTM step on a 2-core CPU is ~0.3 s,
# on a GPU a few ms, and a long horizon multiplies it.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "convlstm_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "convlstm_http_request_duration_seconds",
            "Whole-request latency as seen by the server, by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "convlstm_http_requests_in_flight",
            "Requests being handled now (health and metrics routes excluded).",
            registry=r,
        )
        self.inference_seconds = Histogram(
            "convlstm_inference_duration_seconds",
            "Time in the model alone per request (all horizon steps), by model and provider.",
            ["model", "provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "convlstm_queue_wait_seconds",
            "Time a request waited in its model's queue before its batch ran, by model "
            "(apart from the time in the model: convlstm_inference_duration_seconds).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "convlstm_inference_batch_size",
            "Sequences per model run.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        # Squared errors in the model's scaled units (the card's offset and scale).
        series_buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.series_forecast_mse = Histogram(
            "convlstm_series_forecast_mse",
            "Live accuracy of series forecasts: MSE (scaled units) of a forecast's steps "
            "against the observations a later request for the same series brought, by model "
            "and version.",
            ["model", "version"],
            buckets=series_buckets,
            registry=r,
        )
        self.series_copy_last_mse = Histogram(
            "convlstm_series_copy_last_mse",
            "The same observations' MSE had the forecast repeated the series' last "
            "observation (the baseline); rate(forecast_mse_sum) / rate(copy_last_mse_sum) "
            "above 1: the model no longer beats copying.",
            ["model", "version"],
            buckets=series_buckets,
            registry=r,
        )
        self.payload_log_events = Counter(
            "convlstm_payload_log_events",
            "Payload log events (CONVLSTM_PAYLOAD_LOG_URL) by CloudEvents type and outcome: "
            "sent, dropped (queue full) or failed (the sink refused or could not be reached).",
            ["type", "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "convlstm_dropped_requests",
            "Accepted requests dropped before reaching the model: client_gone or deadline.",
            ["model", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "convlstm_rejected_requests",
            "Requests refused without queueing: overloaded, shutting_down, unauthorized, "
            "too_many_requests.",
            ["reason"],
            registry=r,
        )
        self.connections_cut = Counter(
            "convlstm_connections_cut",
            "Connections the server closed for a limit: header_timeout, body_idle_timeout, "
            "body_timeout, send_timeout, headers_too_large, too_many_connections.",
            ["reason"],
            registry=r,
        )
        self.open_connections = Gauge(
            "convlstm_open_connections",
            "HTTP connections open now (served by python -m service; 0 elsewhere).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "convlstm_queue_depth", "Requests waiting for the model now.", ["model"], registry=r
        )
        self.provider_fallback = Gauge(
            "convlstm_provider_fallback",
            "1 when a GPU provider was requested but the model runs on another provider.",
            ["requested", "provider"],
            registry=r,
        )
        self.predicted_frames = Counter(
            "convlstm_predicted_frames",
            "Frames predicted (a request with horizon h predicts h).",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "convlstm_model_info",
            "The served model: 1 for the loaded model, with its version, sha256 and provider.",
            ["model", "version", "sha256", "provider"],
            registry=r,
        )
        self.model_loads = Counter(
            "convlstm_model_loads",
            "Model versions loaded, failed to load, or unloaded, by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "convlstm_model_load_failures",
            "Model loads that failed, by model (the reason is on /readyz, /v1/models and "
            "the repository index).",
            ["model"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "convlstm_model_load_duration_seconds",
            "Time to load and warm up one model version, by model.",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.ready = Gauge(
            "convlstm_ready", "1 when the model is loaded and warmed up, else 0.", registry=r
        )
        self.gpu = register_gpu_metrics(r)
        """Whether GPU utilisation and memory are exported (NVML answered)."""
