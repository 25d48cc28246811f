"""KServe's own pydantic types as the judge: time-series requests and answers against
``kserve.protocol.rest.timeseries.types``, Open Inference Protocol JSON answers against
``kserve.protocol.rest.v2_datamodels``, unchanged. KServe cannot share this project's venv
(it pins protobuf<7; the training stage pins 7.x), so the types run in the KServe venv
that ``make kserve-env`` builds (the one ``make bench-peers`` uses), through
``tests/service/kserve_judge.py``; the bodies come from the app in process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from convlstm_card.files import card_path
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL, REPO, asgi_client, running_app

pytestmark = pytest.mark.anyio
KSERVE_PYTHON = REPO / ".venv-peers" / "kserve" / "bin" / "python"
JUDGE = Path(__file__).with_name("kserve_judge.py")
SERIES = REPO / "models" / "series"
UNIVARIATE = "co2_lstm"  # weekly, one feature
MULTIVARIATE = "macro_lstm"  # quarterly, three features, one target


def kserve_judge(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not KSERVE_PYTHON.exists():
        pytest.skip(f"no KServe venv at {KSERVE_PYTHON.parent.parent}: `make kserve-env` builds it")
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(JUDGE)],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    verdicts: list[dict[str, Any]] = json.loads(done.stdout)
    return verdicts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kserve-judge")
    graphs = [COMMITTED_MODEL, SERIES / f"{UNIVARIATE}.onnx", SERIES / f"{MULTIVARIATE}.onnx"]
    for graph in graphs:
        shutil.copy(graph, root / graph.name)
        shutil.copy(card_path(graph), root / card_path(graph).name)
    shutil.copy(COMMITTED_MODEL.with_name("convlstm.step.onnx"), root / "convlstm.step.onnx")
    return root / COMMITTED_MODEL.name


def forecast_request(model: str, series: list[Any], **extra: Any) -> dict[str, Any]:
    multivariate = isinstance(series[0], list)
    return {
        "model": model,
        "inputs": [
            {
                "type": "multivariate_time_series" if multivariate else "univariate_time_series",
                "name": "y",
                "series": series,
                "frequency": "quarter" if multivariate else "week",
                **extra,
            }
        ],
        "options": {"horizon": 4},
    }


async def collect(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every body KServe has a type for, as this server sends or takes it."""
    items: list[dict[str, Any]] = []

    async def answer(method: str, path: str, kind: str, status: int = 200, **kw: Any) -> None:
        r = await client.request(method, path, **kw)
        assert r.status_code == status, r.text
        items.append({"type": kind, "body": r.json(), "where": f"{method} {path} -> {status}"})

    rng = np.random.default_rng(0)
    uni = (300 + rng.normal(size=60).cumsum()).round(3).tolist()
    multi = rng.normal(size=(40, 3)).round(3).tolist()
    requests = [
        forecast_request(UNIVARIATE, uni),
        forecast_request(UNIVARIATE, uni, start_timestamp="2020-01-05T00:00:00"),
        {**forecast_request(UNIVARIATE, uni), "options": {"horizon": 4, "quantiles": [0.1, 0.9]}},
        forecast_request(MULTIVARIATE, multi, start_timestamp="2001-01-01"),
    ]
    for body in requests:
        items.append({"type": "ForecastRequest", "body": body, "where": "request"})
        await answer("POST", "/v1/timeseries/forecast", "ForecastResponse", json=body)
    for status, body in [
        (404, forecast_request("no-such-model", uni)),
        (422, forecast_request(UNIVARIATE, uni[:3])),
    ]:
        await answer(
            "POST", "/v1/timeseries/forecast", "TimeSeriesErrorResponse", status, json=body
        )

    await answer("GET", "/v2", "ServerMetadataResponse")
    await answer("GET", "/v2/health/live", "ServerLiveResponse")
    await answer("GET", "/v2/health/ready", "ServerReadyResponse")
    for name in ("convlstm", UNIVARIATE):
        await answer("GET", f"/v2/models/{name}", "ModelMetadataResponse")
        await answer("GET", f"/v2/models/{name}/ready", "ModelReadyResponse")
    frames = np.zeros((1, 15, 40, 40, 3), np.uint8)
    infer = {
        "inputs": [
            {
                "name": "frames",
                "shape": list(frames.shape),
                "datatype": "UINT8",
                "data": frames.ravel().tolist(),
            }
        ]
    }
    items.append({"type": "InferenceRequest", "body": infer, "where": "request"})
    await answer("POST", "/v2/models/convlstm/infer", "InferenceResponse", json=infer)
    assert items[-1]["body"]["id"], "an answer to a request without an id has one"
    with_id = {**infer, "id": "r-1", "parameters": {"horizon": 2}}
    items.append({"type": "InferenceRequest", "body": with_id, "where": "request"})
    await answer("POST", "/v2/models/convlstm/infer", "InferenceResponse", json=with_id)
    return items


