"""The infer job's record as markdown, with the issue's targets marked met or not.

python -m gpu.report infer.json   # prints the markdown
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PARITY_FP32 = 1e-4
PEAK_SHARE = 0.25
SERVICE_SHARE = 0.8
PEAKS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4}


def _peak(gpu: str) -> float | None:
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in gpu:
            return PEAKS[key]
    return None


def _points(rows: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"b{r['batch']}: "
        + (f"{r['seq_per_s']:,.0f}/s" if "seq_per_s" in r else r.get("error", "?"))
        for r in rows
    )


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if "seq_per_s" in r]
    return max(ok, key=lambda r: r["seq_per_s"]) if ok else None


def render(d: dict[str, Any], gflop: float) -> str:
    m = d.get("machine", {})
    gpu = m.get("gpu", "no GPU (nvidia-smi unavailable)")
    dry = d.get("plan", {}).get("dry_run")
    lines = [
        "# GPU inference record" + (" (DRY RUN on the CPU provider: no GPU figure)" if dry else ""),
        "",
        f"GPU: {gpu}, driver {m.get('driver', '?')}, {m.get('memory', '?')}; "
        f"onnxruntime {m.get('onnxruntime', '?')}; {m.get('cpu_cores', '?')} CPU cores; "
        f"Python {m.get('python', '?')}. Job: {d.get('job_seconds', '?')} s. "
        f"Nominal work: {gflop:.1f} GFLOP per 15-frame ConvLSTM sequence.",
        "",
    ]
    for name, section in d.items():
        if isinstance(section, dict) and "error" in section:
            lines.append(f"- **{name} failed**: {section['error']}")
    lines += ["", "## Parity against the CPU provider (same inputs, batch 4)", ""]
    lines += ["| graph | provider | max abs diff | mean abs diff |", "| --- | --- | ---: | ---: |"]
    for name, r in d.get("parity", {}).items():
        if isinstance(r, dict) and "max_abs_diff" in r:
            lines.append(
                f"| {name} | {r['provider']} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} |"
            )

    lines += ["", "## Raw onnxruntime, sequences per second", ""]
    lines += ["| graph | mode | per batch size | best TFLOP/s |", "| --- | --- | --- | ---: |"]
    best_fp16 = 0.0
    best_fp32 = 0.0

    def row(graph: str, mode: str, rows: list[dict[str, Any]]) -> None:
        nonlocal best_fp16, best_fp32
        b = _best(rows)
        tf = b.get("tflops") if b else None
        if tf is not None and graph == "convlstm":
            if "fp16" in mode:
                best_fp16 = max(best_fp16, tf)
            else:
                best_fp32 = max(best_fp32, tf)
        lines.append(f"| {graph} | {mode} | {_points(rows)} | {tf if tf is not None else '—'} |")

    for name, r in d.get("throughput_fp32", {}).items():
        if isinstance(r, dict) and "points" in r:
            row(name, "fp32" if "int8" not in name else "int8 (QDQ)", r["points"])
    if "points" in d.get("fp16", {}):
        row("convlstm", "fp16", d["fp16"]["points"])
    for label in ("fp32", "fp16"):
        if label in d.get("io_binding", {}):
            row("convlstm", f"{label} + IO binding", d["io_binding"][label])
        if label in d.get("cuda_graphs", {}):
            row("convlstm", f"{label} + CUDA graph", d["cuda_graphs"][label])
    if "points" in d.get("tensorrt", {}):
        row("convlstm", "fp16 TensorRT", d["tensorrt"]["points"])
    for name in ("cuda_graphs", "tensorrt"):
        if "skipped" in d.get(name, {}):
            lines.append(f"\n{name}: skipped — {d[name]['skipped']}")
    if "parity_vs_fp32" in d.get("fp16", {}):
        p = d["fp16"]["parity_vs_fp32"]
        lines.append(
            f"\nfp16 against fp32 on the same provider (batch 8): max abs diff {p['max_abs_diff']:.2e}, "
            f"mean {p['mean_abs_diff']:.2e}."
        )

    svc = d.get("service", {})
    raw = svc.get("raw_onnxruntime_best_seq_per_s")
    if "load" in svc:
        lines += [
            "",
            "## The service (Open Inference Protocol, binary tensors, batch 1 per request)",
            "",
        ]
        ready = svc.get("readyz", {})
        lines.append(
            f"/readyz: provider {ready.get('provider')}, fallback {ready.get('fallback')}, "
            f"models {ready.get('models')}; settings {json.dumps(svc.get('settings', {}))}"
        )
        lines += [
            "",
            "| concurrency | requests/s | p50 ms | p99 ms | statuses | / raw best |",
            "| ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for r in svc["load"]:
            lines.append(
                f"| {r['concurrency']} | {r['req_per_s']:,.1f} | {r['p50_ms']} | {r['p99_ms']} "
                f"| {r['statuses']} | {r['ratio_to_raw_best']} |"
            )
        lines.append(
            f"\nRaw onnxruntime's best (fp32, served graph, any batch): {raw:,.1f} sequences/s."
        )

    variants = d.get("service_variants", {})
    if any(isinstance(v, dict) and "settings" in v for v in variants.values()):
        lines += ["", "## The service, one suspect removed at a time", ""]
        lines += ["| variant | settings | requests/s | p50 ms | p99 ms | statuses |"]
        lines += ["| --- | --- | ---: | ---: | ---: | --- |"]
        for label, v in variants.items():
            if not isinstance(v, dict) or "settings" not in v:
                continue
            if "error" in v:
                lines.append(f"| {label} | {v['settings']} | failed: {v['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {label} (concurrency {v['concurrency']}) | {v['settings']} | {v['req_per_s']:,.1f} "
                f"| {v['p50_ms']} | {v['p99_ms']} | {v['statuses']} |"
            )

    lines += ["", "## Targets", ""]
    parity = [
        r for r in d.get("parity", {}).values() if isinstance(r, dict) and "max_abs_diff" in r
    ]
    fp32_parity = [
        r["max_abs_diff"]
        for n, r in d.get("parity", {}).items()
        if isinstance(r, dict) and "max_abs_diff" in r and "int8" not in n
    ]
    if parity:
        worst = max(fp32_parity) if fp32_parity else float("nan")
        lines.append(
            f"- parity fp32 ≤ {PARITY_FP32:g}: worst {worst:.2e} — **{'met' if worst <= PARITY_FP32 else 'not met'}**"
        )
    peak = _peak(gpu)
    if peak and not dry:
        share = best_fp16 / peak
        lines.append(
            f"- ≥ {PEAK_SHARE:.0%} of the fp16 dense peak ({peak:g} TFLOP/s): best fp16 {best_fp16:.1f} TFLOP/s "
            f"= {share:.1%} — **{'met' if share >= PEAK_SHARE else 'not met'}** (best fp32 {best_fp32:.1f} TFLOP/s)"
        )
    at64 = [r for r in svc.get("load", []) if r["concurrency"] == 64]
    if at64 and raw:
        ratio = at64[0]["req_per_s"] / raw
        lines.append(
            f"- service at concurrency 64 ≥ {SERVICE_SHARE:.0%} of raw best: {ratio:.1%} — **{'met' if ratio >= SERVICE_SHARE else 'not met'}**"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    d = json.loads(Path(args[0]).read_text())
    gflop = float(args[1]) if len(args) > 1 else 35.8
    print(render(d, gflop), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
