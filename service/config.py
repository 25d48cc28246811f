"""The service's one settings object, read from ``CONVLSTM_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from convlstm_card import card_path
from service import payload_log, tracing

Provider = Literal["auto", "cuda", "tensorrt", "cpu", "simulated"]
ConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]
PadBatches = Literal["auto", "on", "off"]
IoBinding = Literal["auto", "on", "off"]
ModelControl = Literal["none", "explicit", "poll"]
VersionPolicy = Literal["latest", "all"]


MAX_BUCKETS = 16
"""Batch buckets one graph may have: each is a session with its own weights and plans."""


class Settings(BaseSettings):
    """Every field can be set as ``CONVLSTM_<FIELD>``, e.g. ``CONVLSTM_PORT=9000``."""

    model_config = SettingsConfigDict(
        env_prefix="CONVLSTM_", extra="forbid", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address to bind. Use 0.0.0.0 inside a container."""

    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol over gRPC (Triton's
    ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``), served by
    ``python -m service`` beside HTTP on the same host, models and limits; 8001 as
    Triton's. 0 turns gRPC off."""

    grpc_max_message_bytes: int | None = Field(default=None, ge=1024)
    """gRPC messages above this many bytes are refused with RESOURCE_EXHAUSTED before
    being decoded. Unset (the default), the limit follows the models served at start-up,
    as ``max_body_bytes`` does: ``max_batch_size`` sequences of the largest model input
    at 4 bytes a value (FP32 in ``raw_input_contents`` or typed contents), plus 64 KiB,
    and never below 2 MiB. A value set here wins."""

    model_path: Path = Path("models/convlstm.onnx")
    """The ONNX model to serve. Its card is the same path with ``.json``."""

    serve_model_dir: bool = True
    """Also serve every other ONNX model that has a card (``<stem>.json``) in the model's
    directory, each under its file stem; the model above stays the default."""

    exit_on_model_error: bool = False
    """What a model in the directory that cannot be served does to start-up (the default
    model failing always stops it). ``false``: it is skipped with one log line naming the
    file and the reason, and listed under ``failed`` in ``/readyz`` and ``/v1/models``
    while the others serve; ``true``: start-up stops, as Triton's ``--exit-on-error``."""

    model_control: ModelControl = "none"
    """Changing models while serving, with Triton's names: ``none`` serves what start-up
    loaded; ``explicit`` also takes ``POST /v2/repository/models/{name}/load`` and
    ``/unload`` (behind the API key) and rescans the models it serves on SIGHUP; ``poll``
    rescans the whole directory every ``repository_poll_s`` and on SIGHUP, loading what
    appeared or changed and unloading what went away."""

    repository_poll_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """With ``model_control=poll``: seconds between two scans of the model directory."""

    version_policy: VersionPolicy = "latest"
    """Which numbered versions of a model (``NAME/VERSION/model.onnx``) serve: ``latest``
    only the highest (or the pinned one), so loading a new version replaces the old;
    ``all`` every version in the directory. A request naming no version gets the
    highest, or the pinned one."""

    pinned_versions: dict[str, str] = {}
    """The version each model serves by default instead of its highest, e.g.
    ``CONVLSTM_PINNED_VERSIONS='{"convlstm": "2"}'``."""

    strict_readiness: bool = False
    """``/readyz`` and ``/v2/health/ready`` answer 503 while any model in the directory
    failed to load (Triton's ``--strict-readiness``); by default they answer 200 once the
    default model and every model that could be loaded serve."""

    provider: Provider = "auto"
    """Execution provider: ``auto`` and ``cuda`` prefer CUDA and fall back to the CPU;
    ``tensorrt`` prefers TensorRT, then CUDA, then the CPU; ``cpu`` uses the CPU only.
    ``simulated`` runs no model: every run sleeps as a fast accelerator would
    (``simulated_*`` below) and answers fixed outputs of the model's shapes, to measure
    and test the serving path. Its answers are not predictions."""

    simulated_batch_ms: float = Field(default=80.0, ge=0.0, le=60_000.0)
    """With ``provider=simulated``: milliseconds every model run takes, whatever its size."""

    simulated_item_ms: float = Field(default=2.0, ge=0.0, le=60_000.0)
    """With ``provider=simulated``: milliseconds a run takes per item of its batch, on top
    of ``simulated_batch_ms``."""

    simulated_shape_change_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    """With ``provider=simulated``: milliseconds a simulated session pays, under a lock of
    its own, before a run whose input shape differs from its previous run's: what
    onnxruntime's CUDA provider pays to rebuild its convolution plans."""

    simulated_allowed: bool = True
    """Whether ``provider=simulated`` may start. The runtime images set it false, so that
    a production container never answers with simulated outputs unless asked for
    explicitly (``CONVLSTM_SIMULATED_ALLOWED=true``)."""

    cudnn_conv_algo_search: ConvAlgoSearch = "EXHAUSTIVE"
    """cuDNN's search for a convolution algorithm when the CUDA provider builds a Conv
    plan (onnxruntime's ``cudnn_conv_algo_search``; ``EXHAUSTIVE`` is its default). With
    a session per batch bucket a plan is built once per bucket, at warm-up."""

    cuda_tf32: bool = True
    """Let the CUDA provider use TF32 for float32 convolutions (onnxruntime's default):
    faster on Ampere and later, but on an H100 it moved the served graph 2.2e-4 from the
    CPU's answer; ``false`` keeps full float32 (5.7e-7)."""

    require_gpu: bool = False
    """Refuse to serve from the CPU when no GPU provider could be initialised: instead of
    falling back, the server stays up but not ready (``/readyz`` 503 with the reason), so
    that a container or pod is neither used nor restarted in a loop."""

    intra_op_threads: int = Field(default=0, ge=0)
    """onnxruntime threads inside one operator; 0 lets onnxruntime use every core."""

    intra_op_spinning: bool = False
    """Let onnxruntime's operator threads spin while waiting for work. Off by default:
    on a small model spinning roughly doubles the CPU a run costs (3.2 ms instead of
    1.4 ms for cnn_lstm on two cores) for no measurable latency, and burns the cores
    the server's own request handling needs."""

    inference_workers: int = Field(default=1, ge=1, le=64)
    """Model runs allowed at once. On a CPU one run already uses every core, so more
    workers only interleave them; on a GPU two can overlap transfers and compute."""

    max_queue: int = Field(default=32, ge=1, le=100_000)
    """Requests that may wait for the model. When the queue is full, new requests get 503
    with ``Retry-After`` at once instead of waiting without bound."""

    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Dynamic batching: queued requests run together, up to this many sequences per
    model run. 1 turns batching off."""

    pad_batches: PadBatches = "auto"
    """Pad each batch up to the smallest of ``batch_buckets`` that holds it, and run each
    bucket on an onnxruntime session of its own, warmed before ready. ``auto`` does so on
    a GPU provider and the simulated device, where a session rebuilds every convolution
    plan when its input shape changes, and never on the CPU, where padding is only work;
    ``on`` everywhere; ``off`` never. Streams' step graphs follow the same rule."""

    io_binding: IoBinding = "auto"
    """Run each bucket's session through onnxruntime's IO binding: every input copied once
    into a buffer bound on the device, the outputs read from buffers bound there (no
    allocation per run). ``auto``: on the CUDA provider; ``on`` on the CPU too; ``off``
    never. Applies where batches are padded to buckets (fixed shapes)."""

    cuda_graphs: bool = False
    """Capture a CUDA graph per batch bucket and replay it on every run (onnxruntime's
    ``enable_cuda_graph``): the CPU's launch cost per kernel goes, at the price of fixed
    shapes (buckets) and IO binding. A graph that cannot be captured (a Loop, a node on
    the CPU) runs without, with a warning. Off by default until measured on a GPU."""

    batch_buckets: list[int] | None = None
    """The batch sizes of ``pad_batches``, ascending, none above ``max_batch_size``, at
    most 16, e.g. ``[1,4,16]``. Default: the powers of two below ``max_batch_size`` and
    ``max_batch_size``. A batch larger than the largest is split."""

    batch_cohort_wait: float = Field(default=0.25, ge=0.0, le=1.0)
    """How long a worker waits, as a fraction of its last model run's time (and never
    past ``request_timeout_s``), for as many requests as its last batch had before it
    starts the next. Clients answered together come back together, a few milliseconds
    apart; starting on the first arrival splits them into small alternating batches
    (at most half the device's rate). 0 turns it off; ``max_batch_wait_ms`` still
    applies."""

    max_batch_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    """How long a worker waits for more requests to fill a batch; a lone request never
    waits longer than this. 0 batches only what is already queued."""

    request_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A request not answered within this many seconds gets 504; if it is still queued
    then, it never reaches the model."""

    warmup_runs: int = Field(default=1, ge=0, le=100)
    """Dummy runs after loading, before the service reports ready: this many at batch 1
    and this many at ``max_batch_size``."""

    max_horizon: int = Field(default=8, ge=1, le=256)
    """Largest ``horizon`` a request may ask for (each step is one model run)."""

    max_streams: int = Field(default=64, ge=1, le=100_000)
    """Streams (``/v1/streams``, OIP sequences) open at once; each holds its model's
    ConvLSTM state (2.7 MB for the committed model, the card's ``stream`` section says).
    Opening one more answers 503 with ``Retry-After``."""

    stream_idle_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    """A stream without a request for this many seconds is dropped; its id then answers
    404 saying it expired."""

    stream_store: str = "memory"
    """Where stream state lives. ``memory``: in this process only (with
    ``stream_snapshot_dir``, written there at shutdown and read back after a restart).
    ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``): in Redis, shared
    by every replica, each stream expiring ``stream_idle_s`` after its last use (the keys'
    TTL), stepped by one replica at a time under a lease. A server whose Redis does not
    answer is not ready (``/readyz`` says why)."""

    stream_durability: Literal["step", "drain"] = "step"
    """When state reaches the store. ``step``: every step's new state before its answer
    leaves (a replica killed loses at most the frame in flight, whose client got no
    answer). ``drain``: kept in memory, written at shutdown (SIGTERM) and read back by
    whichever server next gets the stream, which then holds it in memory alone; cheaper,
    but a crash loses the streams, and several replicas need affinity (the nginx edge).
    With ``memory`` and no ``stream_snapshot_dir`` there is no store and this is moot."""

    stream_snapshot_dir: Path | None = None
    """With ``stream_store=memory``: a directory where the open streams are written (one
    file each) at shutdown, or at every step with ``stream_durability=step``, so a
    restarted single server carries them on."""

    stream_lease_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """With Redis: how long a replica may hold a stream for one step. A step that
    outlasts it writes nothing and answers 409; a replica that dies holding one blocks the
    stream for at most this long. Other requests for the stream wait up to this long for
    the lease, then get 409."""

    stream_store_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)
    """With Redis: a connection or a command not answered within this many seconds fails,
    and the stream call answers 503 saying the store does not answer."""

    max_streams_per_model: dict[str, int] = Field(default_factory=dict)
    """Streams one model may have open at once on this server, by model name, e.g.
    ``{"convlstm": 32}`` (JSON in the variable); a model not named has only
    ``max_streams``. One more answers 503 with ``Retry-After``, as a full table does."""

    max_stream_duration_s: float | None = Field(default=None, gt=0.0, le=31_536_000.0)
    """A stream this many seconds old is ended, however busy (TorchServe's
    ``sequenceTimeoutMSec``); its next step answers 410. Unset: no limit."""

    stream_retained_versions: int = Field(default=2, ge=0, le=64)
    """Replaced model versions kept loaded (their step graphs) for the streams this server
    holds of them, in all: a load or swap sends new streams to the new version while the
    old one's streams carry on on it until they close or expire. One more replaced version
    with open streams releases the one kept longest, and its streams answer 410. 0: a swap
    ends the open streams of the version it replaces."""

    max_body_bytes: int | None = Field(default=None, ge=1024)
    """Request bodies above this many bytes are refused with 413 before being read whole.
    Unset (the default), the limit follows the served models: the largest valid request,
    ``max_batch_size`` sequences of the largest model input sent as Open Inference
    Protocol JSON (32 bytes a value, the longest float a JSON encoder writes with its
    separator and brackets), and never below 2 MiB; 18.5 MB for the committed model at
    batch 8. ``/readyz`` shows the limit in force. A value set here wins."""

    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """A request whose headers are not complete this many seconds after its first byte
    (after the connection opened, for its first request) is cut with 408 and its
    connection closed. nginx's ``client_header_timeout`` is 60 s; with no proxy in front,
    a shorter one frees the sockets of clients that stall on purpose sooner."""

    body_idle_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """A request body with no bytes arriving for this many seconds is cut with 408
    (nginx's ``client_body_timeout``, between two reads)."""

    body_timeout_s: float = Field(default=120.0, gt=0.0, le=86_400.0)
    """A request body not complete this many seconds after its headers is cut with 408,
    however steadily it trickles in: 120 s admits the largest default body (18.5 MB for
    the committed model) at 160 kB/s, and 1 MB at 9 kB/s."""

    keep_alive_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """An idle keep-alive connection (a response sent, no byte of the next request) is
    closed after this many seconds (uvicorn's ``timeout_keep_alive``)."""

    send_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A client that reads nothing of its answer for this many seconds while the server's
    send buffer is full has its connection closed (nginx's ``send_timeout``)."""

    max_connections: int = Field(default=512, ge=1, le=1_000_000)
    """Connections open at once; one more is answered 503 and closed at once, so idle
    sockets cannot exhaust the process's file descriptors (keep it below
    ``ulimit -n``, 1024 on many systems, less the model files and logs)."""

    max_header_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    """Request line and headers of one request; more is answered 431 and closed (nginx
    allows 4 x 8 kB; httptools, uvicorn's C parser, would take any length)."""

    max_in_flight: int = Field(default=128, ge=1, le=100_000)
    """Requests being handled at once, their bodies being read included (health,
    readiness and metrics routes excluded); one more gets 503 with ``Retry-After``. With
    the body limit it bounds the memory bodies can hold: 128 x 18.5 MB at most."""

    api_key: SecretStr | None = None
    """When set, ``/predict`` and ``/v1/model`` need ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>``. Health, readiness and metrics stay open for monitoring."""

    shutdown_grace_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    """On SIGTERM: readiness turns 503 and new predictions are refused at once; requests
    already accepted get this long to finish before the process exits."""

    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per log line (with the request id)."""

    access_log: bool = True
    """Log one line per request: method, path, status, duration, request id."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the service and of uvicorn."""

    series_accuracy_series: int = Field(default=10_000, ge=0, le=1_000_000)
    """Series (by model version and series name) whose latest forecast is remembered, to
    be scored when the series comes back with the observations it forecast
    (``convlstm_series_forecast_mse``); the least recently forecast is forgotten first.
    0 turns live accuracy of series off."""

    payload_log_url: str | None = None
    """Where to send each inference request and its answer as CloudEvents (HTTP, binary
    content mode, KServe's event types and ``ce-*`` attributes), for example a KServe
    message dumper or a Knative broker. Unset: nothing is sent. Sent from a bounded queue
    by a thread of its own: a slow or unreachable sink never slows or fails a request; what
    it loses is counted in ``convlstm_payload_log_events_total``. Headers (and so API
    keys) are never sent."""

    payload_log_mode: Literal["metadata", "request", "response", "all"] = "all"
    """What the payload log sends: ``request`` or ``response`` events, ``all`` (both), or
    ``metadata`` (both events, without their bodies)."""

    payload_log_queue: int = Field(default=100, ge=1, le=100_000)
    """Events waiting for the payload log's sink; one more is dropped and counted. Each
    holds a body, up to the body limit: this bounds the memory they take."""

    payload_log_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    """Time the payload log gives its sink to answer one event."""

    tracing: bool | None = None
    """OpenTelemetry traces of HTTP and gRPC requests, exported over OTLP/HTTP. Unset:
    on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
    set. Everything else comes from the standard ``OTEL_*`` variables (endpoint, headers,
    ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``); a protocol other than
    ``http/protobuf`` is refused at start-up. ``OTEL_SDK_DISABLED=true`` turns it off."""

    @model_validator(mode="after")
    def _gpu_requirement_needs_gpu_provider(self) -> Settings:
        if self.require_gpu and self.provider in ("cpu", "simulated"):
            raise ValueError(f"require_gpu=true contradicts provider={self.provider}")
        if self.provider == "simulated" and not self.simulated_allowed:
            raise ValueError(
                "provider=simulated answers with simulated outputs, not predictions, and "
                "this installation refuses it (CONVLSTM_SIMULATED_ALLOWED=false, as the "
                "runtime images set); set CONVLSTM_SIMULATED_ALLOWED=true to ask for it"
            )
        return self

    @field_validator("payload_log_url")
    @classmethod
    def _payload_log_url_is_http(cls, url: str | None) -> str | None:
        return None if url is None else payload_log.check_url(url)

    @model_validator(mode="after")
    def _tracing_exporter_is_shipped(self) -> Settings:
        if tracing.wanted(self.tracing):
            tracing.check_environment()
        return self

    @model_validator(mode="after")
    def _stream_limits_are_positive(self) -> Settings:
        for name, limit in self.max_streams_per_model.items():
            if limit < 1:
                raise ValueError(f"max_streams_per_model[{name!r}]={limit}: must be at least 1")
        return self

    @model_validator(mode="after")
    def _stream_store_is_known(self) -> Settings:
        store = self.stream_store
        if store == "memory":
            return self
        if not store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"stream_store={store!r}: give 'memory' or a Redis URL "
                "(redis://host:port/db, rediss://..., unix:///path/to/socket)"
            )
        if self.stream_snapshot_dir is not None:
            raise ValueError("stream_snapshot_dir applies to stream_store=memory only")
        url = urlsplit(store)
        try:
            port = url.port
        except ValueError as err:
            raise ValueError(f"stream_store: {err}") from None
        db = url.path.strip("/")
        if url.scheme == "unix" and not url.path:
            raise ValueError(
                "stream_store: unix:// takes the socket's path, unix:///run/redis.sock"
            )
        if url.scheme != "unix" and (not url.hostname or (db and not db.isdigit())):
            raise ValueError(
                f"stream_store: redis://host:port/db with a host and a database number, "
                f"got host {url.hostname!r}, port {port}, database {db!r}"
            )
        return self

    @model_validator(mode="after")
    def _buckets_fit_the_batch(self) -> Settings:
        sizes = self.batch_buckets
        if sizes is None:
            return self
        where = f"batch_buckets={sizes}"
        if not sizes:
            raise ValueError(f"{where}: give at least one batch size, or leave it unset")
        if any(b < 1 for b in sizes) or sizes != sorted(set(sizes)):
            raise ValueError(f"{where}: sizes must be positive and strictly ascending")
        if sizes[-1] > self.max_batch_size:
            raise ValueError(f"{where}: {sizes[-1]} exceeds max_batch_size={self.max_batch_size}")
        if len(sizes) > MAX_BUCKETS:
            raise ValueError(
                f"{where}: {len(sizes)} sizes, at most {MAX_BUCKETS} (each is a session)"
            )
        return self

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes ``pad_batches`` pads to."""
        if self.batch_buckets is not None:
            return tuple(self.batch_buckets)
        sizes = {self.max_batch_size}
        size = 1
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))

    @property
    def card_path(self) -> Path:
        return card_path(self.model_path)

    def model_paths(self) -> list[Path]:
        """The models to serve, the default first."""
        paths = [self.model_path]
        if self.serve_model_dir and self.model_path.parent.is_dir():
            for path in sorted(self.model_path.parent.glob("*.onnx")):
                if path.name != self.model_path.name and card_path(path).is_file():
                    paths.append(path)
        return paths
