"""Train, export and compare the series models on real data:
``python -m model_export series --data co2 sunspots macro --models models/series``.

For each data set: the four networks of ``series_models`` trained by one loop
(``fit_series``) on the same windows, scaled per feature by the training rows' mean and
standard deviation; each exported with ``export --task series`` (the card records the
framing, the scaling, the frequency and the validation residuals' quantiles); then every
network and the baselines evaluated by rolling origin over the held-out tail; the
results written to ``results.json`` and ``RESULTS.md`` beside the models.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convlstm_card import SeriesScaling, card_path, read_card, write_card
from model_export.series.data import SeriesData, load
from model_export.series.evaluate import (
    Sarimax,
    Scores,
    naive,
    scores,
    seasonal_naive,
)
from model_export.series.models import SERIES_MODELS, build_series_model, input_shape

VALIDATION_SHARE = 0.15
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
LATENCY_RUNS = 200


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Row:
    data: str
    model: str
    params: int
    scores: Scores
    latency_ms: float
    latency_what: str
    train_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "model": self.model,
            "params": self.params,
            "mase": self.scores.mase,
            "smape": self.scores.smape,
            "mean_mase": self.scores.mean_mase,
            "mean_smape": self.scores.mean_smape,
            "latency_ms": self.latency_ms,
            "latency": self.latency_what,
            "train_seconds": self.train_seconds,
        }


def fit_series(
    model: Any,
    train: tuple[NDArray[np.float32], NDArray[np.float32]],
    validation: tuple[NDArray[np.float32], NDArray[np.float32]],
    cfg: TrainConfig,
) -> dict[str, Any]:
    """The one training loop of every series network: Adam on the mean squared error,
    early stopping on the validation split with its best weights kept."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mse")
    stop = keras.callbacks.EarlyStopping(
        patience=cfg.patience, restore_best_weights=True, monitor="val_loss"
    )
    history = model.fit(
        *train,
        validation_data=validation,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=[stop],
        verbose=0,
    )
    losses = history.history["val_loss"]
    return {"epochs_run": len(losses), "best_val_mse_scaled": float(min(losses))}


def run(names: list[str], models_dir: Path, cfg: TrainConfig, samples: Path | None) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        rows.extend(run_one(load(name), models_dir, cfg))
    write_results(rows, [load(n) for n in names], models_dir, cfg)
    if samples is not None:
        write_samples([load(n) for n in names], samples)
    return rows


def write_samples(datasets: list[SeriesData], path: Path) -> None:
    """The demo page's series view: per data set, a stretch of history ending inside the
    held-out tail (so no model trained on what follows) and the truth after it."""
    samples = {}
    for data in datasets:
        origin = data.test_start + data.test_steps // 2
        first = max(0, origin - 4 * data.window)
        history = data.values[first:origin]
        truth = data.target_values[origin : origin + 3 * data.horizon]
        samples[data.name] = {
            "source": data.source,
            "frequency": data.frequency,
            "features": data.feature_names,
            "target": data.feature_names[data.target],
            "horizon": data.horizon,
            "start_timestamp": data.dates[first],
            "history": history[:, 0].tolist() if data.features == 1 else history.tolist(),
            "truth": truth.tolist(),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(samples, indent=1) + "\n")


