"""KServe's open time-series API, so that its clients work unchanged:
``POST /v1/timeseries/forecast`` and ``GET /v1/timeseries/models`` (the names of the
served series models). The request and answer follow KServe's
``kserve.protocol.rest.timeseries.types``; errors are KServe's
``{"error": {"code", "message", "param", "type"}}`` (``error_responses`` renders them).

A multivariate series is a list of rows, one row of F values per time step. Every input
of a request is one job of the model's runner, so they are batched together. Quantiles
come from the card's validation residuals where it has them; otherwise the answer has
none, and each forecast's ``note`` says so.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from convlstm_card import frequency_word
from service.api.deps import RegistryDep, require_api_key, require_json
from service.api.error_responses import TIMESERIES_PREFIX
from service.api.lifecycle import until_client_leaves
from service.errors import InvalidInput
from service.registry import ServedModel
from service.series_accuracy import Forecast, SeriesAccuracy
from service.tasks.series import SeriesTask, parse_series
from service.tasks.series_time import after

router = APIRouter(prefix=TIMESERIES_PREFIX, tags=["time series (KServe)"])
SeriesType = Literal["univariate_time_series", "multivariate_time_series"]


class TimeSeriesInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: SeriesType
    name: str
    series: list[Any] = Field(
        description="Numbers (univariate), or rows of the model's F numbers, one row per "
        "time step (multivariate); checked value by value, so an error names the index"
    )
    frequency: str = Field(description="KServe's frequency: second/S ... year/Y")
    start_timestamp: str | None = Field(
        None,
        description="ISO 8601 time of series[0]; without it, series[0] is taken at the Unix "
        "epoch (1970-01-01T00:00:00), so the answer's start_timestamp counts steps from it",
    )


class ForecastOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    horizon: int = Field(ge=1)
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] | None = None


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    inputs: list[TimeSeriesInput] = Field(min_length=1)
    options: ForecastOptions
    metadata: dict[str, Any] | None = None


class TimeSeriesForecast(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: SeriesType
    name: str
    mean_forecast: list[float] | list[list[float]]
    frequency: str
    start_timestamp: str = Field(
        description="ISO 8601 time of the first forecast step: the input's start plus its "
        "length in steps (from the Unix epoch when the input gave no start)"
    )
    quantiles: dict[str, list[float] | list[list[float]]] | None = None


class ForecastOutput(BaseModel):
    type: str = "time_series_forecast"
    id: str
    status: Literal["completed"] = "completed"
    content: list[TimeSeriesForecast]


class ForecastResponse(BaseModel):
    id: str
    created_at: int
    status: Literal["completed"] = "completed"
    model: str
    outputs: list[ForecastOutput]


class ErrorDetail(BaseModel):
    code: str = Field(description="the HTTP status, as a string")
    message: str
    param: str = Field(description="where in the request, or empty")
    type: str


class ErrorResponse(BaseModel):
    """KServe's time-series error body."""

    error: ErrorDetail


_WHY = {
    400: "the body is not JSON",
    401: "an API key is configured and the request did not carry it",
    404: "no served model has that name",
    413: "the body is larger than the configured limit",
    415: "the body is not application/json",
    422: "the request does not fit the model: the error names the input and index",
    503: "the queue is full, or the server is loading or shutting down",
    504: "the forecast was not answered within the configured deadline",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why} for code, why in _WHY.items()
}


@router.get(
    "/models",
    summary="The served series models' names",
    responses={503: _ERRORS[503]},
)
async def models(registry: RegistryDep) -> list[str]:
    return [name for name, m in registry.models.items() if isinstance(m.task, SeriesTask)]


