"""``evaluate --ood-breakdown``: the out-of-distribution set taken apart one factor at a
time, scored against the in-family set and written into the cards."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from convlstm_card import read_card
from model_export.__main__ import main
from model_export.export.frame_models import export
from model_export.frames import data
from model_export.frames.evaluate import BASELINE, evaluate, mse
from model_export.frames.glyphs import sklearn_glyphs
from model_export.frames.model import build_convlstm
from model_export.frames.ood import OOD, OOD_SEED
from model_export.frames.ood_breakdown import (
    FACTORS,
    IN_FAMILY,
    breakdown,
    factor_spec,
    table,
)
from model_export.frames.scenes import render


def test_the_factors_cover_every_difference_between_the_family_and_the_ood_set() -> None:
    differ = {
        f.name
        for f in dataclasses.fields(OOD)
        if f.name not in ("name", "seeds") and getattr(OOD, f.name) != getattr(IN_FAMILY, f.name)
    }
    taken = [f for fields in FACTORS.values() for f in fields]
    assert len(taken) == len(set(taken))  # no field in two factors
    assert differ == set(taken) - {"font_sizes"} | ({"font_sizes"} & differ)
    for factor, fields in FACTORS.items():
        spec = factor_spec(factor)
        for f in dataclasses.fields(spec):
            if f.name in fields:
                assert getattr(spec, f.name) == getattr(OOD, f.name)
            elif f.name != "name":
                assert getattr(spec, f.name) == getattr(IN_FAMILY, f.name), (factor, f.name)


def test_the_family_draws_data_s_held_out_digits_tinted_on_black() -> None:
    np.testing.assert_array_equal(sklearn_glyphs("test", 16), data.digit_pool("test"))
    seqs = render(IN_FAMILY, 16, seed=OOD_SEED)
    lit = seqs.max(axis=-1) > 0
    assert seqs[~lit].max() == 0.0  # black where no glyph is
    # Tints have every channel in [0.3, 1]: a fully lit pixel's dimmest channel is >= 0.3
    # (scikit-learn's digits reach 16/16, so some pixels are fully lit).
    full = seqs.max(axis=-1) >= 0.3
    assert np.percentile(seqs[full].min(axis=-1) / seqs[full].max(axis=-1), 5) >= 0.29


def copy_last(x: np.ndarray) -> np.ndarray:
    return np.asarray(x[:, -1], dtype=np.float32)


def half_last(x: np.ndarray) -> np.ndarray:
    return np.asarray(x[:, -1] * 0.5, dtype=np.float32)


def test_breakdown_scores_every_set_against_its_own_copy_last() -> None:
    report = breakdown({"copy": copy_last, "half": half_last}, samples=3)
    sets = [r["set"] for r in report["rows"]]
    assert sets == ["test split", "in family", *FACTORS, "all (the OOD set)"]
    for row in report["rows"]:
        copy = row["metrics"]["copy"]
        assert copy["mse_vs_copy_last"] == pytest.approx(1.0)
        assert copy["step_3_mse_vs_copy_last"] == pytest.approx(1.0)
        assert copy["ssim"] == pytest.approx(row["metrics"][BASELINE]["ssim"])
        assert row["metrics"]["half"]["mse_vs_copy_last"] != pytest.approx(1.0)
    speed = next(r for r in report["rows"] if r["set"] == "speed")
    assert speed["changes"] == {"speed": list(OOD.speed)}
    whole = render(OOD, 3, seed=OOD_SEED, frames=16)
    base = float(mse(whole[:, 14], whole[:, 15]).mean())
    assert report["rows"][-1]["metrics"][BASELINE]["mse"] == pytest.approx(base)
    text = table(report)
    assert text.count("\n| ") == len(sets) + 1 and "| speed | speed 0, 4 |" in text


@pytest.mark.slow
def test_cli_adds_the_breakdown_to_the_cards_and_keeps_their_other_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "convlstm.keras"  # a small stack under the variant's name
    build_convlstm(filters=(2,)).save(ckpt)
    export(ckpt)
    before = evaluate(
        tmp_path, ["convlstm"], samples=2, latency_repeats=1, horizon=1, ood_samples=0
    )
    args = ["evaluate", "--models", str(tmp_path), "--variant", "convlstm", "--ood-breakdown"]
    main([*args, "--breakdown-samples", "2"])
    evaluation = read_card(tmp_path / "convlstm.json").evaluation
    assert evaluation is not None
    assert {k: v for k, v in evaluation.items() if k != "ood_breakdown"} == before
    rows = evaluation["ood_breakdown"]["rows"]
    assert len(rows) == len(FACTORS) + 3 and rows[0]["metrics"]["convlstm"]["mse_vs_copy_last"] > 0
    assert "| all (the OOD set) |" in capsys.readouterr().out
