"""Results tables read from the records the benchmarks and the evaluation wrote
(``bench/results/*.json``, the model cards, ``models/series/results.json``), so a page
shows what a run measured, never a copy that a later run leaves behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """A Markdown table; columns from ``right_from`` on are numbers, aligned right."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_line(machine: dict[str, Any]) -> str:
    """Where a record was measured, as its ``machine`` field says."""
    return (
        f"*Measured on: {machine['cpu']}, {machine['cores']} cores, {machine['provider']}, "
        f"onnxruntime {machine['onnxruntime']}.*\n"
    )


def suite_compute() -> str:
    """``bench.suite``'s graph timings: ms per sequence at each batch, best GFLOP/s."""
    record = _read(RESULTS / "results.json")
    matmul = record["matmul"]["gflops"]
    graphs: dict[str, dict[int, dict[str, float]]] = {}
    for row in record["compute"]["rows"]:
        graphs.setdefault(row["graph"], {})[row["batch"]] = row
    batches = sorted({row["batch"] for row in record["compute"]["rows"]})
    rows = []
    for graph, by_batch in graphs.items():
        best = max(r["gflops"] for r in by_batch.values())
        rows.append(
            [graph]
            + [f"{by_batch[b]['ms_per_sequence']:.1f}" if b in by_batch else "" for b in batches]
            + [f"{best:.0f} ({best / matmul:.0%})"]
        )
    header = ["graph"] + [f"batch {b} ms/seq" for b in batches] + ["best GFLOP/s (of matmul)"]
    return (
        _table(header, rows)
        + f"\n{machine_line(record['machine'])}*{record['date']}; numpy float32 matmul: "
        f"{matmul} GFLOP/s; one sequence is {record['compute']['gflop_per_sequence']} GFLOP.*\n"
    )


