"""``convlstm-predict`` with 1- and 4-channel models (issue 26): PNGs of modes L, RGB and
RGBA are sent as the model's channels and its predictions written in its mode. Tiny
real tf2onnx exports, served by the real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlstm_client.cli import main
from tests.service.conftest import RunningServer, run_server

pytest.importorskip("tf2onnx", reason="tf2onnx is installed with the `train` extra")
from tests.service.any_models import export_with_card, next_frame_model  # noqa: E402

pytestmark = pytest.mark.slow
T, SIZE = 4, 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    import keras

    directory = tmp_path_factory.mktemp("channels")
    keras.utils.set_random_seed(2)
    grey = export_with_card(
        next_frame_model(T, SIZE, SIZE, 1), directory, "grey", "next_frame", "next_frame"
    )
    export_with_card(
        next_frame_model(T, SIZE, SIZE, 4), directory, "rgba", "next_frame", "next_frame"
    )
    with run_server(grey.path, env={"CONVLSTM_WARMUP_RUNS": "0"}) as running:
        yield running


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def pngs(directory: Path, mode: str) -> list[str]:
    rng = np.random.default_rng(4)
    directory.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    paths = []
    for t in range(T):
        pixels = rng.integers(0, 256, size=(SIZE, SIZE, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
        path = directory / f"frame_{t}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def written_mode(path: Path) -> str:
    with Image.open(path) as img:
        assert img.size == (SIZE, SIZE)
        return str(img.mode)


@pytest.mark.parametrize(
    ("model", "mode", "converted"),
    [
        ("grey", "L", False),
        ("grey", "RGB", True),
        ("grey", "RGBA", True),
        ("rgba", "RGBA", False),
        ("rgba", "RGB", True),
        ("rgba", "L", True),
    ],
)
def test_pngs_of_any_mode_reach_a_model_of_any_channels(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    mode: str,
    converted: bool,
) -> None:
    paths = pngs(tmp_path / "in", mode)
    out = tmp_path / "out"
    args = [*paths, "--url", server.url, "--model", model, "--horizon", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert ("converted to" in err) == converted, err
    expected = {"grey": "L", "rgba": "RGBA"}[model]
    assert written_mode(out / "pred_01.png") == expected
    assert written_mode(out / "pred_02.png") == expected
    assert (out / "sequence.gif").is_file()


def test_a_npy_of_other_channels_is_refused_before_sending(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    array = tmp_path / "seq.npy"
    np.save(array, np.zeros((T, SIZE, SIZE, 3), dtype=np.uint8))
    assert main([str(array), "--url", server.url, "--model", "rgba"]) == 2
    assert "but model rgba needs [8, 8, 4]" in capsys.readouterr().err
    np.save(array, np.zeros((T, SIZE, SIZE, 4), dtype=np.float32))
    assert main([str(array), "--url", server.url, "--model", "rgba"]) == 0
