"""The committed series models (``models/series``, written by ``python -m model_export
series``) served by the real process: listed, answering in the client's units as their
graph does on the scaled, folded window, rolling out, with quantiles from their cards;
and the client and ``convlstm-predict --csv`` against them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convlstm_card import ModelCard, read_card
from convlstm_client import ClientError, NextFrameClient
from convlstm_client.cli import main as predict_main
from tests.service.conftest import REPO, RunningServer, run_server

SERIES = REPO / "models" / "series"
SAMPLES_JSON = REPO / "service" / "web" / "samples" / "series.json"
MODELS = sorted(p.stem for p in SERIES.glob("*.onnx"))
pytestmark = pytest.mark.skipif(not MODELS, reason="no committed series models")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with run_server(SERIES / f"{MODELS[0]}.onnx", env={"CONVLSTM_WARMUP_RUNS": "0"}) as s:
        yield s


def card(name: str) -> ModelCard:
    return read_card(SERIES / f"{name}.json")


def history(c: ModelCard, steps: int) -> np.ndarray:
    """A plausible series in the model's units: its scaling's mean and spread, with a
    seasonal wave and noise."""
    assert c.series is not None and c.series.scaling is not None
    mean, scale = np.asarray(c.series.scaling.offset), np.asarray(c.series.scaling.scale)
    t = np.arange(steps)[:, None]
    rng = np.random.default_rng(1)
    wave = np.sin(2 * np.pi * t / 11) + 0.3 * rng.normal(size=(steps, len(mean)))
    return mean + scale * wave


def graph_forecast(name: str, rows: np.ndarray) -> np.ndarray:
    """The graph run directly on the scaled, folded window, unscaled: what the server
    must answer."""
    c = card(name)
    spec = c.series
    assert spec is not None and spec.scaling is not None
    offset, scale = np.asarray(spec.scaling.offset), np.asarray(spec.scaling.scale)
    shape = [int(d) for d in c.input.shape[1:]]
    x = ((rows[-spec.window :] - offset) / scale).astype(np.float32).reshape(1, *shape)
    session = ort.InferenceSession(str(SERIES / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(None, {c.input.name: x})[0].astype(np.float64).reshape(-1)
    t = spec.targets[0]
    return y * scale[t] + offset[t]


def test_every_committed_series_model_is_listed(server: RunningServer) -> None:
    with NextFrameClient(server.url) as client:
        assert sorted(client.series_models()) == MODELS


def test_each_model_answers_as_its_graph(server: RunningServer) -> None:
    with NextFrameClient(server.url) as client:
        for name in MODELS:
            c = card(name)
            assert c.series is not None and c.series.frequency is not None
            rows = history(c, c.series.window + 5)
            series = rows[:, 0] if c.series.features == 1 else rows
            got = client.forecast(
                name, series, horizon=c.series.horizon, frequency=c.series.frequency
            )
            expected = graph_forecast(name, rows)
            np.testing.assert_allclose(got.mean, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_quantiles_come_from_the_validation_residuals(server: RunningServer) -> None:
    name = next(n for n in MODELS if n.endswith("lstm") and not n.endswith("cnn_lstm"))
    c = card(name)
    assert c.series is not None and c.series.residual_quantiles is not None
    h = c.series.horizon
    rows = history(c, c.series.window)
    series = rows[:, 0] if c.series.features == 1 else rows
    with NextFrameClient(server.url) as client:
        got = client.forecast(
            name, series, horizon=h, frequency=str(c.series.frequency), quantiles=[0.1, 0.9]
        )
        longer = client.forecast(
            name, series, horizon=h + 1, frequency=str(c.series.frequency), quantiles=[0.1]
        )
    table = c.series.residual_quantiles
    np.testing.assert_allclose(got.quantiles["0.1"], got.mean + np.asarray(table["0.1"])[:, 0])
    assert np.all(got.quantiles["0.9"] > got.quantiles["0.1"])
    assert got.note is None
    if c.series.univariate:
        assert len(longer.mean) == h + 1 and not longer.quantiles and longer.note


def test_a_multivariate_horizon_beyond_h_is_refused(server: RunningServer) -> None:
    name = next((n for n in MODELS if not card(n).series.univariate), None)  # type: ignore[union-attr]
    if name is None:
        pytest.skip("no multivariate committed model")
    c = card(name)
    assert c.series is not None
    with NextFrameClient(server.url) as client, pytest.raises(ClientError) as err:
        client.forecast(
            name,
            history(c, c.series.window),
            horizon=c.series.horizon + 1,
            frequency=str(c.series.frequency),
        )
    assert err.value.status == 422 and err.value.location == "options.horizon"


@pytest.mark.parametrize("digits", [2, 30, 400])
def test_a_horizon_of_any_size_is_refused_with_422(server: RunningServer, digits: int) -> None:
    """Found by the protocol fuzzer (tests/service/http_fuzz.py): a horizon of 400 digits
    overflowed a float division, a 500."""
    name = next(n for n in MODELS if card(n).series.univariate)  # type: ignore[union-attr]
    c = card(name)
    assert c.series is not None
    series = ", ".join(str(v) for v in history(c, c.series.window)[:, 0])
    body = (
        f'{{"model": "{name}", "inputs": [{{"type": "univariate_time_series", "name": "y", '
        f'"series": [{series}], "frequency": "{c.series.frequency}"}}], '
        f'"options": {{"horizon": {"9" * digits}}}}}'
    )
    with server.client() as client:
        r = client.post(
            "/v1/timeseries/forecast", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "options.horizon"


def test_cli_forecasts_a_csv_column(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = next(n for n in MODELS if card(n).series.univariate)  # type: ignore[union-attr]
    c = card(name)
    assert c.series is not None
    values = history(c, c.series.window + 3)[:, 0]
    csv = tmp_path / "series.csv"
    csv.write_text("when,value\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    args = ["--csv", str(csv), "--column", "value", "--model", name, "--url", server.url]
    code = predict_main([*args, "--frequency", str(c.series.frequency), "--horizon", "3"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[0] == "step,forecast" and len(out) == 4
    expected = graph_forecast(name, values.reshape(-1, 1))[:3]
    np.testing.assert_allclose([float(line.split(",")[1]) for line in out[1:]], expected, rtol=1e-5)

    csv.write_text("when,value\n0,1.5\n1,\n2,3\n")
    code = predict_main([*args, "--frequency", str(c.series.frequency)])
    assert code == 2
    assert f"{csv}:3 column 'value': empty" in capsys.readouterr().err


def test_page_samples_fit_the_committed_models() -> None:
    samples = json.loads((SAMPLES_JSON).read_text())
    for name in MODELS:
        c = card(name)
        assert c.series is not None
        sample = samples[name.split("_", 1)[0]]
        assert sample["frequency"] == c.series.frequency
        assert len(sample["history"]) >= c.series.window
        assert len(sample["truth"]) >= c.series.horizon
        if c.series.features > 1:
            assert all(len(row) == c.series.features for row in sample["history"])


def test_series_page_draws_history_forecast_and_truth(server: RunningServer) -> None:
    """The page in Debian's Chromium (skipped, saying why, where it or Playwright is
    missing, as the demo page's tests do): a forecast shows three lines and a band."""
    from tests.service.test_web import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, no_browser

    if not CHROMIUM.exists():
        no_browser(f"{CHROMIUM} is missing")
    try:
        from playwright import sync_api
    except ImportError:
        no_browser("playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server.url}/web/series.html")
            page.wait_for_selector('#sample option[value="sunspots"]', state="attached")
            page.select_option("#sample", "sunspots")
            page.select_option("#model", "sunspots_lstm")
            with page.expect_response("**/v1/timeseries/forecast") as response:
                page.click("#run")
            assert response.value.status == 200
            page.wait_for_function("document.querySelectorAll('#chart polyline').length === 3")
            assert page.locator("#chart polygon").count() == 1  # the 10-90 % band
            assert page.locator("#error").is_hidden()
            page.fill("#horizon", "999")
            with page.expect_response("**/v1/timeseries/forecast") as refused:
                page.click("#run")
            assert refused.value.status == 422
            sync_api.expect(page.locator("#error")).to_contain_text("options.horizon")
            assert not errors, errors
        finally:
            browser.close()
