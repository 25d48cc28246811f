"""A small typed client for the next-frame service (and its series models).

Needs only httpx, NumPy and Pillow (no onnxruntime, no FastAPI), so it can run on a
machine that only calls the service::

    from convlstm_client import NextFrameClient

    with NextFrameClient("http://127.0.0.1:8000") as client:
        prediction = client.predict(frames, horizon=2)   # frames: (15, 40, 40, 3) uint8
        prediction.frames                                # (2, 40, 40, 3) float32 in [0, 1]
        forecast = client.forecast("co2_lstm", co2_values, horizon=8, frequency="week")
        forecast.mean                                    # (8,) in the series' own units
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image

# What `predict` accepts: one array, PIL images, or image files (PNG or JPEG).
FramesLike = NDArray[Any] | Sequence[Image.Image] | Sequence[str | os.PathLike[str]]


class ClientError(Exception):
    """The service refused the request, or could not be reached.

    ``status`` is the HTTP status (``None`` when no answer came back); ``error_type``
    and ``message`` are the server's own (``invalid_input``, ``unauthorized``, ...),
    and ``location`` the field it names, when it names one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error_type: str,
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.location = location

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{self.message} ({status}, {self.error_type})"


@dataclass(frozen=True)
class Prediction:
    """The predicted frames, float32 in [0, 1], shape (horizon, H, W, C), unrounded."""

    frames: NDArray[np.float32]
    model: str
    model_version: str
    provider: str
    inference_ms: float


@dataclass(frozen=True)
class ReadyInfo:
    """What ``GET /readyz`` says once the model is loaded and warmed up."""

    model: str
    model_version: str
    provider: str
    input_shape: list[int | str]
    models: list[str]
    """Every served model; ``model`` is the default (only ``model`` on older servers)."""
    input_shapes: dict[str, list[int | str]] = field(default_factory=dict)
    """Every served model's input shape, by name (empty from older servers)."""

    @property
    def frame_shape(self) -> tuple[int, int, int, int] | None:
        """(T, H, W, C) one sequence must have, when the model fixes all four."""
        return _frame_shape(self.input_shape)

    def frame_shape_of(self, model: str | None) -> tuple[int, int, int, int] | None:
        """As ``frame_shape``, for the served model ``model`` (the default for None);
        None where the server does not say."""
        if model is None or model == self.model:
            return self.frame_shape
        shape = self.input_shapes.get(model)
        return None if shape is None else _frame_shape(shape)


def _frame_shape(shape: list[int | str]) -> tuple[int, int, int, int] | None:
    dims = shape[1:]
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims):
        return None
    t, h, w, c = (int(d) for d in dims)
    return (t, h, w, c)


@dataclass(frozen=True)
class Forecast:
    """A series model's forecast: ``mean`` (horizon,) for one target, (horizon, F')
    for several, in the client's own units; ``quantiles`` by level (``"0.1"``) where the
    model gives them; ``note`` says why not."""

    mean: NDArray[np.float64]
    model: str
    start_timestamp: str | None
    quantiles: dict[str, NDArray[np.float64]]
    note: str | None


