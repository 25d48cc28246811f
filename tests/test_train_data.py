"""``python -m model_export train --data PATH``: real training runs on tiny sequences of the
user's own frames, exported with ``export --keras`` and run in onnxruntime against Keras;
and the refusals of bad data, which write nothing."""

import json
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from convlstm_card import read_card, sha256_of
from model_export.__main__ import main
from model_export.frames import user_data

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--batch-size", "2", "--filters", "4", "4", "--precision", "float32"]


def write_png_sequences(
    root: Path, lengths: list[int], size: tuple[int, int] = (12, 16), seed: int = 0
) -> Path:
    """One folder of greyscale PNG frames per sequence, a bright square moving right."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i, length in enumerate(lengths):
        folder = root / f"seq_{i:02d}"
        folder.mkdir(parents=True)
        y = int(rng.integers(0, h - 4))
        for t in range(length):
            frame = np.zeros((h, w), dtype=np.uint8)
            x = (int(rng.integers(0, 3)) + 2 * t) % (w - 4)
            frame[y : y + 4, x : x + 4] = 255
            Image.fromarray(frame).save(folder / f"frame_{t:03d}.png")
    return root


def test_png_folder_trains_exports_and_matches_keras(tmp_path: Path) -> None:
    frames = write_png_sequences(tmp_path / "frames", [5] * 6)
    out, models = tmp_path / "out", tmp_path / "models"
    args = ["train", "--data", str(frames), "--name", "walk", "--out", str(out), *TINY]
    assert main(args) == 0
    checkpoint = out / "walk.keras"
    record = json.loads((out / "walk.training.json").read_text())
    assert record["checkpoint"]["sha256"] == sha256_of(checkpoint)
    provenance = record["data"]
    assert provenance["path"] == str(frames.resolve())
    assert provenance["sequences"] == 6 and provenance["frames"] == 30
    assert provenance["shape"] == [6, 5, 12, 16, 1]
    assert len(provenance["sha256"]) == 64
    assert provenance["normalisation"]["formula"] == "x / 255"
    assert {k: v["sequences"] for k, v in provenance["splits"].items()} == {
        "train": 4,
        "validation": 1,
        "test": 1,
    }
    metrics = record["evaluation"]["metrics"]
    assert set(metrics) == {"copy_last_frame", "model"}
    assert {"mse", "psnr_db", "ssim"} <= set(metrics["model"])

    assert (
        main(["export", "--keras", str(checkpoint), "--name", "walk", "--models", str(models)]) == 0
    )
    card = read_card(models / "walk.json")
    assert card.task == "next_frame" and card.output_kind == "next_frame"
    assert card.input.shape == ["N", 4, 12, 16, 1]
    assert card.output.shape == ["N", 12, 16, 1]
    assert card.input.range == (0.0, 1.0)
    assert card.normalisation is not None and "x / 255" in card.normalisation
    assert card.data is not None and card.data["sha256"] == provenance["sha256"]
    assert card.evaluation == record["evaluation"]

    model = keras.models.load_model(checkpoint)
    x = np.random.default_rng(1).uniform(0, 1, size=(3, 4, 12, 16, 1)).astype(np.float32)
    session = ort.InferenceSession(str(models / "walk.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {card.input.name: x})[0]
    assert np.max(np.abs(got - model.predict(x, verbose=0))) < 1e-4


def test_npz_key_windows_min_max_and_resume(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.uniform(-2.0, 6.0, size=(5, 7, 8, 8, 2)).astype(np.float32)
    path = tmp_path / "radar.npz"
    np.savez(path, radar=array, other=np.zeros(3))
    out = tmp_path / "out"
    base = ["train", "--data", str(path), "--data-key", "radar", "--frames", "4", *TINY]
    assert main([*base, "--name", "radar", "--out", str(out)]) == 0
    record = json.loads((out / "radar.training.json").read_text())
    data = record["data"]
    assert data["key"] == "radar" and data["shape"] == [5, 7, 8, 8, 2]
    assert data["sha256"] == sha256_of(path)
    norm = data["normalisation"]
    assert norm["kind"].startswith("min-max")
    assert norm["low"] == pytest.approx(float(array.min()))
    assert norm["high"] == pytest.approx(float(array.max()))
    # 3 train sequences of 7 frames: 4 windows of 4 frames each.
    assert data["splits"]["train"] == {"sequences": 3, "windows": 12}
    model = keras.models.load_model(out / "radar.keras")
    assert tuple(model.input.shape) == (None, 3, 8, 8, 2)
    assert tuple(model.output.shape) == (None, 8, 8, 2)

    resumed = ["--name", "radar2", "--out", str(out), "--resume", str(out / "radar.keras")]
    assert main([*base, *resumed]) == 0
    assert json.loads((out / "radar2.training.json").read_text())["config"]["resume"] == str(
        out / "radar.keras"
    )


def write_video(path: Path, frames: int, size: tuple[int, int] = (12, 16)) -> Path:
    """An MPEG-4 AVI of a grey level rising frame by frame."""
    import av

    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            image = np.full((h, w, 3), 15 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_folder_of_videos_trains(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"clip_{i}.avi", 5)
    out = tmp_path / "out"
    assert main(["train", "--data", str(videos), "--name", "clips", "--out", str(out), *TINY]) == 0
    data = json.loads((out / "clips.training.json").read_text())["data"]
    assert data["format"] == "folder of videos" and data["reader"].startswith("PyAV 18.1.0")
    assert data["shape"] == [4, 5, 12, 16, 3]
    assert keras.models.load_model(out / "clips.keras").output.shape[1:] == (12, 16, 3)


def test_one_video_is_cut_into_sequences_of_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.avi", 14)
    dataset = user_data.load(video, frames=4)
    assert dataset.record["sequences"] == 3  # frames 0-3, 4-7, 8-11; 12-13 dropped
    assert dataset.window_shape == (4, 12, 16, 3)
    with pytest.raises(user_data.DataError, match="--frames"):
        user_data.load(video)


def _nan_array(tmp_path: Path) -> Path:
    array = np.zeros((4, 5, 8, 8, 1), dtype=np.float32)
    array[2, 3, 4, 4, 0] = np.nan
    np.save(tmp_path / "nan.npy", array)
    return tmp_path / "nan.npy"


def _unreadable(tmp_path: Path) -> Path:
    root = write_png_sequences(tmp_path / "frames", [5] * 4)
    (root / "seq_01" / "frame_002.png").write_bytes(b"not a png")
    return root


def _unreadable_video(tmp_path: Path) -> Path:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"clip_{i}.avi", 5)
    (videos / "clip_3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return videos


def _mixed_sizes(tmp_path: Path) -> Path:
    root = write_png_sequences(tmp_path / "frames", [5] * 3)
    write_png_sequences(tmp_path / "other", [5], size=(10, 16))
    (tmp_path / "other" / "seq_00").rename(root / "seq_99")
    return root


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


BAD_DATA = {
    "ragged": (lambda p: write_png_sequences(p / "f", [5, 5, 4, 5]), "different lengths"),
    "mixed_sizes": (_mixed_sizes, "different sizes"),
    "nan": (_nan_array, "NaN"),
    "empty_folder": (_empty, "no sequence folders"),
    "unreadable_image": (_unreadable, "not a readable image"),
    "too_few_sequences": (lambda p: write_png_sequences(p / "f", [5, 5]), "need at least 3"),
    "unreadable_video": (_unreadable_video, "not a readable video"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_refused_in_one_line_and_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD_DATA[case]
    data = make(tmp_path)  # type: ignore[no-untyped-call]
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: ") and "\n" not in err and expected in err, err
    assert not out.exists()


def test_digits_options_refuse_flags_of_own_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--name", "x", "--frames", "4"]) == 2
    assert "--frames, --name go with --data PATH" in capsys.readouterr().err


def test_own_data_refuses_the_generator_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(tmp_path / "any.npy"), "--out", str(tmp_path / "out")]
    assert main([*args, "--samples", "100"]) == 2
    assert "--samples and --validation-samples go with --data digits" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
