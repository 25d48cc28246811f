"""``export --keras --task series`` refusals: each exits 1 with a one-line reason and
writes nothing (the accepted exports are tested end to end in tests/service/test_series.py)."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
from keras import layers

from model_export.__main__ import main


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ConvLSTM1D over (S=2, K=3, F=2) -> (h=2, 3): three outputs for two features."""
    inputs = keras.Input((2, 3, 2))
    x = layers.Flatten()(layers.ConvLSTM1D(2, 2, padding="same")(inputs))
    model = keras.Model(inputs, layers.Reshape((2, 3))(layers.Dense(6)(x)))
    path = tmp_path_factory.mktemp("series_src") / "three.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--task", "series"], "forecasts 3 of the 2 features; say which"),
        (["--task", "series", "--target", "0", "5", "1"], "targets [0, 5, 1] are not features"),
        (["--task", "series", "--target", "0", "1", "0", "--frequency", "fortnight"], "fortnight"),
        (["--task", "series", "--target", "0", "1", "1", "--offset", "1", "2"], "go together"),
        (
            ["--task", "series", "--target", "0", "1", "1", "--offset", "1", "--scale", "2"],
            "one per feature",
        ),
        (
            ["--task", "series", "--target", "0", "1", "1", "--offset", "1", "2"]
            + ["--scale", "2", "0"],
            "non-zero",
        ),
        (["--task", "tensor", "--frequency", "W"], "go with --task series"),
    ],
)
def test_refused_with_a_reason_and_nothing_written(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], reason: str
) -> None:
    args = ["export", "--keras", str(source), "--name", "s", "--models", str(tmp_path / "m")]
    assert main([*args, *flags]) == 1
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
