"""Which factor of the out-of-distribution set costs a model most: the OOD set taken
apart one factor at a time (``evaluate --ood-breakdown``).

``IN_FAMILY`` is the committed models' training data (``data``'s generator: the
held-out scikit-learn digits at 16 px, 1-2 per sequence, 1-3 px per frame, bouncing off
the edges, tinted, drawn by ``max`` on black) written as a ``SceneSpec``, so the scene
renderer draws it. Each factor then takes the OOD set's value for one group of fields
and keeps the others: the glyphs, the speeds, the bounce rules, the glyph count, the
occluding bar, the background, the colours and the compositing. Every set is scored
like ``evaluate``'s (next frame and ``FED_BACK`` fed-back steps against copying the last
frame), beside the test split itself and the whole OOD set, so a row reads against the
in-family row above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_export.frames import data
from model_export.frames.evaluate import BASELINE, Predictor, horizon_split, mse, rollout, scores
from model_export.frames.ood import OOD, OOD_SEED
from model_export.frames.scenes import SceneSpec, render
from model_export.host import describe_machine

# Fed-back steps scored per set (the horizon-3 target).
FED_BACK = 3

IN_FAMILY = SceneSpec(
    name="training family (data's generator as a scene spec)",
    sklearn_pool="test",
    sklearn_sizes=(16,),
    fonts=(),
    font_sizes=(),
    font_share=0.0,
    digits=(1, 2),
    speed=(1, 3),
    bounces=("reflect",),
    backgrounds=("black",),
    occlusion=0.0,
    seeds=(("breakdown", OOD_SEED),),
    colours="tint",
    blend="max",
)

# Each factor: the fields it takes from the OOD set.
FACTORS: dict[str, tuple[str, ...]] = {
    "glyphs": ("sklearn_sizes", "fonts", "font_sizes", "font_share"),
    "speed": ("speed",),
    "bounce rules": ("bounces",),
    "glyph count": ("digits",),
    "occlusion": ("occlusion",),
    "background": ("backgrounds",),
    "colours": ("colours",),
    "compositing": ("blend",),
}


def factor_spec(factor: str) -> SceneSpec:
    """``IN_FAMILY`` with ``factor``'s fields taken from the OOD set."""
    changes = {f: getattr(OOD, f) for f in FACTORS[factor]}
    return dataclasses.replace(IN_FAMILY, name=f"in family, OOD {factor}", **changes)


def score_set(
    models: Mapping[str, Predictor], x: NDArray[np.float32], future: NDArray[np.float32]
) -> dict[str, Any]:
    """Per model: next-frame MSE as a fraction of copy-last's, SSIM, tint error, and
    fed-back step ``FED_BACK``'s MSE as a fraction of copy-last's at that step; copy-last's
    own MSE and SSIM. One roll-out per model: its first step is the next frame."""
    last = x[:, -1]
    base = scores(last, future[:, 0])
    base_far = float(mse(last, future[:, FED_BACK - 1]).mean())
    out: dict[str, Any] = {BASELINE: {"mse": base["mse"], "ssim": base["ssim"]}}
    for name, model in models.items():
        fed = rollout(model, x, FED_BACK)
        nxt = scores(fed[:, 0], future[:, 0])
        out[name] = {
            "mse_vs_copy_last": nxt["mse"] / base["mse"],
            "ssim": nxt["ssim"],
            "tint_error": nxt["tint_error"],
            f"step_{FED_BACK}_mse_vs_copy_last": float(
                mse(fed[:, FED_BACK - 1], future[:, FED_BACK - 1]).mean()
            )
            / base_far,
        }
    return out


def breakdown(
    models: Mapping[str, Predictor], samples: int = 64, *, runtime: str = "onnxruntime CPU"
) -> dict[str, Any]:
    """Scores of every model on the test split, the in-family set, each one-factor set
    and the whole OOD set, ``samples`` sequences each (the same seed for every set)."""
    frames = data.FRAMES + FED_BACK
    sets: list[tuple[str, dict[str, Any], Any]] = [
        ("test split", {}, horizon_split(samples, FED_BACK)),
        ("in family", {}, render(IN_FAMILY, samples, seed=OOD_SEED, frames=frames)),
    ]
    for factor, fields in FACTORS.items():
        seqs = render(factor_spec(factor), samples, seed=OOD_SEED, frames=frames)
        changes = {f: dataclasses.asdict(OOD)[f] for f in fields}
        sets.append((factor, changes, seqs))
    sets.append(("all (the OOD set)", {}, render(OOD, samples, seed=OOD_SEED, frames=frames)))
    rows = []
    for label, changes, drawn in sets:
        if isinstance(drawn, tuple):
            x, future = drawn
        else:
            x, future = drawn[:, : data.FRAMES], drawn[:, data.FRAMES :]
        rows.append(
            {
                "set": label,
                "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
                "metrics": score_set(models, x, future),
            }
        )
    return {
        "sequences_per_set": samples,
        "seed": OOD_SEED,
        "target": "frame 16 given frames 1-15",
        "fed_back_step": FED_BACK,
        "in_family": IN_FAMILY.as_dict(),
        "ood": OOD.as_dict(),
        "rows": rows,
        "machine": describe_machine(),
        "runtime": runtime,
    }


def _change(changes: dict[str, Any]) -> str:
    parts = []
    for key, value in changes.items():
        if key == "fonts":
            parts.append(f"{len(value)} other fonts")
        elif key == "font_sizes":
            continue
        elif isinstance(value, list):
            parts.append(f"{key} {', '.join(str(v) for v in value)}")
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts) or "—"


def table(report: dict[str, Any]) -> str:
    """A Markdown table: per set, what it changes, copy-last's SSIM, the first model's
    scores (with its MSE ratio's change from the in-family row) and the others' ratio."""
    rows = report["rows"]
    names = [n for n in rows[0]["metrics"] if n != BASELINE]
    first, others = names[0], names[1:]
    step = f"step_{report['fed_back_step']}_mse_vs_copy_last"
    family = next(r for r in rows if r["set"] == "in family")["metrics"][first]["mse_vs_copy_last"]
    header = [
        "set",
        "changes (from the OOD set)",
        "copy-last SSIM",
        f"{first} × copy-last",
        "vs in family",
        f"{first} SSIM",
        f"{first} step {report['fed_back_step']} ×",
        *[f"{n} × copy-last" for n in others],
    ]
    rule = ["---", "---"] + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    for r in rows:
        m = r["metrics"]
        ratio = m[first]["mse_vs_copy_last"]
        delta = "—" if r["set"] in ("test split", "in family") else f"{ratio - family:+.2f}"
        cells = [
            r["set"],
            _change(r["changes"]),
            f"{m[BASELINE]['ssim']:.3f}",
            f"{ratio:.2f}",
            delta,
            f"{m[first]['ssim']:.3f}",
            f"{m[first][step]:.2f}",
            *[f"{m[n]['mse_vs_copy_last']:.2f}" for n in others],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\n*{report['sequences_per_set']} sequences per set (seed {report['seed']}), "
        f"{report['target']}; {report['runtime']}; {report['machine']}.*\n"
    )