@router.post(
    "/forecast",
    summary="Forecast each input series over options.horizon steps",
    dependencies=[Depends(require_api_key), Depends(require_json)],
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def forecast(
    body: ForecastRequest, registry: RegistryDep, request: Request
) -> ForecastResponse:
    model = registry.lookup(body.model)
    task = series_task(model)
    spec = task.spec
    horizon = body.options.horizon
    runs = task.runs(horizon)
    limit = registry.settings.max_queue
    if len(body.inputs) > limit:
        # Each series is one job of the queue: more than it holds could never be answered.
        raise InvalidInput(
            f"inputs: {len(body.inputs)} series; at most {limit} per request (CONVLSTM_MAX_QUEUE)",
            location="inputs",
        )
    windows, observed = [], []
    for i, series in enumerate(body.inputs):
        where = f"inputs[{i}]"
        check_frequency(series.frequency, spec.frequency, f"{where}.frequency")
        kind = "univariate" if series.type == "univariate_time_series" else "multivariate"
        rows = parse_series(series.series, kind, spec.features, f"{where}.series")
        windows.append(task.fold(rows, f"{where}.series"))
        observed.append(rows[:, spec.targets])
        forecast_start(series, f"{where}.start_timestamp")  # checked before the model runs
    outputs, _ = await until_client_leaves(request, model.runner.run(np.stack(windows), runs))
    accuracy: SeriesAccuracy = request.app.state.series_accuracy
    answers = []
    for series, output, rows in zip(body.inputs, outputs, observed, strict=True):
        mean = task.forecast(output, horizon)
        remember(accuracy, model, task, series, rows, mean)
        quantiles, note = (None, None)
        if body.options.quantiles:
            quantiles, note = task.quantiles(mean, body.options.quantiles)
        forecast = TimeSeriesForecast(
            type="univariate_time_series" if len(spec.targets) == 1 else "multivariate_time_series",
            name=series.name,
            mean_forecast=_listed(mean),
            frequency=series.frequency,
            start_timestamp=forecast_start(series, ""),
            quantiles={q: _listed(v) for q, v in quantiles.items()} if quantiles else None,
        )
        if note is not None:
            forecast = forecast.model_copy(update={"note": note})
        answers.append(ForecastOutput(id=str(uuid.uuid4()), content=[forecast]))
    return ForecastResponse(
        id=str(uuid.uuid4()), created_at=int(time.time()), model=model.info.name, outputs=answers
    )


def remember(
    accuracy: SeriesAccuracy,
    model: ServedModel,
    task: SeriesTask,
    series: TimeSeriesInput,
    observed: np.ndarray[Any, Any],
    mean: np.ndarray[Any, Any],
) -> None:
    """Score the series' previous forecast on the observations it now brings, and keep
    this one for its next request (``service.series_accuracy``)."""
    word = frequency_word(series.frequency) or ""
    start = datetime.fromisoformat(series.start_timestamp or SERIES_START_UNSTATED)
    scaled = task.scaled_targets(observed)
    forecast = Forecast(
        start=datetime.fromisoformat(forecast_start(series, "")),
        word=word,
        values=task.scaled_targets(mean),
        last=scaled[-1],
    )
    accuracy.observe(model.info.name, model.info.version, series.name, start, scaled, forecast)


def series_task(model: ServedModel) -> SeriesTask:
    task = model.task
    if not isinstance(task, SeriesTask):
        raise InvalidInput(
            f"model: {model.info.name!r} is a {task.task} model, not a series model; "
            f"GET {TIMESERIES_PREFIX}/models lists those this API serves",
            location="model",
        )
    return task


def check_frequency(given: str, model: str | None, where: str) -> None:
    word = frequency_word(given)
    if word is None:
        raise InvalidInput(
            f"{where}: {given!r} is not one of KServe's frequencies (second/S, minute/T, "
            "hour/H, day/D, week/W, month/M, quarter/Q, year/Y)",
            location=where,
        )
    if model is not None and word != model:
        raise InvalidInput(
            f"{where}: the model forecasts one step per {model}; the series has one per {word}",
            location=where,
        )


SERIES_START_UNSTATED = "1970-01-01T00:00:00"
"""Where a series with no ``start_timestamp`` is taken to start: KServe's
``ForecastResponse`` requires every forecast's start, and a fixed, plainly artificial one
says how many steps on the forecast lies without claiming a calendar date."""


def forecast_start(series: TimeSeriesInput, where: str) -> str:
    """The time of the step after the series' last: its start (``SERIES_START_UNSTATED``
    when it gave none) plus len(series) steps."""
    given = series.start_timestamp or SERIES_START_UNSTATED
    try:
        start = datetime.fromisoformat(given)
    except ValueError:
        raise InvalidInput(f"{where}: {given!r} is not an ISO 8601 time", location=where) from None
    word = frequency_word(series.frequency)
    steps = len(series.series)
    try:
        return after(start, word or "", steps).isoformat()
    except OverflowError:
        raise InvalidInput(
            f"{where}: {steps} {word}s after {start} is beyond the calendar", location=where
        ) from None


def _listed(values: np.ndarray[Any, Any]) -> list[float] | list[list[float]]:
    """(n, 1) -> n numbers; (n, F') -> n rows."""
    if values.ndim == 2 and values.shape[1] == 1:
        return [float(v) for v in values[:, 0]]
    return [[float(v) for v in row] for row in values]
