"""Live accuracy of series forecasts: KServe's time-series API is stateless, so a client
whose series has grown sends it again; the observations that arrived since its last
forecast are the truth for that forecast's first steps.

For each series name and model version the service remembers its latest forecast (its
first step's time, the values, the last observation it was made from). When a forecast
request brings that series again, the observations that fall on the remembered
forecast's steps (matched by time: the series' start and frequency) score it: the
forecast's MSE and copy-last's (the last observation repeated), both in the model's
scaled units (the card's offset and scale, so that series of any magnitude are
comparable), observed once per scored forecast as ``convlstm_series_forecast_mse`` and
``convlstm_series_copy_last_mse`` by model and version. Then the new forecast is
remembered in its place, so each forecast is scored once, on the steps its next request
covers. A series with no ``start_timestamp`` starts at the Unix epoch, as the API's
answer says: such a client sends its whole series each time.

The memory is bounded (``CONVLSTM_SERIES_ACCURACY_SERIES``, least recently forecast
dropped first); names are the clients' own, so two clients that send different series
under one name score each other's forecasts (badly): the name should say which series it
is.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from service.metrics import Metrics
from service.tasks.series_time import steps_between


@dataclass(frozen=True)
class Forecast:
    """A forecast as remembered, in the model's scaled units."""

    start: datetime
    """The time of its first step."""
    word: str
    values: NDArray[np.float64]
    """(h, targets)."""
    last: NDArray[np.float64]
    """(targets,): the last observation it was made from: copy-last's forecast."""


@dataclass(frozen=True)
class Score:
    steps: int
    mse: float
    copy_last_mse: float


class SeriesAccuracy:
    """The remembered forecasts and the two histograms."""

    def __init__(self, metrics: Metrics, capacity: int) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self._forecasts: OrderedDict[tuple[str, str, str], Forecast] = OrderedDict()

    def __len__(self) -> int:
        return len(self._forecasts)

    def observe(
        self,
        model: str,
        version: str,
        name: str,
        series_start: datetime,
        observed: NDArray[np.float64],
        forecast: Forecast,
    ) -> Score | None:
        """Score the forecast remembered for ``name`` against ``observed`` ((T, targets),
        scaled, the series from ``series_start`` at ``forecast.word`` steps), then
        remember ``forecast`` in its place. The score, or None when no observation fell on
        the earlier forecast's steps (or there was none)."""
        if self.capacity == 0:
            return None
        key = (model, version, name)
        earlier = self._forecasts.pop(key, None)
        self._forecasts[key] = forecast
        while len(self._forecasts) > self.capacity:
            self._forecasts.popitem(last=False)
        if earlier is None or earlier.word != forecast.word:
            return None
        score = _score(earlier, series_start, observed)
        if score is not None:
            self.metrics.series_forecast_mse.labels(model, version).observe(score.mse)
            self.metrics.series_copy_last_mse.labels(model, version).observe(score.copy_last_mse)
        return score


def _score(
    earlier: Forecast, series_start: datetime, observed: NDArray[np.float64]
) -> Score | None:
    offset = steps_between(series_start, earlier.start, earlier.word)
    if offset is None:
        return None
    # Forecast step k is observation offset + k, where the series has it.
    first, stop = max(0, -offset), min(len(earlier.values), len(observed) - offset)
    if stop <= first:
        return None
    truth = observed[offset + first : offset + stop]
    predicted = earlier.values[first:stop]
    return Score(
        steps=stop - first,
        mse=float(np.mean((predicted - truth) ** 2)),
        copy_last_mse=float(np.mean((earlier.last - truth) ** 2)),
    )
