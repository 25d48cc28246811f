"""Real series that ship inside a pip package (statsmodels' datasets: offline, no
download), and the windows every series model trains and is evaluated on.

- ``co2``: weekly atmospheric CO2 at Mauna Loa, 1958-2001 (ppm); 59 missing weeks,
  filled by linear interpolation in time.
- ``sunspots``: yearly sunspot activity, 1700-2008.
- ``macro``: quarterly US macro data, 1959-2009, multivariate (F = 3): unemployment
  (the target), real GDP growth (log difference, %) and inflation.

A window is the last W = S*K rows before a forecast origin t; its target is the next h
values of the target feature, rows t..t+h-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class SeriesData:
    name: str
    values: NDArray[np.float64]
    """(T, F) in time order, the target in column ``target``."""
    feature_names: list[str]
    target: int
    frequency: str
    season: int
    """The seasonal period in steps (1: none) for MASE and the seasonal naive forecast."""
    subsequences: int
    subsequence_length: int
    horizon: int
    test_steps: int
    """The held-out tail: forecast origins lie in the last ``test_steps`` rows."""
    source: str
    dates: list[str]
    """The ISO 8601 date of each row."""

    @property
    def window(self) -> int:
        return self.subsequences * self.subsequence_length

    @property
    def features(self) -> int:
        return int(self.values.shape[1])

    @property
    def test_start(self) -> int:
        """The first row of the held-out tail; training uses only rows before it."""
        return len(self.values) - self.test_steps

    @property
    def target_values(self) -> NDArray[np.float64]:
        return self.values[:, self.target]

    def origins(self, start: int, stop: int) -> NDArray[np.int64]:
        """Forecast origins t with a full window before and h rows after, in [start, stop)."""
        first = max(start, self.window)
        return np.arange(first, stop - self.horizon + 1)

    def windows(
        self, origins: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(n, W, F) windows before each origin and (n, h) target values after it."""
        w, h = self.window, self.horizon
        x = np.stack([self.values[t - w : t] for t in origins])
        y = np.stack([self.target_values[t : t + h] for t in origins])
        return x, y


def load(name: str) -> SeriesData:
    """One of ``DATASETS`` by name."""
    import statsmodels.api as sm

    if name == "co2":
        frame = sm.datasets.co2.load_pandas().data
        co2 = frame["co2"].interpolate(method="time").bfill().to_numpy(np.float64)
        return SeriesData(
            name="co2",
            values=co2.reshape(-1, 1),
            feature_names=["co2"],
            target=0,
            frequency="week",
            season=52,
            subsequences=4,
            subsequence_length=13,
            horizon=4,
            test_steps=260,
            source="statsmodels.datasets.co2 (weekly, 1958-2001; 59 NaNs interpolated in time)",
            dates=[d.date().isoformat() for d in frame.index],
        )
    if name == "sunspots":
        frame = sm.datasets.sunspots.load_pandas().data
        return SeriesData(
            name="sunspots",
            values=frame["SUNACTIVITY"].to_numpy(np.float64).reshape(-1, 1),
            feature_names=["sunactivity"],
            target=0,
            frequency="year",
            season=11,
            subsequences=4,
            subsequence_length=6,
            horizon=4,
            test_steps=50,
            source="statsmodels.datasets.sunspots (yearly, 1700-2008)",
            dates=[f"{int(y):04d}-01-01" for y in frame["YEAR"]],
        )
    if name == "macro":
        frame = sm.datasets.macrodata.load_pandas().data
        growth = 100 * np.diff(np.log(frame["realgdp"].to_numpy(np.float64)))
        values = np.column_stack(
            [frame["unemp"].to_numpy()[1:], growth, frame["infl"].to_numpy()[1:]]
        ).astype(np.float64)
        return SeriesData(
            name="macro",
            values=values,
            feature_names=["unemp", "gdp_growth", "infl"],
            target=0,
            frequency="quarter",
            season=4,
            subsequences=2,
            subsequence_length=4,
            horizon=4,
            test_steps=40,
            source="statsmodels.datasets.macrodata (quarterly, 1959-2009): unemployment, "
            "real GDP growth (100 * log difference), inflation",
            dates=[
                f"{int(y):04d}-{3 * int(q) - 2:02d}-01"
                for y, q in zip(frame["year"][1:], frame["quarter"][1:], strict=True)
            ],
        )
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


DATASETS = ("co2", "sunspots", "macro")