class NextFrameClient:
    """Calls ``/readyz`` and ``/predict``.

    A 503 (queue full, model loading) is retried up to ``retries`` times, waiting what
    its ``Retry-After`` says but never more than ``max_retry_wait`` seconds at a time;
    every other error raises :class:`ClientError` at once. ``transport`` is httpx's, for
    tests (``httpx.MockTransport``) or a proxy set-up.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def __enter__(self) -> NextFrameClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def ready(self) -> ReadyInfo:
        """The served model; raises :class:`ClientError` when the service is not ready."""
        body = self._request("GET", "/readyz", retry=False)
        return ReadyInfo(
            model=str(body["model"]),
            model_version=str(body["model_version"]),
            provider=str(body["provider"]),
            input_shape=list(body["input_shape"]),
            models=[str(m) for m in body.get("models", [body["model"]])],
            input_shapes={str(m["name"]): list(m["input_shape"]) for m in body.get("served", [])},
        )

    def predict(self, frames: FramesLike, horizon: int = 1, model: str | None = None) -> Prediction:
        """Predict ``horizon`` frames after ``frames`` (oldest first).

        An array (T, H, W, 3) is sent raw: uint8 as 0-255, floating point as float32
        in [0, 1]. PIL images and image files are sent as PNG/JPEG, so the server checks
        each one and names it (``frames[3]``) when one is wrong. ``model`` picks one of
        the served models; without it the server's default answers.
        """
        body: dict[str, Any] = {**encode_frames(frames), "horizon": horizon}
        body["return_tensor"] = True
        if model is not None:
            body["model"] = model
        return _prediction(self._request("POST", "/predict", json=body, retry=True))

    def stream(self, model: str | None = None) -> FrameStream:
        """Open a stream: the model's state kept on the server, fed a frame at a time.

        Use it as a context manager so that the stream is closed (its state freed) at
        the end::

            with client.stream() as stream:
                for frame in camera:                 # (H, W, 3) uint8 each
                    next_frame = stream.send(frame[None]).frames[0]
        """
        body = {"model": model} if model is not None else {}
        opened = self._request("POST", "/v1/streams", json=body, retry=True)
        return FrameStream(self, str(opened["stream_id"]), str(opened["model"]))

    def request(
        self, method: str, path: str, *, retry: bool, json: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One call to the service, with this client's retries and errors; ``{}`` for an
        answer with no body."""
        answer: dict[str, Any] = self._request(method, path, retry=retry, json=json)
        return answer

    def series_models(self) -> list[str]:
        """The served series models (KServe's ``GET /v1/timeseries/models``)."""
        names = self._request("GET", "/v1/timeseries/models", retry=False)
        return [str(n) for n in names]

    def forecast(
        self,
        model: str,
        series: Sequence[float] | Sequence[Sequence[float]] | NDArray[Any],
        *,
        horizon: int,
        frequency: str,
        start_timestamp: str | None = None,
        quantiles: Sequence[float] | None = None,
        name: str = "series",
    ) -> Forecast:
        """Forecast ``horizon`` steps after ``series`` (oldest first; numbers, or rows
        of the model's features) over KServe's ``POST /v1/timeseries/forecast``."""
        values = np.asarray(series, dtype=np.float64).tolist()
        multivariate = bool(values) and isinstance(values[0], list)
        one: dict[str, Any] = {
            "type": "multivariate_time_series" if multivariate else "univariate_time_series",
            "name": name,
            "series": values,
            "frequency": frequency,
        }
        if start_timestamp is not None:
            one["start_timestamp"] = start_timestamp
        options: dict[str, Any] = {"horizon": horizon}
        if quantiles:
            options["quantiles"] = list(quantiles)
        body = {"model": model, "inputs": [one], "options": options}
        answer = self._request("POST", "/v1/timeseries/forecast", json=body, retry=True)
        content = answer["outputs"][0]["content"][0]
        return Forecast(
            mean=np.asarray(content["mean_forecast"], np.float64),
            model=str(answer["model"]),
            start_timestamp=content.get("start_timestamp"),
            quantiles={
                q: np.asarray(v, np.float64) for q, v in (content.get("quantiles") or {}).items()
            },
            note=content.get("note"),
        )

    def _request(
        self, method: str, path: str, *, retry: bool, json: dict[str, Any] | None = None
    ) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TimeoutException as err:
                raise ClientError(
                    f"no answer from {self._http.base_url} within the timeout ({err})",
                    status=None,
                    error_type="timeout",
                ) from err
            except httpx.TransportError as err:
                raise ClientError(
                    f"cannot reach {self._http.base_url}: {err}",
                    status=None,
                    error_type="connection_error",
                ) from err
            if response.status_code == 503 and retry and attempt < self.retries:
                attempt += 1
                time.sleep(self._retry_wait(response, attempt))
                continue
            if response.status_code == 204:
                return {}
            if response.is_success:
                return response.json()
            raise _error_from(response)

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float:
        wait = _parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = 0.5 * 2 ** (attempt - 1)
        return min(max(wait, 0.0), self.max_retry_wait)


