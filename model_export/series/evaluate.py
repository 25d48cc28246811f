"""Rolling-origin evaluation on a held-out tail: every model forecasts h steps from
every origin in the tail, with the history before it only; MASE and sMAPE per horizon
step. And the baselines: naive (the last value), seasonal naive, and statsmodels'
SARIMAX, fitted on the rows before the tail once and then run forward over the tail with
those parameters (its Kalman filter sees each new value; it is not refitted)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_export.series.data import SeriesData

SARIMAX_ORDERS: dict[str, tuple[tuple[int, int, int], str, int]] = {
    # (order, trend, Fourier pairs): CO2's yearly cycle in weekly data as 3 Fourier pairs
    # of period 365.25/7 (a seasonal ARIMA of period 52 has over 100 states and took
    # longer to fit than every network together); an AR(3) for the sunspot cycle; an
    # ARIMA(2, 1, 0) for unemployment.
    "co2": ((1, 1, 1), "n", 3),
    "sunspots": ((3, 0, 0), "c", 0),
    "macro": ((2, 1, 0), "n", 0),
}
YEAR_IN_WEEKS = 365.25 / 7


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

        order, trend, pairs = SARIMAX_ORDERS[self.data.name]
        y = self.data.target_values
        self.exog = fourier(len(y), YEAR_IN_WEEKS, pairs) if pairs else None
        seen = self.data.test_start
        model = SARIMAX(
            y[:seen],
            exog=None if self.exog is None else self.exog[:seen],
            order=order,
            trend=trend,
        )
        fitted = model.fit(disp=False)
        self.params = len(fitted.params)
        self.fitted = fitted
        # The same parameters over the whole series: the filter at origin t has seen
        # rows before t only.
        self.full = fitted.apply(y, exog=self.exog)

    def forecast(self, origins: NDArray[np.int64]) -> NDArray[np.float64]:
        f = self.full.filter_results
        z, tr = f.design[:, :, 0], f.transition[:, :, 0]
        c = f.state_intercept[:, 0]
        # With exogenous terms the observation intercept is the regression, per row.
        varying = f.obs_intercept.shape[1] > 1
        out = np.empty((len(origins), self.data.horizon))
        for n, t in enumerate(origins):
            state = f.predicted_state[:, t]  # given rows before t
            for i in range(self.data.horizon):
                intercept = f.obs_intercept[0, t + i if varying else 0]
                out[n, i] = float((z @ state)[0] + intercept)
                state = tr @ state + c
        return out

    def forecast_from_history(self, t: int) -> NDArray[np.float64]:
        """A forecast from the history alone (the filter run again over rows before t):
        what a stateless server would do; timed as SARIMAX's latency."""
        h, exog = self.data.horizon, self.exog
        if exog is None:
            history = self.fitted.apply(self.data.target_values[:t])
            return np.asarray(history.forecast(h), np.float64)
        history = self.fitted.apply(self.data.target_values[:t], exog=exog[:t])
        return np.asarray(history.forecast(h, exog=exog[t : t + h]), np.float64)


def fourier(rows: int, period: float, pairs: int) -> NDArray[np.float64]:
    """(rows, 2 * pairs): sin and cos of the first ``pairs`` harmonics of ``period``."""
    t = np.arange(rows)[:, None] * np.arange(1, pairs + 1)[None, :] * 2 * np.pi / period
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)
