"""``train --data PATH --stream``: windows read from disk (memory-mapped shards, frame
folders, videos), shuffled across shards, resumed mid-epoch; and the scan's refusals,
each naming the file, before anything is written."""

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.__main__ import main
from model_export.frames import stream_data, stream_scan
from model_export.frames.user_data import DataError
from tests.test_train_data import TINY, write_png_sequences, write_video


def write_shards(root: Path, shards: int, per_shard: int, frames: int = 5, seed: int = 0) -> Path:
    """``shards`` .npy files of uint8 sequences (N, T, 8, 8, 1); row r of shard s starts
    with the value 10 * s + r in every pixel, so a window says where it came from."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for s in range(shards):
        arr = rng.integers(0, 255, size=(per_shard, frames, 8, 8, 1), dtype=np.uint8)
        for r in range(per_shard):
            arr[r, 0] = 10 * s + r
        np.save(root / f"shard_{s:02d}.npy", arr)
    return root


def test_scan_memory_maps_shards_and_npz_members(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", 3, 4)
    np.savez(root / "more.npz", x=np.zeros((2, 6, 8, 8, 1), np.uint8))
    cat = stream_scan.scan(root, window=5)
    assert len(cat.sources) == 3 * 4 + 2
    assert cat.frame_shape == (8, 8, 1) and cat.dtype == "uint8"
    reader = stream_data.SourceReader(cache=1)
    first = reader.frames(cat.sources[0], 0, 5)  # more.npz sorts first
    assert first.shape == (5, 8, 8, 1) and not first.any()
    src = next(s for s in cat.sources if s.path.name == "shard_02.npy" and s.row == 3)
    assert reader.frames(src, 0, 1).max() == 23
    assert isinstance(reader._maps[(src.path, None)], np.memmap)


def test_reader_windows_equal_the_arrays_in_every_layout(tmp_path: Path) -> None:
    # C-ordered .npy and .npz members are read with pread at an offset computed from
    # the header; a Fortran-ordered shard falls back to copying out of its memory map.
    a = np.random.default_rng(0).integers(0, 65535, (5, 9, 4, 3, 2), dtype=np.uint16)
    np.save(tmp_path / "c.npy", a)
    np.savez(tmp_path / "z.npz", x=a[::-1].copy(), y=a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    reader = stream_data.SourceReader(cache=1)
    for name in ("c.npy", "z.npz", "f.npy"):
        for src in stream_scan.scan(tmp_path / name, window=4).sources:
            want = a[::-1] if src.key == "x" else a
            for start in (0, 3, 5):
                got = reader.frames(src, start, 4)
                np.testing.assert_array_equal(got, want[src.row, start : start + 4])


def test_reader_names_a_shard_cut_short_after_the_scan(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "d", 1, 3)
    cat = stream_scan.scan(root, window=5)
    reader = stream_data.SourceReader(cache=1)
    reader.frames(cat.sources[0], 0, 5)  # the shard's map is open from here on
    shard = root / "shard_00.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"shard_00\.npy: row 2 ends early"):
        reader.frames(cat.sources[2], 0, 5)


def test_epoch_order_mixes_shards_covers_every_window_once_and_is_reproducible(
    tmp_path: Path,
) -> None:
    cat = stream_scan.scan(write_shards(tmp_path / "d", 6, 3, frames=6), window=5)
    a = stream_data.epoch_order(cat.sources, 5, seed=1, epoch=0, group=3)
    assert sorted(map(tuple, a.tolist())) == [(i, s) for i in range(18) for s in range(2)]
    np.testing.assert_array_equal(
        a, stream_data.epoch_order(cat.sources, 5, seed=1, epoch=0, group=3)
    )
    assert not np.array_equal(a, stream_data.epoch_order(cat.sources, 5, seed=1, epoch=1, group=3))
    # A group's windows stay together: the first 3 sources' 6 windows come first.
    assert len({int(i) for i, _ in a[:6]}) == 3
    first_batch_shards = {cat.sources[i].path for i, _ in a[:6]}
    assert len(first_batch_shards) > 1  # a batch draws from more than one shard


def test_stream_batches_are_the_windows_scaled_and_resume_skips_what_was_done(
    tmp_path: Path,
) -> None:
    cat = stream_scan.scan(write_shards(tmp_path / "d", 2, 3), window=4)

    def stream(start: int) -> stream_data.WindowStream:
        return stream_data.WindowStream(
            cat.sources, window=4, batch_size=2, dtype="uint8", seed=3, workers=1, start_batch=start
        )

    full, rest = stream(0), stream(2)
    assert len(full) == 6 and len(rest) == 4
    x, y = full[2]
    assert x.shape == (2, 3, 8, 8, 1) and y.shape == (2, 3, 8, 8, 1)
    np.testing.assert_array_equal(rest[0][0], x)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next frames
    assert 0.0 <= x.min() and x.max() <= 1.0


def _mixed_channels(p: Path) -> Path:
    root = write_shards(p / "d", 2, 2)
    np.save(root / "shard_09.npy", np.zeros((2, 5, 8, 8, 3), np.uint8))
    return root


def _wrong_dtype(p: Path) -> Path:
    root = write_shards(p / "d", 2, 2)
    np.save(root / "shard_05.npy", np.zeros((2, 5, 8, 8, 1), np.int64))
    return root


def _wrong_shape(p: Path) -> Path:
    root = write_shards(p / "d", 2, 2)
    np.save(root / "shard_05.npy", np.zeros((2, 5, 8, 8), np.uint8))
    return root


def _compressed(p: Path) -> Path:
    root = write_shards(p / "d", 2, 2)
    np.savez_compressed(root / "shard_05.npz", x=np.zeros((2, 5, 8, 8, 1), np.uint8))
    return root


def _short(p: Path) -> Path:
    root = write_shards(p / "d", 2, 2)
    np.save(root / "shard_05.npy", np.zeros((2, 2, 8, 8, 1), np.uint8))
    return root


def _broken_png(p: Path) -> Path:
    root = write_png_sequences(p / "f", [5] * 3)
    data = (root / "seq_01" / "frame_003.png").read_bytes()
    (root / "seq_01" / "frame_003.png").write_bytes(data[: len(data) // 2])
    return root


def _broken_video(p: Path) -> Path:
    root = p / "v"
    root.mkdir()
    for i in range(3):
        write_video(root / f"clip_{i}.avi", 5)
    (root / "clip_3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return root


BAD = {
    "mixed_channels": (_mixed_channels, "shard_09.npy: frames (H, W, C) (8, 8, 3)"),
    "wrong_dtype": (_wrong_dtype, "shard_05.npy: dtype int64"),
    "wrong_shape": (_wrong_shape, "shard_05.npy: shape (2, 5, 8, 8) is not (N, T, H, W, C)"),
    "compressed": (_compressed, "shard_05.npz: array 'x' is compressed"),
    "too_few_frames": (_short, "shard_05.npy row 0: 2 frame(s), fewer than one window of 5"),
    "broken_png": (_broken_png, "frame_003.png: not a readable image"),
    "broken_video": (_broken_video, "clip_3.mp4: not a readable video"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_scan_refuses_bad_data_naming_the_file_before_training(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD[case]
    data = make(tmp_path)
    with pytest.raises(DataError, match="^" + str(tmp_path).replace("+", r"\+")):
        stream_scan.scan(data, window=5)
    out = tmp_path / "out"
    assert (
        main(["train", "--data", str(data), "--stream", "--frames", "5", "--out", str(out), *TINY])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: ") and "\n" not in err and expected in err, err
    assert not out.exists()


def test_in_memory_mode_refuses_data_over_its_memory_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_shards(tmp_path / "d", 1, 40) / "shard_00.npy"  # 40 x 5 x 8 x 8 x 4 B = 51 kB
    args = ["train", "--data", str(data), "--out", str(tmp_path / "out"), *TINY]
    assert main([*args, "--memory-limit-gb", "0.00001"]) == 1
    err = capsys.readouterr().err
    assert "over the bound of" in err and "--stream" in err and "shard_00.npy" in err


@pytest.mark.slow
def test_streamed_training_checkpoints_its_place_and_resumes_mid_epoch(tmp_path: Path) -> None:
    data = write_shards(tmp_path / "d", 2, 10)  # 20 sequences: 16 train = 8 batches of 2
    out = tmp_path / "out"
    args = ["train", "--data", str(data), "--stream", "--out", str(out), "--name", "s", *TINY]
    assert main(args) == 0
    record = json.loads((out / "s.training.json").read_text())
    assert record["data"]["sequences"] == 20 and record["epochs_run"] == 1
    assert record["batches_run"] == 8
    assert record["evaluation"]["windows"] == 2
    # Pretend the run stopped after batch 5 of epoch 0 and resume from there.
    work = out / "training"
    (work / "s.progress.json").write_text(json.dumps({"epoch": 0, "batch": 5}))
    (out / "s.keras").replace(work / "s.last.keras")
    again = [*args[: -len(TINY)], "--resume", str(work / "s.last.keras"), *TINY]
    assert main(again) == 0
    resumed = json.loads((out / "s.training.json").read_text())
    assert resumed["resumed_at"] == {"epoch": 0, "batch": 5}
    assert resumed["batches_run"] == 8 - 5
