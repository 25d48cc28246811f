"""Time-series forecasting: the last W = S*K rows of a series of F features, folded
row-major into the graph's input ((S, 1, K, F), (S, K, F) or (W, F)), in; the next h
values of the target features, out. The card's ``series`` section gives S, K, F, h, the
targets and the scaling, which is applied here so that clients send and receive their
own units.

Two fronts use this adapter: the Open Inference Protocol, with the graph's own tensors
(already folded and scaled, one run); and KServe's time-series API
(``service.api.timeseries``), with plain series (``window`` in, ``forecast`` out). A
horizon beyond h is rolled out (each forecast fed back as the newest rows) only for a
univariate model: a multivariate one would need the features it does not forecast.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from convlstm_card import ModelCard, SeriesSpec, infer_series, series_problem
from service.errors import InvalidInput, ModelLoadError
from service.inference.codec import check_shape, to_model_values
from service.inference.scheduler import RunBatch


class SeriesTask:
    """The adapter for ``task: series`` cards."""

    task: Literal["series"] = "series"

    def __init__(
        self,
        spec: SeriesSpec,
        item_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        max_runs: int,
    ) -> None:
        self.spec = spec
        self.item_shape = item_shape
        self.output_shape = output_shape
        self.max_runs = max_runs
        scaling = spec.scaling
        features = spec.features
        self.offset = np.asarray(scaling.offset if scaling else [0.0] * features, np.float64)
        self.scale = np.asarray(scaling.scale if scaling else [1.0] * features, np.float64)

    @classmethod
    def from_card(cls, card: ModelCard, max_runs: int) -> SeriesTask:
        """``ModelLoadError`` unless the graph's shapes fit the card's framing (or, for a
        card without a ``series`` section, some framing)."""
        in_shape, out_shape = card.input.shape[1:], card.output.shape[1:]
        if not all(isinstance(d, int) for d in [*in_shape, *out_shape]):
            raise ModelLoadError(
                f"series model shapes {card.input.shape} -> {card.output.shape} have free axes "
                "after N"
            )
        ins = [int(d) for d in in_shape]
        outs = [int(d) for d in out_shape]
        try:
            spec = card.series or infer_series(ins, outs)
        except ValueError as err:
            raise ModelLoadError(f"not a series model: {err}") from None
        problem = series_problem(spec, ins, outs)
        if problem is not None:
            raise ModelLoadError(f"the card's series section does not fit the graph: {problem}")
        return cls(spec, tuple(ins), tuple(outs), max_runs)

    # The Open Inference Protocol: the graph's tensors, one run.

    def rollout(
        self, run_batch: RunBatch, inputs: list[NDArray[np.float32]], steps: list[int]
    ) -> tuple[list[NDArray[np.float32]], list[int]]:
        """Every job's ``steps`` runs, batched: each run's forecast (model units) becomes
        the newest h rows of that job's window. Returns per job its runs' outputs joined
        along the time axis ((steps*h, ...)), and every run's size."""
        windows = np.stack(inputs)
        outputs: list[list[NDArray[np.float32]]] = [[] for _ in steps]
        sizes = []
        longest = max(steps)
        w, h = self.spec.window, self.spec.horizon
        for run in range(longest):
            active = [i for i, n in enumerate(steps) if n > run]
            predicted = run_batch(windows[active])
            sizes.append(len(active))
            for k, i in enumerate(active):
                outputs[i].append(predicted[k])
            if run + 1 < longest:
                # Only univariate models get here (``runs``): one feature, forecast itself.
                rows = windows[active].reshape(len(active), w, 1)
                fed = np.concatenate([rows, predicted.reshape(len(active), h, 1)], axis=1)
                windows[active] = fed[:, -w:].reshape(len(active), *self.item_shape)
        return [np.concatenate(out, axis=0) for out in outputs], sizes

    def check_batch_shape(self, shape: list[int], where: str) -> None:
        check_shape(shape, self.item_shape, where, batched=True)

    def model_input(self, array: NDArray[np.generic], where: str) -> NDArray[np.float32]:
        # The graph's own (scaled) values: any finite float32; no pixel reading of uint8.
        return to_model_values(array, where, None)

    def steps(self, horizon: int) -> int:
        if horizon != 1:
            raise InvalidInput(
                f"horizon: over the Open Inference Protocol this model answers one run "
                f"(h={self.spec.horizon} steps), got {horizon}; /v1/timeseries/forecast "
                "takes a horizon",
                location="horizon",
            )
        return 1

    def batch_output(self, outputs: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
        return outputs

    # KServe's time-series API: series in the client's units.

    def window(self, values: Any, kind: str, where: str) -> NDArray[np.float32]:
        """A client's series (``univariate``: numbers; ``multivariate``: rows of F
        numbers, one row per time step) -> the model input: its last W rows, scaled and
        folded. ``InvalidInput`` naming the index of the first bad value."""
        return self.fold(parse_series(values, kind, self.spec.features, where), where)

    def fold(self, rows: NDArray[np.float64], where: str) -> NDArray[np.float32]:
        """Parsed rows (T, F) -> the model input: the last W rows, scaled and folded."""
        if len(rows) < self.spec.window:
            s = self.spec
            raise InvalidInput(
                f"{where}: {len(rows)} time steps; the model needs the last "
                f"W={s.window} (S={s.subsequences} x K={s.subsequence_length})",
                location=where,
            )
        with np.errstate(over="ignore"):  # too large for float32: refused just below
            scaled = ((rows[-self.spec.window :] - self.offset) / self.scale).astype(np.float32)
        if not np.isfinite(scaled).all():
            raise InvalidInput(
                f"{where}: values too large for the model's float32 after scaling",
                location=where,
            )
        return scaled.reshape(self.item_shape)

    def runs(self, horizon: int) -> int:
        """Model runs for a forecast of ``horizon`` steps; ``InvalidInput`` if it cannot."""
        h = self.spec.horizon
        if horizon <= h:
            return 1
        if not self.spec.univariate:
            raise InvalidInput(
                f"options.horizon: this model forecasts h={h} steps at once from "
                f"{self.spec.features} feature(s) and forecasts feature(s) "
                f"{self.spec.targets}; a longer horizon would need the values of every "
                f"feature it does not forecast, so only univariate models roll out; ask "
                f"for at most {h}",
                location="options.horizon",
            )
        # Integer ceiling: a float division overflows on a horizon of hundreds of digits
        # (the protocol fuzzer sent one; it was a 500).
        runs = -(-horizon // h)
        if runs > self.max_runs:
            asked = f"{horizon} steps need {runs}" if runs < 10**9 else "more steps need more"
            raise InvalidInput(
                f"options.horizon: {asked} runs of h={h}; at most "
                f"{self.max_runs} runs ({self.max_runs * h} steps) are served",
                location="options.horizon",
            )
        return runs

    def forecast(self, output: NDArray[np.float32], horizon: int) -> NDArray[np.float64]:
        """One job's joined outputs -> (horizon, targets) in the client's units."""
        targets = self.spec.targets
        values = output.astype(np.float64).reshape(-1, len(targets))[:horizon]
        return values * self.scale[targets] + self.offset[targets]

    def scaled_targets(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Target values (..., targets) in the client's units -> the model's scaled units."""
        targets = self.spec.targets
        scaled: NDArray[np.float64] = (values - self.offset[targets]) / self.scale[targets]
        return scaled

    def quantiles(
        self, mean: NDArray[np.float64], asked: list[float]
    ) -> tuple[dict[str, NDArray[np.float64]] | None, str | None]:
        """Quantile forecasts from the card's validation residuals, or none and why."""
        table = self.spec.residual_quantiles
        if table is None:
            return None, "this model's card has no validation residuals; no quantiles"
        if len(mean) > self.spec.horizon:
            return None, f"quantiles are known for the first h={self.spec.horizon} steps only"
        missing = [q for q in asked if _key(q) not in table]
        if missing:
            known = ", ".join(sorted(table))
            raise InvalidInput(
                f"options.quantiles: {missing} not among this model's ({known})",
                location="options.quantiles",
            )
        return {
            _key(q): mean + np.asarray(table[_key(q)], np.float64)[: len(mean)] for q in asked
        }, None


def _key(q: float) -> str:
    return f"{q:g}"


def parse_series(values: Any, kind: str, features: int, where: str) -> NDArray[np.float64]:
    """(T, F) float64 from a univariate list of numbers (F must be 1) or a multivariate
    list of rows of F numbers; every value a finite JSON number (not a bool, not null)."""
    if not isinstance(values, list) or not values:
        raise InvalidInput(f"{where}: a non-empty list, got {_shown(values)}", location=where)
    if kind == "univariate":
        if features != 1:
            raise InvalidInput(
                f"{where}: the model takes {features} features per time step; send a "
                f"multivariate_time_series of rows of {features} numbers",
                location=where,
            )
        for i, v in enumerate(values):
            _check_number(v, f"{where}[{i}]")
        return np.asarray(values, np.float64).reshape(-1, 1)
    for i, row in enumerate(values):
        at = f"{where}[{i}]"
        if not isinstance(row, list):
            raise InvalidInput(
                f"{at}: a row of {features} numbers (one time step), got {_shown(row)}",
                location=at,
            )
        if len(row) != features:
            raise InvalidInput(
                f"{at}: {len(row)} values; every row needs the model's {features} features",
                location=at,
            )
        for j, v in enumerate(row):
            _check_number(v, f"{at}[{j}]")
    return np.asarray(values, np.float64)


def _check_number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: {_shown(value)} is not a number", location=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(
            f"{where}: {value} is not a finite number (fill missing values before sending)",
            location=where,
        )
    if isinstance(value, int) and abs(value) > 2**53:
        raise InvalidInput(f"{where}: {value} is too large", location=where)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
