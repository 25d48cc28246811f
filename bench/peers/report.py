"""The pure part of ``make bench-peers``: per-round cells in, the summary table, the
targets, the Markdown and the plot out. Every ratio pairs two figures of the same
round, so a shared machine's drift between rounds cancels out."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RAW = "raw onnxruntime"
PROJECT_JSON = "this project, V2 JSON"
PROJECT_BINARY = "this project, V2 binary"
FLOOR_JSON = "bare endpoint, V2 JSON"
FLOOR_BINARY = "bare endpoint, V2 binary"
MLSERVER = "MLServer, V2 JSON"
KSERVE = "KServe, V2 JSON"
BENTOML = "BentoML, own JSON"
FIELDS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")
# The targets are read at this concurrency (the middle one of the default run).
TARGET_CONCURRENCY = 8
# convlstm "unchanged": the service keeps this share of raw onnxruntime's req/s.
NOISE_FLOOR = 0.9


def _paired(
    cells: Iterable[dict[str, Any]], model: str, concurrency: int, a: str, b: str, field: str
) -> list[float]:
    """``a``'s ``field`` over ``b``'s, one ratio per round where both were measured."""
    by: dict[tuple[int, str], float] = {}
    for c in cells:
        if c["model"] == model and c["concurrency"] == concurrency and c["arm"] in (a, b):
            by[c["round"], c["arm"]] = float(c[field])
    rounds = sorted({r for r, _ in by})
    return [by[r, a] / by[r, b] for r in rounds if (r, a) in by and (r, b) in by and by[r, b] > 0]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, concurrency and arm: the median over rounds of each figure,
    and the median of the per-round ratio of req/s to raw onnxruntime's."""
    keys: list[tuple[str, int, str]] = []
    for c in cells:
        key = (c["model"], c["concurrency"], c["arm"])
        if key not in keys:
            keys.append(key)
    models = list(dict.fromkeys(k[0] for k in keys))
    keys.sort(key=lambda k: (models.index(k[0]), k[1], k[2] != RAW))
    rows = []
    for model, concurrency, arm in keys:
        mine = [
            c
            for c in cells
            if (c["model"], c["concurrency"], c["arm"]) == (model, concurrency, arm)
        ]
        row: dict[str, Any] = {"model": model, "concurrency": concurrency, "arm": arm}
        for f in FIELDS:
            row[f] = round(_median([float(c[f]) for c in mine]), 3)
        row["x_raw"] = round(_median(_paired(cells, model, concurrency, arm, RAW, "rps")), 3)
        row["rounds"] = len(mine)
        row["errors"] = sum(int(c["errors"]) for c in mine)
        rows.append(row)
    return rows


def _figure(
    cells: list[dict[str, Any]], model: str, concurrency: int, arm: str, field: str
) -> float:
    return _median(
        [
            float(c[field])
            for c in cells
            if (c["model"], c["concurrency"], c["arm"]) == (model, concurrency, arm)
        ]
    )


def _target(what: str, value: float, bound: float, at_most: bool, unit: str) -> dict[str, Any]:
    if value != value:  # NaN: that arm did not run
        return {"target": what, "measured": "not measured", "met": None}
    met = value <= bound if at_most else value >= bound
    return {"target": what, "measured": f"{value:.2f}{unit}", "met": met}


def targets(
    cells: list[dict[str, Any]], concurrency: int = TARGET_CONCURRENCY
) -> list[dict[str, Any]]:
    """The overhead targets on cnn_lstm at ``concurrency`` (medians over rounds; ratios
    paired within a round), and convlstm's share of raw onnxruntime at every concurrency."""
    cpu = "cpu_ms_per_request"
    c = concurrency
    out = [
        _target(
            f"cnn_lstm: V2 JSON server CPU per request ≤ 10 ms (concurrency {c})",
            _figure(cells, "cnn_lstm", c, PROJECT_JSON, cpu),
            10.0,
            True,
            " ms",
        ),
        _target(
            f"cnn_lstm: V2 binary server CPU per request ≤ 3 ms (concurrency {c})",
            _figure(cells, "cnn_lstm", c, PROJECT_BINARY, cpu),
            3.0,
            True,
            " ms",
        ),
        _target(
            f"cnn_lstm: V2 binary req/s ≥ 0.4× raw onnxruntime (concurrency {c})",
            _median(_paired(cells, "cnn_lstm", c, PROJECT_BINARY, RAW, "rps")),
            0.4,
            False,
            "×",
        ),
        _target(
            f"cnn_lstm: V2 binary CPU per request ≤ 2× the bare endpoint's (concurrency {c})",
            _median(_paired(cells, "cnn_lstm", c, PROJECT_BINARY, FLOOR_BINARY, cpu)),
            2.0,
            True,
            "×",
        ),
        _target(
            f"cnn_lstm: V2 JSON req/s ≥ 1.5× MLServer's (concurrency {c})",
            _median(_paired(cells, "cnn_lstm", c, PROJECT_JSON, MLSERVER, "rps")),
            1.5,
            False,
            "×",
        ),
    ]
    concurrencies = sorted({int(x["concurrency"]) for x in cells if x["model"] == "convlstm"})
    shares = [
        _median(_paired(cells, "convlstm", k, arm, RAW, "rps"))
        for k in concurrencies
        for arm in (PROJECT_JSON, PROJECT_BINARY)
    ]
    out.append(
        _target(
            f"convlstm unchanged: this project's req/s ≥ {NOISE_FLOOR}× raw onnxruntime "
            "(lowest over JSON, binary and every concurrency)",
            min(shares) if shares else float("nan"),
            NOISE_FLOOR,
            False,
            "×",
        )
    )
    return out