class FrameStream:
    """A stream opened by :meth:`NextFrameClient.stream`."""

    def __init__(self, client: NextFrameClient, stream_id: str, model: str) -> None:
        self.client = client
        self.id = stream_id
        self.model = model

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, frames: FramesLike, horizon: int = 1) -> Prediction:
        """Feed the stream its next frame(s), oldest first (k >= 1, as ``predict`` takes
        them); the ``horizon`` frames that follow everything it has seen. A 503 (the
        step queue full) is retried: the step was not run."""
        body: dict[str, Any] = {**encode_frames(frames), "horizon": horizon}
        body["return_tensor"] = True
        return _prediction(
            self.client.request("POST", f"/v1/streams/{self.id}", json=body, retry=True)
        )

    def info(self) -> dict[str, Any]:
        """What the server says of the stream: frames seen, last use, model."""
        return self.client.request("GET", f"/v1/streams/{self.id}", retry=False)

    def close(self) -> None:
        """Free the stream's state on the server; one already gone (expired) is fine."""
        try:
            self.client.request("DELETE", f"/v1/streams/{self.id}", retry=False)
        except ClientError as err:
            if err.status != 404:
                raise


def _prediction(answer: dict[str, Any]) -> Prediction:
    tensor = answer["tensor"]
    data = np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4")
    return Prediction(
        frames=data.reshape(tensor["shape"]).astype(np.float32),
        model=str(answer["model"]),
        model_version=str(answer["model_version"]),
        provider=str(answer["provider"]),
        inference_ms=float(answer["inference_ms"]),
    )


def encode_frames(frames: FramesLike) -> dict[str, Any]:
    """The input part of a ``/predict`` body: ``{"tensor": ...}`` or ``{"frames": [...]}``."""
    if isinstance(frames, np.ndarray):
        if frames.dtype == np.uint8:
            array: NDArray[Any] = np.ascontiguousarray(frames, dtype="<u1")
            dtype = "uint8"
        elif np.issubdtype(frames.dtype, np.floating):
            array = np.ascontiguousarray(frames, dtype="<f4")
            dtype = "float32"
        else:
            raise TypeError(f"frames: expected a uint8 or float array, got {frames.dtype}")
        data = base64.b64encode(array.tobytes()).decode("ascii")
        return {"tensor": {"data": data, "dtype": dtype, "shape": list(array.shape)}}
    if isinstance(frames, str | os.PathLike):
        raise TypeError("frames: expected one path per frame, got a single path")
    encoded = []
    for frame in frames:
        if isinstance(frame, Image.Image):
            buffer = io.BytesIO()
            frame.convert("RGB").save(buffer, format="PNG")
            raw = buffer.getvalue()
        else:
            raw = Path(frame).read_bytes()
        encoded.append(base64.b64encode(raw).decode("ascii"))
    return {"frames": encoded}


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _error_from(response: httpx.Response) -> ClientError:
    """The server's ``{"error": {"type", "message", "location"}}`` (``param`` for
    location on KServe's time-series API), or what came instead."""
    try:
        error = response.json()["error"]
        if isinstance(error, dict):
            return ClientError(
                str(error["message"]),
                status=response.status_code,
                error_type=str(error["type"]),
                location=error.get("location") or error.get("param") or None,
            )
        # A plain-string error, as some proxies and other protocols send.
        return ClientError(str(error), status=response.status_code, error_type="http_error")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ClientError(text, status=response.status_code, error_type="http_error")
