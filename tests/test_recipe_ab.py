"""``python -m model_export.frames.recipe_ab``: arms scored on the test split and on the
out-of-distribution set, side by side."""

import json
from pathlib import Path

import pytest

from model_export.frames.evaluate import BASELINE, mse
from model_export.frames.model import build_convlstm
from model_export.frames.ood import ood_horizon_split
from model_export.frames.recipe_ab import main, objective_label


@pytest.mark.slow
def test_arms_are_scored_on_the_test_split_and_the_ood_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arms = []
    for name, filters in (("a", (2,)), ("b", (3,))):
        path = tmp_path / f"{name}.keras"
        build_convlstm(filters=filters).save(path)
        arms.append(str(path))
    out = tmp_path / "ab.json"
    main([*arms, "--samples", "3", "--horizon", "2", "--ood-samples", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    ox, ofuture = ood_horizon_split(3, 2)
    assert report[f"ood_{BASELINE}"]["mse"] == pytest.approx(
        float(mse(ox[:, -1], ofuture[:, 0]).mean())
    )
    a, b = report["arms"]
    assert [r["step"] for r in a["ood_fed_back"]] == [1, 2]
    assert a["ood_fed_back"][0]["copy_last_mse"] == pytest.approx(report[f"ood_{BASELINE}"]["mse"])
    assert a["ood_fed_back"][0]["mse"] != pytest.approx(b["ood_fed_back"][0]["mse"])
    assert a["ood_fed_back"][0]["mse"] != pytest.approx(a["fed_back"][0]["mse"])
    printed = capsys.readouterr().out
    assert "OOD x copy-last" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| a.keras |"))
    assert f"| {a['ood_fed_back'][0]['mse_vs_copy_last']:.3f} |" in row

    main([arms[0], "--samples", "3", "--horizon", "2", "--ood-samples", "0"])
    assert "OOD" not in capsys.readouterr().out

    # a train --out folder of either variant: its one checkpoint and its record
    folder = tmp_path / "cnn"
    (folder / "training").mkdir(parents=True)
    Path(arms[1]).rename(folder / "cnn_lstm.keras")
    record = {"config": {"loss": "l1", "train_samples": 4}, "epochs_run": 1}
    record |= {"sequences_seen": 4, "wall_seconds": 1.0}
    (folder / "training" / "cnn_lstm.json").write_text(json.dumps(record))
    main(
        [str(folder), "--samples", "3", "--horizon", "2", "--ood-samples", "0", "--json", str(out)]
    )
    (arm,) = json.loads(out.read_text())["arms"]
    assert arm["checkpoint"] == str(folder / "cnn_lstm.keras") and arm["recipe"]["loss"] == "l1"
    assert arm["fed_back"][0]["mse"] == pytest.approx(b["fed_back"][0]["mse"])


@pytest.mark.parametrize(
    ("recipe", "label"),
    [
        ({"loss": "bce"}, "bce"),
        ({"loss": "bce", "feedback_steps": 1, "ssim_weight": 0.0}, "bce"),
        ({"loss": "l1", "ssim_weight": 0.3}, "l1 + 0.3 (1-SSIM)"),
        (
            {"loss": "bce", "feedback_steps": 3, "feedback_loss": "l1", "ssim_weight": 1.0},
            "bce; K=3 fed l1 + 1 (1-SSIM)",
        ),
        ({"loss": "mse", "feedback_steps": 2, "feedback_loss": None}, "mse; K=2 fed mse"),
    ],
)
def test_the_loss_column_names_the_whole_objective(recipe: dict[str, object], label: str) -> None:
    assert objective_label(recipe) == label
