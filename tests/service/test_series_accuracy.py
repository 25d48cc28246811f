"""Live accuracy of series forecasts: a series that comes back to KServe's time-series API
with the observations its last forecast covered scores that forecast, beside copying its
last observation, in the model's scaled units. The committed series models, in process;
the expected MSEs computed here from the answers and the card's scaling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from convlstm_card import card_path, read_card
from service.config import Settings
from service.tasks.series_time import after, steps_between
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app

pytestmark = pytest.mark.anyio
SERIES = COMMITTED_MODEL.parent / "series"
MACRO = SERIES / "macro_lstm.onnx"  # quarterly, 3 features, target 0, W=8, h=4
CO2 = SERIES / "co2_lstm.onnx"  # weekly, univariate, W=52, h=4
rng = np.random.default_rng(5)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def app() -> AsyncIterator[FastAPI]:
    settings = Settings(model_path=MACRO, serve_model_dir=True, warmup_runs=0, grpc_port=0)
    async with running_app(settings) as running:
        yield running


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


def body(model: str, name: str, series: Any, frequency: str, start: str | None) -> dict[str, Any]:
    one: dict[str, Any] = {
        "type": "multivariate_time_series"
        if isinstance(series[0], list)
        else "univariate_time_series",
        "name": name,
        "series": series,
        "frequency": frequency,
    }
    if start is not None:
        one["start_timestamp"] = start
    return {"model": model, "inputs": [one], "options": {"horizon": 4}}


def histogram(app: FastAPI, name: str, model: str, part: str) -> float:
    value = app.state.registry.metrics.registry.get_sample_value(
        f"{name}_{part}",
        {"model": model, "version": read_card(card_path(SERIES / f"{model}.onnx")).version},
    )
    return float(value or 0.0)


async def forecast(client: httpx.AsyncClient, payload: dict[str, Any]) -> list[float]:
    answer = await client.post("/v1/timeseries/forecast", json=payload)
    assert answer.status_code == 200, answer.text
    return [float(v) for v in answer.json()["outputs"][0]["content"][0]["mean_forecast"]]


async def test_a_series_that_slides_on_scores_its_last_forecast(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    card = read_card(card_path(MACRO))
    assert card.series is not None and card.series.scaling is not None
    offset, scale = card.series.scaling.offset[0], card.series.scaling.scale[0]
    rows = (rng.normal(size=(14, 3)) * [1.5, 0.9, 3.2] + [6.0, 0.85, 4.3]).tolist()
    first = await forecast(client, body("macro_lstm", "uk", rows[:12], "quarter", "2000-01-01"))
    before = histogram(app, "convlstm_series_forecast_mse", "macro_lstm", "count")
    # Two quarters later the client sends the last 10 rows: its start moved by 4 quarters.
    await forecast(client, body("macro_lstm", "uk", rows[4:], "quarter", "2001-01-01T00:00:00"))
    assert histogram(app, "convlstm_series_forecast_mse", "macro_lstm", "count") == before + 1
    truth = (np.array([rows[12][0], rows[13][0]]) - offset) / scale
    predicted = (np.array(first[:2]) - offset) / scale
    last = (rows[11][0] - offset) / scale
    mse = float(np.mean((predicted - truth) ** 2))
    copy_last = float(np.mean((last - truth) ** 2))
    assert histogram(app, "convlstm_series_forecast_mse", "macro_lstm", "sum") == pytest.approx(
        mse, rel=1e-6
    )
    assert histogram(app, "convlstm_series_copy_last_mse", "macro_lstm", "sum") == pytest.approx(
        copy_last, rel=1e-6
    )


async def test_a_start_off_the_grid_or_another_name_scores_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    rows = (rng.normal(size=(12, 3)) + [6.0, 0.85, 4.3]).tolist()
    await forecast(client, body("macro_lstm", "fr", rows, "quarter", "2000-01-01"))
    before = histogram(app, "convlstm_series_forecast_mse", "macro_lstm", "count")
    # A month off the quarterly grid: no step of the forecast is matched.
    await forecast(client, body("macro_lstm", "fr", rows, "quarter", "2000-02-01"))
    # Another series: nothing of it remembered yet.
    await forecast(client, body("macro_lstm", "de", rows, "quarter", "2000-01-01"))
    assert histogram(app, "convlstm_series_forecast_mse", "macro_lstm", "count") == before


async def test_a_growing_series_without_start_scores_the_next_observation(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    values = (336 + 15 * rng.normal(size=61)).tolist()
    first = await forecast(client, body("co2_lstm", "mauna-loa", values[:60], "week", None))
    await forecast(client, body("co2_lstm", "mauna-loa", values, "week", None))
    card = read_card(card_path(CO2))
    assert card.series is not None and card.series.scaling is not None
    offset, scale = card.series.scaling.offset[0], card.series.scaling.scale[0]
    expected = ((first[0] - values[60]) / scale) ** 2
    assert histogram(app, "convlstm_series_forecast_mse", "co2_lstm", "count") == 1
    assert histogram(app, "convlstm_series_forecast_mse", "co2_lstm", "sum") == pytest.approx(
        expected, rel=1e-6
    )
    copied = ((values[59] - values[60]) / scale) ** 2
    assert histogram(app, "convlstm_series_copy_last_mse", "co2_lstm", "sum") == pytest.approx(
        copied, rel=1e-6
    )
    assert offset  # the scaling was read, not assumed


async def test_memory_is_bounded() -> None:
    settings = Settings(model_path=CO2, warmup_runs=0, grpc_port=0, series_accuracy_series=2)
    values = (336 + rng.normal(size=52)).tolist()
    async with running_app(settings) as app, asgi_client(app) as client:
        for name in ("a", "b", "c"):
            await forecast(client, body("co2_lstm", name, values, "week", None))
        assert len(app.state.series_accuracy) == 2


def test_steps_between_is_the_inverse_of_after() -> None:
    start = datetime(2000, 1, 31)
    for word in ("second", "hour", "day", "week", "month", "quarter", "year"):
        for n in (-5, 0, 1, 7):
            assert steps_between(start, after(start, word, n), word) == n, (word, n)
    assert steps_between(datetime(2000, 1, 1), datetime(2000, 2, 1), "quarter") is None
    assert steps_between(datetime(2000, 1, 1), datetime(2000, 1, 1, 12), "day") is None
    # Month ends clip: Jan 31 + 1 month is Feb 29, and back from it is not Jan 31's grid.
    assert after(start, "month", 1) == datetime(2000, 2, 29)
    assert steps_between(datetime(2000, 2, 29), start, "month") is None