def run_one(data: SeriesData, models_dir: Path, cfg: TrainConfig) -> list[Row]:
    train_origins = data.origins(0, data.test_start)
    n_val = max(1, int(len(train_origins) * VALIDATION_SHARE))
    fit_o, val_o = train_origins[:-n_val], train_origins[-n_val:]
    test_o = data.origins(data.test_start, len(data.values))
    seen = data.values[: data.test_start]
    mean, std = seen.mean(axis=0), seen.std(axis=0)
    t = data.target

    def scaled(origins: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        x, y = data.windows(origins)
        return (
            ((x - mean) / std).astype(np.float32),
            ((y - mean[t]) / std[t]).astype(np.float32),
        )

    x_fit, y_fit = scaled(fit_o)
    x_val, y_val = scaled(val_o)
    x_test, _ = scaled(test_o)
    _, truth = data.windows(test_o)
    _, val_truth = data.windows(val_o)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for kind in SERIES_MODELS:
            shape = input_shape(kind, data.subsequences, data.subsequence_length, data.features)

            def fold(x: NDArray[np.float32], shape: tuple[int, ...] = shape) -> NDArray[np.float32]:
                return x.reshape(len(x), *shape)

            model = build_series_model(
                kind,
                data.subsequences,
                data.subsequence_length,
                data.features,
                data.horizon,
                t,
            )
            start = time.perf_counter()
            record = fit_series(model, (fold(x_fit), y_fit), (fold(x_val), y_val), cfg)
            seconds = time.perf_counter() - start
            name = f"{data.name}_{kind}"
            keras_path = Path(work) / f"{name}.keras"
            model.save(keras_path)
            np.savez(Path(work) / f"{name}.npz", x=fold(x_val))
            onnx_path = export(
                data, name, keras_path, Path(work) / f"{name}.npz", models_dir, mean, std
            )
            session = _session(onnx_path)
            val_forecast = _unscale(_run(session, fold(x_val)), mean[t], std[t])
            forecast = _unscale(_run(session, fold(x_test)), mean[t], std[t])
            score = scores(data, forecast, truth)
            latency = _latency(session, fold(x_test[:1]))
            rows.append(
                Row(
                    data.name,
                    kind,
                    int(model.count_params()),
                    score,
                    latency,
                    "onnxruntime, batch 1",
                    seconds,
                )
            )
            residuals = val_truth - val_forecast
            _complete_card(
                onnx_path, data, cfg, record, seconds, score, residuals, fit_o, val_o, test_o
            )
    rows.extend(_baselines(data, test_o, truth))
    return rows


def export(
    data: SeriesData,
    name: str,
    keras_path: Path,
    windows: Path,
    models_dir: Path,
    mean: NDArray[np.float64],
    std: NDArray[np.float64],
) -> Path:
    """``export --keras --task series`` with the standard scaling of the training rows."""
    from model_export.export.any_model import SeriesOptions, export_keras

    options = SeriesOptions(
        frequency=data.frequency,
        targets=[data.target],
        feature_names=data.feature_names,
        scaling=SeriesScaling(kind="standard", offset=mean.tolist(), scale=std.tolist()),
    )
    result = export_keras(
        keras_path,
        name=name,
        models_dir=models_dir,
        task="series",
        value_range=(-4.0, 4.0),
        data=windows,
        series=options,
    )
    return result.onnx_path


def _complete_card(
    onnx_path: Path,
    data: SeriesData,
    cfg: TrainConfig,
    record: dict[str, Any],
    seconds: float,
    score: Scores,
    residuals: NDArray[np.float64],
    fit_o: NDArray[np.int64],
    val_o: NDArray[np.int64],
    test_o: NDArray[np.int64],
) -> None:
    """The card with what training knew: data, splits, training, held-out scores, and the
    validation residuals' quantiles (per step, client units) for quantile forecasts."""
    card = read_card(card_path(onnx_path))
    assert card.series is not None
    table = {f"{q:g}": [[float(v)] for v in np.quantile(residuals, q, axis=0)] for q in QUANTILES}
    series = card.series.model_copy(update={"residual_quantiles": table})
    card = card.model_copy(
        update={
            "series": series,
            "data": {
                "source": data.source,
                "rows": len(data.values),
                "features": data.feature_names,
                "target": data.feature_names[data.target],
                "window": f"W={data.window} rows (S={data.subsequences} x K={data.subsequence_length})",
                "splits": {
                    "fit_origins": [int(fit_o[0]), int(fit_o[-1])],
                    "validation_origins": [int(val_o[0]), int(val_o[-1])],
                    "test_origins": [int(test_o[0]), int(test_o[-1])],
                },
            },
            "normalisation": "standard per feature (training rows' mean and std), applied by "
            "the server from series.scaling: clients send and receive their own units",
            "training": {**record, "seconds": round(seconds, 1), **cfg.__dict__},
            "evaluation": {
                "method": "rolling origin over the held-out tail, one forecast per origin",
                "origins": len(test_o),
                "mase": score.mase,
                "smape_percent": score.smape,
                "mase_season": data.season,
            },
        }
    )
    write_card(card_path(onnx_path), card)


def _baselines(
    data: SeriesData, origins: NDArray[np.int64], truth: NDArray[np.float64]
) -> list[Row]:
    rows = [
        Row(
            data.name,
            "naive",
            0,
            scores(data, naive(data, origins), truth),
            *_timed(lambda: naive(data, origins[:1])),
        ),
        Row(
            data.name,
            f"seasonal_naive (m={data.season})",
            0,
            scores(data, seasonal_naive(data, origins), truth),
            *_timed(lambda: seasonal_naive(data, origins[:1])),
        ),
    ]
    sarimax = Sarimax(data)
    start = time.perf_counter()
    sarimax.fit()
    seconds = time.perf_counter() - start
    forecast = sarimax.forecast(origins)
    # The iterated state forecast is the library's own forecast from the history.
    check = sarimax.forecast_from_history(int(origins[0]))
    assert np.allclose(forecast[0], check, rtol=1e-6, atol=1e-6), (forecast[0], check)
    times = []
    for t in origins[:5]:
        begin = time.perf_counter()
        sarimax.forecast_from_history(int(t))
        times.append(time.perf_counter() - begin)
    rows.append(
        Row(
            data.name,
            "sarimax",
            sarimax.params,
            scores(data, forecast, truth),
            1000 * float(np.median(times)),
            "statsmodels, filter over the history + forecast",
            seconds,
        )
    )
    return rows


def _timed(fn: Any) -> tuple[float, str]:
    times = []
    for _ in range(LATENCY_RUNS):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return 1000 * float(np.median(times)), "numpy"


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, x: NDArray[np.float32]) -> NDArray[np.float64]:
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0], np.float64)


