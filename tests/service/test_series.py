"""Series models written elsewhere (a ConvLSTM2D with a (1, k) kernel and a ConvLSTM1D,
multivariate), exported by ``export --task series``, answer KServe's time-series API as
their Keras originals do on the folded window; the Open Inference Protocol's tensors
too. The real server on loopback for the answers, the app in process for the refusals."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from convlstm_card import read_card
from service.config import Settings
from tests.service.conftest import RunningServer, asgi_client, run_server, running_app

pytest.importorskip("tf2onnx", reason="tf2onnx is installed with the `train` extra")
from tests.service.series_models import SeriesModel, build_series_models  # noqa: E402

RTOL = 1e-5
rng = np.random.default_rng(3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SeriesModel]:
    return build_series_models(tmp_path_factory.mktemp("series"))


@pytest.fixture(scope="module")
def server(built: dict[str, SeriesModel]) -> Iterator[RunningServer]:
    with run_server(built["conv2d"].path, env={"CONVLSTM_WARMUP_RUNS": "0"}) as running:
        yield running


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def app_client(built: dict[str, SeriesModel]) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_path=built["conv2d"].path, warmup_runs=0)
    async with running_app(settings) as app:
        async with asgi_client(app) as client:
            yield client


def forecast_body(model: str, series: list[Any], horizon: int, **extra: Any) -> dict[str, Any]:
    multivariate = bool(series) and isinstance(series[0], list)
    one = {
        "type": "multivariate_time_series" if multivariate else "univariate_time_series",
        "name": "s",
        "series": series,
        "frequency": extra.pop("frequency", "week"),
        **extra,
    }
    return {"model": model, "inputs": [one], "options": {"horizon": horizon}}


def assert_close(got: Any, expected: Any) -> None:
    got_a, expected_a = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got_a.shape == expected_a.shape
    scale = max(1.0, float(np.max(np.abs(expected_a))))
    np.testing.assert_allclose(got_a, expected_a, rtol=RTOL, atol=RTOL * scale)


def test_export_records_the_framing(built: dict[str, SeriesModel]) -> None:
    card = read_card(built["conv1d"].path.with_suffix(".json"))
    assert card.series is not None and card.task == "series"
    spec = card.series
    assert (spec.subsequences, spec.subsequence_length, spec.features, spec.horizon) == (3, 4, 2, 2)
    assert spec.targets == [1]
    assert spec.scaling is not None and spec.scaling.offset == [10.0, -3.0]
    assert read_card(built["uni"].path.with_suffix(".json")).series.frequency == "month"  # type: ignore[union-attr]


def test_models_lists_the_series_models(server: RunningServer) -> None:
    with server.client() as c:
        r = c.get("/v1/timeseries/models")
    assert r.status_code == 200, r.text
    assert sorted(r.json()) == ["conv1d", "conv2d", "uni"]


def test_multivariate_conv2d_answers_as_keras(
    server: RunningServer, built: dict[str, SeriesModel]
) -> None:
    model = built["conv2d"]
    rows = rng.normal(size=(15, 2))
    body = forecast_body("conv2d", rows.tolist(), 3, start_timestamp="2024-01-01T00:00:00")
    with server.client() as c:
        r = c.post("/v1/timeseries/forecast", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "completed" and answer["model"] == "conv2d"
    content = answer["outputs"][0]["content"][0]
    assert content["type"] == "multivariate_time_series"
    assert content["start_timestamp"] == "2024-04-15T00:00:00"  # 15 weeks on
    assert_close(content["mean_forecast"], model.predict(model.folded(rows))[0])
    # A shorter horizon is the first steps of the same forecast.
    with server.client() as c:
        short = c.post("/v1/timeseries/forecast", json=forecast_body("conv2d", rows.tolist(), 2))
    assert short.json()["outputs"][0]["content"][0]["mean_forecast"] == content["mean_forecast"][:2]
    # No start given: KServe's ForecastResponse still needs one; 15 weeks after the epoch.
    assert short.json()["outputs"][0]["content"][0]["start_timestamp"] == "1970-04-16T00:00:00"


def test_scaled_conv1d_forecasts_its_target_in_client_units(
    server: RunningServer, built: dict[str, SeriesModel]
) -> None:
    model = built["conv1d"]
    rows = np.column_stack([rng.normal(10, 2, 20), rng.normal(-3, 0.5, 20)])
    body = forecast_body("conv1d", rows.tolist(), 2)
    body["inputs"].append({**body["inputs"][0], "name": "t", "series": rows[:-3].tolist()})
    with server.client() as c:
        r = c.post("/v1/timeseries/forecast", json=body)
    assert r.status_code == 200, r.text
    for output, history in zip(r.json()["outputs"], [rows, rows[:-3]], strict=True):
        content = output["content"][0]
        assert content["type"] == "univariate_time_series"
        expected = model.predict(model.folded(history))[0] * model.scale[1] + model.offset[1]
        assert_close(content["mean_forecast"], expected)


def test_univariate_rolls_out_beyond_h(
    server: RunningServer, built: dict[str, SeriesModel]
) -> None:
    model = built["uni"]
    series = rng.normal(100, 20, 9)
    body = forecast_body("uni", series.tolist(), 5, frequency="M")
    body["inputs"][0]["start_timestamp"] = "2021-01-31"
    with server.client() as c:
        r = c.post("/v1/timeseries/forecast", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["outputs"][0]["content"][0]
    history = series.reshape(-1, 1)
    expected: list[float] = []
    for _ in range(math.ceil(5 / 2)):
        step = model.predict(model.folded(history))[0] * model.scale[0] + model.offset[0]
        expected.extend(step)
        history = np.concatenate([history, step.reshape(-1, 1)])
    # Fed back in model units, compared in client units: float32 rounding compounds.
    got = np.asarray(content["mean_forecast"])
    np.testing.assert_allclose(got, expected[:5], rtol=1e-4)
    assert content["start_timestamp"] == "2021-10-31T00:00:00"
    assert "note" not in content


def test_oip_tensors_answer_as_keras(server: RunningServer, built: dict[str, SeriesModel]) -> None:
    model = built["conv2d"]
    x = rng.normal(size=(2, 3, 1, 4, 2)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "inputs",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    with server.client() as c:
        meta = c.get("/v2/models/conv2d").json()
        r = c.post("/v2/models/conv2d/infer", json=body)
    assert meta["parameters"]["task"] == "series"
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 3, 2]
    assert_close(np.asarray(out["data"]).reshape(out["shape"]), model.predict(x))


async def refusal(client: httpx.AsyncClient, body: Any) -> dict[str, Any]:
    # json.dumps writes NaN as NaN (as JavaScript clients and pandas do); httpx would not.
    content = json.dumps(body)
    headers = {"content-type": "application/json"}
    r = await client.post("/v1/timeseries/forecast", content=content, headers=headers)
    assert r.status_code == 422, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "422" and error["message"]
    return error


@pytest.mark.anyio
async def test_bad_series_are_refused_naming_the_index(app_client: httpx.AsyncClient) -> None:
    rows = rng.normal(size=(14, 2)).tolist()
    short = await refusal(app_client, forecast_body("conv2d", rows[:11], 1))
    assert short["param"] == "inputs[0].series" and "W=12" in short["message"]

    nan_rows = [list(r) for r in rows]
    nan_rows[5][1] = float("nan")
    nan = await refusal(app_client, forecast_body("conv2d", nan_rows, 1))
    assert nan["param"] == "inputs[0].series[5][1]" and "nan" in nan["message"]

    text_rows = [list(r) for r in rows]
    text_rows[7][0] = "12.5"
    text = await refusal(app_client, forecast_body("conv2d", text_rows, 1))
    assert text["param"] == "inputs[0].series[7][0]" and "not a number" in text["message"]

    ragged = [list(r) for r in rows]
    ragged[9] = ragged[9][:1]
    raggedness = await refusal(app_client, forecast_body("conv2d", ragged, 1))
    assert raggedness["param"] == "inputs[0].series[9]" and "1 values" in raggedness["message"]

    flat = await refusal(app_client, forecast_body("conv2d", [1.0] * 14, 1))
    assert "multivariate_time_series" in flat["message"]

    uni = [1.0] * 6
    uni[3] = True  # type: ignore[call-overload]
    boolean = await refusal(app_client, forecast_body("uni", uni, 1, frequency="month"))
    assert boolean["param"] == "inputs[0].series[3]"


@pytest.mark.anyio
async def test_horizons_and_frequencies_are_checked(app_client: httpx.AsyncClient) -> None:
    rows = rng.normal(size=(12, 2)).tolist()
    long = await refusal(app_client, forecast_body("conv2d", rows, 4))
    assert (
        long["param"] == "options.horizon" and "only univariate models roll out" in long["message"]
    )
    freq = await refusal(app_client, forecast_body("conv2d", rows, 1, frequency="month"))
    assert freq["param"] == "inputs[0].frequency" and "per week" in freq["message"]
    unknown = await refusal(app_client, forecast_body("conv2d", rows, 1, frequency="fortnight"))
    assert "KServe's frequencies" in unknown["message"]
    far = await refusal(app_client, forecast_body("uni", [1.0] * 6, 10_000, frequency="M"))
    assert far["param"] == "options.horizon" and "runs" in far["message"]
    zero = await refusal(app_client, forecast_body("conv2d", rows, 0))
    assert zero["param"] == "options.horizon"
    many = forecast_body("conv2d", rows, 1)
    many["inputs"] *= 33  # one more than the queue holds
    crowd = await refusal(app_client, many)
    assert crowd["param"] == "inputs" and "at most 32" in crowd["message"]
    r = await app_client.post("/v1/timeseries/forecast", json=forecast_body("nope", rows, 1))
    assert r.status_code == 404 and r.json()["error"]["code"] == "404"


@pytest.mark.anyio
async def test_quantiles_without_residuals_are_left_out_and_said(
    app_client: httpx.AsyncClient,
) -> None:
    body = forecast_body("conv2d", rng.normal(size=(12, 2)).tolist(), 2)
    body["options"]["quantiles"] = [0.1, 0.9]
    r = await app_client.post("/v1/timeseries/forecast", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["outputs"][0]["content"][0]
    assert "quantiles" not in content and "residuals" in content["note"]
