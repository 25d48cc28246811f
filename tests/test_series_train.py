"""The series stage's parts, without training: the real data sets, the windows, the
baselines, the scores, SARIMAX's rolling forecast, and the networks' shapes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("statsmodels", reason="statsmodels is installed with the `train` extra")

from model_export.series.data import DATASETS, SeriesData, load  # noqa: E402
from model_export.series.evaluate import (  # noqa: E402
    Sarimax,
    mase_scale,
    naive,
    scores,
    seasonal_naive,
)


def toy(values: list[float], season: int = 1) -> SeriesData:
    return SeriesData(
        name="toy",
        values=np.asarray(values, np.float64).reshape(-1, 1),
        feature_names=["y"],
        target=0,
        frequency="day",
        season=season,
        subsequences=2,
        subsequence_length=2,
        horizon=2,
        test_steps=4,
        source="test",
        dates=[f"2000-01-{i + 1:02d}" for i in range(len(values))],
    )


@pytest.mark.parametrize("name", DATASETS)
def test_real_data_is_complete_and_in_time_order(name: str) -> None:
    data = load(name)
    assert np.isfinite(data.values).all()
    assert data.values.shape[1] == len(data.feature_names)
    assert len(data.dates) == len(data.values) and data.dates == sorted(data.dates)
    assert len(data.values) > data.test_steps + data.window + data.horizon
    origins = data.origins(data.test_start, len(data.values))
    x, y = data.windows(origins)
    assert x.shape == (len(origins), data.window, data.features)
    # The window ends just before the origin, the truth starts at it.
    t = int(origins[0])
    assert np.array_equal(x[0][-1], data.values[t - 1])
    assert np.array_equal(y[0], data.target_values[t : t + data.horizon])


def test_co2_missing_weeks_are_interpolated() -> None:
    import statsmodels.api as sm

    raw = sm.datasets.co2.load_pandas().data["co2"].to_numpy()
    gaps = np.flatnonzero(np.isnan(raw))
    assert len(gaps) > 0
    filled = load("co2").target_values
    g = int(gaps[gaps > 0][0])
    assert min(raw[g - 1], raw[g + 1]) - 1 <= filled[g] <= max(raw[g - 1], raw[g + 1]) + 1


def test_baselines_and_scores_on_a_toy_series() -> None:
    data = toy([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], season=2)
    origins = np.array([6, 7])
    assert naive(data, origins).tolist() == [[6, 6], [7, 7]]
    # Step i repeats the value one season (2 steps) before it.
    assert seasonal_naive(data, origins).tolist() == [[5, 6], [6, 7]]
    assert mase_scale(data) == 2.0
    truth = np.array([[7.0, 8.0], [8.0, 9.0]])
    got = scores(data, naive(data, origins), truth)
    assert got.mase == [0.5, 1.0]
    assert got.smape[0] == pytest.approx(100 * np.mean([2 / 13, 2 / 15]))


def test_sarimax_rolls_forward_as_statsmodels_forecasts() -> None:
    data = load("sunspots")
    model = Sarimax(data)
    model.fit()
    origins = data.origins(data.test_start, len(data.values))
    ours = model.forecast(origins[[0, 7]])
    for row, t in zip(ours, origins[[0, 7]], strict=True):
        np.testing.assert_allclose(row, model.forecast_from_history(int(t)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["convlstm2d", "convlstm1d", "cnn_lstm", "lstm"])
def test_networks_start_from_the_last_value(kind: str) -> None:
    """Each forecasts (h,) from the folded window; its head's change is added to the
    window's last target value, so with a zeroed head the forecast is the naive one."""
    from model_export.series.models import build_series_model, input_shape

    model = build_series_model(kind, 2, 3, 2, 4, target=1)
    assert tuple(model.input_shape[1:]) == input_shape(kind, 2, 3, 2)
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    x = np.random.default_rng(0).normal(size=(3, *input_shape(kind, 2, 3, 2))).astype("float32")
    out = model.predict(x, verbose=0)
    last = x.reshape(3, 6, 2)[:, -1, 1]
    np.testing.assert_allclose(out, np.repeat(last[:, None], 4, axis=1), rtol=1e-6)