def suite_load() -> str:
    """``bench.suite``'s closed-loop load on the server, batching on and off."""
    record = _read(RESULTS / "results.json")
    rows = []
    for key in ("load_batching_on", "load_batching_off", "load_int8"):
        run = record[key]
        for row in run["rows"]:
            errors = row["requests"] - row["ok"] + row["transport_errors"]
            rows.append(
                [
                    str(run["model"]),
                    "on" if run["batching"] else "off",
                    str(row["concurrency"]),
                    f"{row['throughput_rps']:.2f}",
                    f"{row['p50_ms']:.1f}",
                    f"{row['p99_ms']:.1f}",
                    str(errors),
                ]
            )
    header = ["model", "batching", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors"]
    return _table(header, rows, right_from=2) + "\n" + machine_line(record["machine"])


def soak_windows() -> str:
    """``bench.soak``'s 30 s windows: answers, p99 and resident memory."""
    record = _read(RESULTS / "soak.json")
    windows = record["windows"]
    header = ["window"] + [str(i + 1) for i in range(len(windows))]
    rows = [
        ["answers (200)"] + [str(w["ok"]) for w in windows],
        ["p99 ms"] + [f"{w['p99_ms']:.0f}" for w in windows],
        ["RSS MB"] + [f"{w['rss_mb']:.1f}" for w in windows],
    ]
    return _table(header, rows) + "\n" + machine_line(record["machine"])


def rollouts() -> str:
    """``model_export rollouts``: window against state roll-outs, step by step."""
    record = _read(RESULTS / "rollouts.json")
    rows = [
        [
            str(w["step"]),
            f"{w['mse']:.5f}",
            f"{s['mse']:.5f}",
            f"{w['ssim']:.4f}",
            f"{s['ssim']:.4f}",
        ]
        for w, s in zip(record["window"], record["state"], strict=True)
    ]
    header = ["h", "MSE window", "MSE state", "SSIM window", "SSIM state"]
    return _table(header, rows) + (
        f"\n*{record['samples']} {record['split']}-split sequences, {record['model']}.*\n"
    )


_CARDS = {
    "convlstm": REPO / "models" / "convlstm.json",
    "convlstm_int8": REPO / "models" / "int8" / "convlstm_int8.json",
    "cnn_lstm": REPO / "models" / "cnn_lstm.json",
}
_NAMES = {
    "copy_last_frame": "copy last frame (baseline)",
    "convlstm": "ConvLSTM (served by default)",
    "convlstm_int8": "ConvLSTM, int8 graph (opt-in)",
    "cnn_lstm": "CNN-LSTM",
}


def quality() -> str:
    """The test-split scores ``model_export evaluate`` wrote into the model cards."""
    card = _read(_CARDS["convlstm"])
    metrics = card["evaluation"]["metrics"]
    baseline = metrics["copy_last_frame"]["mse"]
    rows = []
    for name, label in _NAMES.items():
        m = metrics[name]
        params = _read(_CARDS[name])["parameters"]["total"] if name in _CARDS else 0
        rows.append(
            [
                label,
                f"{params:,}",
                f"{m['mse']:.5f}",
                f"{m['mse'] / baseline:.2f}",
                f"{m['psnr_db']:.2f}",
                f"{m['ssim']:.3f}",
                f"{m['tint_error']:.4f}",
            ]
        )
    header = ["model", "parameters", "MSE", "× copy-last", "PSNR dB", "SSIM", "tint error"]
    evaluation = card["evaluation"]
    return _table(header, rows) + (
        f"\n*{evaluation['sequences']} {evaluation['split']}-split sequences, "
        f"{evaluation['target']}; {evaluation['machine']}.*\n"
    )


def out_of_distribution() -> str:
    """Test split beside the out-of-distribution set, from the cards' ``evaluation.ood``."""
    evaluation = _read(_CARDS["convlstm"])["evaluation"]
    test, ood = evaluation["metrics"], evaluation["ood"]["metrics"]
    rows = []
    for name, label in _NAMES.items():
        t, o = test[name], ood[name]
        base = name == "copy_last_frame"
        h3_test = "1.00" if base else f"{t['fed_back'][2]['mse_vs_copy_last']:.2f}"
        h3_ood = "1.00" if base else f"{o['fed_back'][2]['mse_vs_copy_last']:.2f}"
        rows.append(
            [
                label,
                f"{t['mse'] / test['copy_last_frame']['mse']:.2f}",
                f"{o['mse'] / ood['copy_last_frame']['mse']:.2f}",
                f"{t['ssim']:.3f}",
                f"{o['ssim']:.3f}",
                h3_test,
                h3_ood,
                f"{t['tint_error']:.4f}",
                f"{o['tint_error']:.4f}",
            ]
        )
    header = [
        "model",
        "× copy-last, test",
        "OOD",
        "SSIM, test",
        "OOD",
        "step 3 × copy-last, test",
        "OOD",
        "tint, test",
        "OOD",
    ]
    return _table(header, rows) + (
        f"\n*{evaluation['sequences']} test-split and {evaluation['ood']['sequences']} "
        f"out-of-distribution sequences; fed back: {evaluation['ood']['fed_back']}; "
        f"{evaluation['machine']}.*\n"
    )


def ood_breakdown() -> str:
    """The OOD set one factor at a time, from the ConvLSTM card's
    ``evaluation.ood_breakdown`` (``evaluate --ood-breakdown``)."""
    from model_export.frames.ood_breakdown import table

    return table(_read(_CARDS["convlstm"])["evaluation"]["ood_breakdown"])


def fed_back() -> str:
    """Fed-back steps from the cards: MSE as a fraction of copying the last frame."""
    metrics = _read(_CARDS["convlstm"])["evaluation"]["metrics"]
    steps = zip(
        metrics["convlstm"]["fed_back"],
        metrics["convlstm_int8"]["fed_back"],
        metrics["cnn_lstm"]["fed_back"],
        strict=True,
    )
    rows = [
        [
            str(c["step"]),
            f"{c['mse_vs_copy_last']:.3f}",
            f"{c['ssim']:.3f}",
            f"{c['tint_error']:.4f}",
            f"{q['mse_vs_copy_last']:.3f}",
            f"{n['mse_vs_copy_last']:.3f}",
            f"{n['ssim']:.3f}",
            f"{c['copy_last_mse']:.5f}",
            f"{c['copy_last_ssim']:.3f}",
            f"{c['copy_last_tint_error']:.4f}",
        ]
        for c, q, n in steps
    ]
    header = [
        "step",
        "ConvLSTM × copy-last",
        "SSIM",
        "tint",
        "int8 × copy-last",
        "CNN-LSTM × copy-last",
        "SSIM",
        "copy-last MSE",
        "copy-last SSIM",
        "copy-last tint",
    ]
    return _table(header, rows, right_from=0)


def series() -> str:
    """``model_export series``: rolling-origin scores of the series models and baselines."""
    record = _read(REPO / "models" / "series" / "results.json")
    rows = [
        [
            row["data"],
            row["model"],
            str(row["params"]),
            f"{row['mase'][0]:.3f}",
            f"{row['mase'][-1]:.3f}",
            f"{row['mean_mase']:.3f}",
            f"{row['mean_smape']:.2f}",
            f"{row['latency_ms']:.3f}",
        ]
        for row in record["rows"]
    ]
    horizon = len(record["rows"][0]["mase"])
    header = [
        "data",
        "model",
        "params",
        "MASE h=1",
        f"MASE h={horizon}",
        "mean MASE",
        "mean sMAPE %",
        "latency ms",
    ]
    return _table(header, rows, right_from=2)


def _sim(table: Callable[[dict[str, Any]], list[str]]) -> Callable[[], str]:
    """One of ``bench.sim``'s tables, as the benchmark writes it, and where it was measured."""

    def render() -> str:
        from bench import sim

        record = _read(RESULTS / "sim.json")
        return "\n".join(table(record)) + f"\n\n*{sim.machine_line(record)}*\n"

    render.__doc__ = table.__doc__
    return render


def _sim_tables() -> dict[str, Callable[[], str]]:
    from bench import sim

    return {
        "sim-ideal": _sim(sim.ideal_table),
        "sim-change": _sim(sim.change_table),
        "sim-paths": _sim(sim.paths_table),
    }


def transports() -> str:
    """``bench.transports``: gRPC beside REST binary and JSON, as the benchmark writes it
    (its machine and load average first, then the table)."""
    from bench import transports as bench_transports

    record = _read(RESULTS / "transports.json")
    return bench_transports.markdown(record).split("\n", 2)[2]


def _train_stream(table: str) -> Callable[[], str]:
    def render() -> str:
        """``bench.train_stream``'s tables, as the benchmark writes them."""
        from bench import train_stream as bench_train_stream

        record = _read(RESULTS / "train_stream.json")
        return str(getattr(bench_train_stream, table)(record))

    return render


TABLES: dict[str, Callable[[], str]] = {
    **_sim_tables(),
    "suite-compute": suite_compute,
    "suite-load": suite_load,
    "soak": soak_windows,
    "rollouts": rollouts,
    "quality": quality,
    "fed-back": fed_back,
    "out-of-distribution": out_of_distribution,
    "ood-breakdown": ood_breakdown,
    "series": series,
    "transports": transports,
    "train-stream-memory": _train_stream("memory_table"),
    "train-stream-throughput": _train_stream("throughput_table"),
}