def _met(met: bool | None) -> str:
    return {True: "yes", False: "no", None: "not measured"}[met]


def table(rows: list[dict[str, Any]], model: str) -> str:
    lines = [
        "| concurrency | server | req/s | × raw onnxruntime | p50 ms | p99 ms | server CPU ms/req | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["model"] != model:
            continue
        lines.append(
            f"| {r['concurrency']} | {r['arm']} | {r['rps']:.1f} | {r['x_raw']:.2f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_ms_per_request']:.2f} "
            f"| {r['errors']} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    loads = [b["load1"] for b in report["load_seen"]]
    busy = [b["busy_cores"] for b in report["load_seen"]]
    parts = [
        "# This project's server beside MLServer, KServe and BentoML (`make bench-peers`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, shared with other work during the run; "
        f"{m['provider']}, Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Session everywhere: {s['session']}. {s['rounds']} interleaved rounds; "
        f"{s['requests']} requests per cell ({s['slow_requests']} for convlstm, at least "
        "the concurrency); figures are medians over rounds, ratios paired within a round.",
        f"Load before each block: 1-minute load average {min(loads, default=0):.2f}–"
        f"{max(loads, default=0):.2f}, busy cores {min(busy, default=0):.2f}–"
        f"{max(busy, default=0):.2f} (of {m['cores']}).",
        f"Every answer equals raw onnxruntime's within {s['answer_tolerance']} "
        f"(largest difference {max(report['answers_max_abs_diff'].values(), default=0):.2g}).",
        "Server CPU is the server's whole process tree (user + system, `/proc`) over the "
        "requests it answered; raw onnxruntime's is this process's.",
    ]
    for model in s["models"]:
        parts += ["", f"## {model}", "", table(report["summary"], model)]
    parts += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    parts += [f"| {t['target']} | {t['measured']} | {_met(t['met'])} |" for t in report["targets"]]
    return "\n".join(parts) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per model: req/s over raw onnxruntime, and server CPU per request, by
    concurrency and server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    # One colour per server across every panel, whichever servers a model has.
    colours = {
        arm: f"C{i}"
        for i, arm in enumerate(dict.fromkeys(r["arm"] for r in rows if r["arm"] != RAW))
    }
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.2 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model and r["arm"] != RAW]
        arms = list(dict.fromkeys(r["arm"] for r in mine))
        levels = sorted({r["concurrency"] for r in mine})
        width = 0.8 / max(len(arms), 1)
        for j, arm in enumerate(arms):
            for k, (field, ax) in enumerate(
                (("x_raw", axes[i][0]), ("cpu_ms_per_request", axes[i][1]))
            ):
                values = [
                    next((r[field] for r in mine if r["arm"] == arm and r["concurrency"] == c), 0)
                    for c in levels
                ]
                xs = [x + j * width for x in range(len(levels))]
                ax.bar(xs, values, width, color=colours[arm], label=arm if k == 0 else None)
        for ax, label in zip(
            axes[i],
            ("req/s ÷ raw onnxruntime (same round)", "server CPU ms / request"),
            strict=True,
        ):
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(levels))])
            ax.set_xticklabels([f"concurrency {c}" for c in levels])
            ax.set_title(f"{model}: {label}")
        axes[i][0].axhline(1.0, color="grey", linewidth=0.8)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
