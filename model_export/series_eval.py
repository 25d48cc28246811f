"""Rolling-origin evaluation on a held-out tail: every model forecasts h steps from
every origin in the tail, with the history before it only; MASE and sMAPE per horizon
step. And the baselines: naive (the last value), seasonal naive, and statsmodels'
SARIMAX, fitted on the rows before the tail once and then run forward over the tail with
those parameters (its Kalman filter sees each new value; it is not refitted)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_export.series_data import SeriesData

SARIMAX_ORDERS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int, int], str]] = {
    # (order, seasonal order, trend): the airline model for CO2's weekly cycle; an AR(3)
    # for the sunspot cycle; an ARIMA(2, 1, 0) for unemployment.
    "co2": ((0, 1, 1), (0, 1, 1, 52), "n"),
    "sunspots": ((3, 0, 0), (0, 0, 0, 0), "c"),
    "macro": ((2, 1, 0), (0, 0, 0, 0), "n"),
}


@dataclass(frozen=True)
class Scores:
    mase: list[float]
    """Per horizon step 1..h."""
    smape: list[float]
    """Per horizon step 1..h, in percent (0-200)."""

    @property
    def mean_mase(self) -> float:
        return float(np.mean(self.mase))

    @property
    def mean_smape(self) -> float:
        return float(np.mean(self.smape))


def mase_scale(data: SeriesData) -> float:
    """The in-sample mean absolute error of the seasonal naive forecast (period
    ``data.season``) on the rows before the tail: MASE's denominator."""
    y = data.target_values[: data.test_start]
    m = data.season
    return float(np.mean(np.abs(y[m:] - y[:-m])))


def scores(data: SeriesData, forecast: NDArray[np.float64], truth: NDArray[np.float64]) -> Scores:
    """(n, h) forecasts against (n, h) truth."""
    error = np.abs(forecast - truth)
    denominator = np.abs(forecast) + np.abs(truth)
    ratio = np.divide(2 * error, denominator, out=np.zeros_like(error), where=denominator > 0)
    return Scores(
        mase=[float(v) for v in error.mean(axis=0) / mase_scale(data)],
        smape=[float(v) for v in 100 * ratio.mean(axis=0)],
    )


def naive(data: SeriesData, origins: NDArray[np.int64]) -> NDArray[np.float64]:
    y = data.target_values
    return np.repeat(y[origins - 1][:, None], data.horizon, axis=1)


def seasonal_naive(data: SeriesData, origins: NDArray[np.int64]) -> NDArray[np.float64]:
    """Step i (0-based) repeats the value one (or more) seasons before it."""
    y, m = data.target_values, data.season
    steps = np.arange(data.horizon)
    back = m * ((steps // m) + 1)
    return np.stack([y[t + steps - back] for t in origins])


@dataclass
class Sarimax:
    """SARIMAX fitted on the target's rows before the tail; forecasts from the filtered
    state at each origin (the state-space forecast, iterated h times)."""

    data: SeriesData
    params: int = 0

    def fit(self) -> None:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        order, seasonal, trend = SARIMAX_ORDERS[self.data.name]
        y = self.data.target_values
        model = SARIMAX(
            y[: self.data.test_start], order=order, seasonal_order=seasonal, trend=trend
        )
        fitted = model.fit(disp=False)
        self.params = len(fitted.params)
        self.fitted = fitted
        # The same parameters over the whole series: the filter at origin t has seen
        # rows before t only.
        self.full = fitted.apply(y)

    def forecast(self, origins: NDArray[np.int64]) -> NDArray[np.float64]:
        f = self.full.filter_results
        z, tr = f.design[:, :, 0], f.transition[:, :, 0]
        d, c = f.obs_intercept[:, 0], f.state_intercept[:, 0]
        out = np.empty((len(origins), self.data.horizon))
        for n, t in enumerate(origins):
            state = f.predicted_state[:, t]  # given rows before t
            for i in range(self.data.horizon):
                out[n, i] = float((z @ state + d)[0])
                state = tr @ state + c
        return out

    def forecast_from_history(self, t: int) -> NDArray[np.float64]:
        """A forecast from the history alone (the filter run again over rows before t):
        what a stateless server would do; timed as SARIMAX's latency."""
        history = self.fitted.apply(self.data.target_values[:t])
        return np.asarray(history.forecast(self.data.horizon), np.float64)