async def test_kserve_types_accept_every_body(models: Path) -> None:
    async with running_app(Settings(model_path=models, warmup_runs=0)) as app:
        async with asgi_client(app) as client:
            items = await collect(client)
    verdicts = kserve_judge([{"type": i["type"], "body": i["body"]} for i in items])
    refused = [
        f"{i['where']} as {v['type']}: {v['errors']}"
        for i, v in zip(items, verdicts, strict=True)
        if not v["ok"]
    ]
    assert len(verdicts) == len(items) >= 20
    assert not refused, "\n".join(refused)


def test_the_judge_refuses_what_kserve_refuses() -> None:
    """The judge can fail: a forecast without start_timestamp (what this server answered
    before it always sent one) and an infer answer without an id are refused."""
    forecast = {
        "type": "univariate_time_series",
        "name": "y",
        "mean_forecast": [1.0],
        "frequency": "W",
    }
    answer = {
        "id": "a",
        "created_at": 0,
        "status": "completed",
        "model": "m",
        "outputs": [{"type": "t", "id": "o", "status": "completed", "content": [forecast]}],
    }
    infer = {"model_name": "m", "outputs": []}
    verdicts = kserve_judge(
        [
            {"type": "ForecastResponse", "body": answer},
            {"type": "InferenceResponse", "body": infer},
        ]
    )
    assert [v["ok"] for v in verdicts] == [False, False]
    assert "start_timestamp" in verdicts[0]["errors"] and "id" in verdicts[1]["errors"]


def _forecast(**change: Any) -> dict[str, Any]:
    series = (300 + np.random.default_rng(0).normal(size=60).cumsum()).round(3).tolist()
    body = forecast_request(UNIVARIATE, series)
    body["inputs"][0].update(change.pop("input", {}))
    body.update(change)
    return body


def _infer(**change: Any) -> dict[str, Any]:
    frames = np.zeros(1 * 15 * 40 * 40 * 3, np.uint8).tolist()
    tensor = {"name": "frames", "shape": [1, 15, 40, 40, 3], "datatype": "UINT8", "data": frames}
    tensor.update(change.pop("input", {}))
    return {"inputs": [tensor], **change}


# (what differs, the body, KServe's type, whether KServe's type takes it, our status):
# where this server is stricter or looser than KServe's types (docs/api/timeseries.md
# and docs/api/oip.md list the same).
DIFFERENCES: list[tuple[str, str, dict[str, Any], str, bool, int]] = [
    (
        "horizon 0",
        "/v1/timeseries/forecast",
        _forecast(options={"horizon": 0}),
        "ForecastRequest",
        True,
        422,
    ),
    (
        "quantile 1.5",
        "/v1/timeseries/forecast",
        _forecast(options={"horizon": 4, "quantiles": [1.5]}),
        "ForecastRequest",
        True,
        422,
    ),
    ("no inputs", "/v1/timeseries/forecast", _forecast(inputs=[]), "ForecastRequest", True, 422),
    (
        "numbers as strings",
        "/v1/timeseries/forecast",
        _forecast(input={"series": ["1.5"] * 60}),
        "ForecastRequest",
        True,
        422,
    ),
    (
        "start not ISO 8601",
        "/v1/timeseries/forecast",
        _forecast(input={"start_timestamp": "yesterday"}),
        "ForecastRequest",
        True,
        422,
    ),
    (
        "rows for univariate",
        "/v1/timeseries/forecast",
        _forecast(input={"series": [[1.0]] * 60}),
        "ForecastRequest",
        True,
        422,
    ),
    (
        "unknown frequency",
        "/v1/timeseries/forecast",
        _forecast(input={"frequency": "fortnight"}),
        "ForecastRequest",
        False,
        422,
    ),
    (
        "no options",
        "/v1/timeseries/forecast",
        {k: v for k, v in _forecast().items() if k != "options"},
        "ForecastRequest",
        False,
        422,
    ),
    (
        "nested parameters",
        "/v2/models/convlstm/infer",
        _infer(parameters={"trace": {"on": True}}),
        "InferenceRequest",
        False,
        200,
    ),
    (
        "datatype INT32",
        "/v2/models/convlstm/infer",
        _infer(input={"datatype": "INT32"}),
        "InferenceRequest",
        True,
        422,
    ),
    (
        "another input name",
        "/v2/models/convlstm/infer",
        _infer(input={"name": "x"}),
        "InferenceRequest",
        True,
        422,
    ),
    ("id a number", "/v2/models/convlstm/infer", _infer(id=5), "InferenceRequest", False, 422),
]


async def test_where_this_server_differs_from_kserves_types(models: Path) -> None:
    verdicts = kserve_judge(
        [{"type": kind, "body": body} for _, _, body, kind, _, _ in DIFFERENCES]
    )
    async with running_app(Settings(model_path=models, warmup_runs=0)) as app:
        async with asgi_client(app) as client:
            statuses = [
                (await client.post(path, json=body)).status_code
                for _, path, body, *_ in DIFFERENCES
            ]
    got = [(d[0], v["ok"], s) for d, v, s in zip(DIFFERENCES, verdicts, statuses, strict=True)]
    assert got == [(d[0], d[4], d[5]) for d in DIFFERENCES]