def _unscale(y: NDArray[np.float64], mean: float, std: float) -> NDArray[np.float64]:
    return y * std + mean


def _latency(session: Any, x: NDArray[np.float32]) -> float:
    name = session.get_inputs()[0].name
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(LATENCY_RUNS):
        begin = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - begin)
    return 1000 * float(np.median(times))


def write_results(
    rows: list[Row], datasets: list[SeriesData], models_dir: Path, cfg: TrainConfig
) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    payload = {"config": cfg.__dict__, "rows": [r.to_json() for r in rows]}
    (models_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (models_dir / "RESULTS.md").write_text(results_markdown(rows, datasets))


def results_markdown(rows: list[Row], datasets: list[SeriesData]) -> str:
    lines = [
        "# Series models: rolling-origin evaluation on held-out tails",
        "",
        "Written by `python -m model_export series`; every row forecasts h steps from "
        "every origin in the held-out tail with the history before it only. MASE is scaled "
        "by the in-sample seasonal naive error (period m); sMAPE in percent. Latency: "
        "median of one forecast (batch 1, one thread), in the same run on the same machine.",
        "",
    ]
    for data in datasets:
        mine = [r for r in rows if r.data == data.name]
        lstm = next((r for r in mine if r.model == "lstm"), None)
        best = min(mine, key=lambda r: r.scores.mean_mase)
        lines += [
            f"## {data.name}: {data.source}",
            "",
            f"Window W={data.window} ({data.subsequences} x {data.subsequence_length}), "
            f"h={data.horizon} ({data.frequency}s), F={data.features}, target "
            f"{data.feature_names[data.target]}, {data.test_steps} held-out rows, MASE m={data.season}. "
            f"Best mean MASE: **{best.model}**.",
            "",
            "| model | params | "
            + " | ".join(f"MASE h={i + 1}" for i in range(data.horizon))
            + " | mean MASE | mean sMAPE % | latency ms | x LSTM |",
            "|---|---:|" + "---:|" * data.horizon + "---:|---:|---:|---:|",
        ]
        for r in mine:
            ratio = f"{r.latency_ms / lstm.latency_ms:.2f}" if lstm else ""
            lines.append(
                f"| {r.model} | {r.params} | "
                + " | ".join(f"{v:.3f}" for v in r.scores.mase)
                + f" | {r.scores.mean_mase:.3f} | {r.scores.mean_smape:.2f} | "
                f"{r.latency_ms:.3f} | {ratio} |"
            )
        lines.append("")
    return "\n".join(lines)
