"""The Python client and the ``convlstm-predict`` command, against the real server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from convlstm_client import ClientError, NextFrameClient
from convlstm_client.cli import main
from tests.service.conftest import COMMITTED_MODEL, REPO, RunningServer, free_port, run_server

T, SIZE = 15, 40


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's default output directory is relative: keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)


def moving_square(shift: int = 0) -> np.ndarray:
    """(15, 40, 40, 3) uint8: an orange square moving right on black."""
    frames = np.zeros((T, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(T):
        x = 2 + 2 * t + shift
        frames[t, 15:25, x : x + 10] = (255, 153, 51)
    return frames


def write_pngs(directory: Path, frames: np.ndarray) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = directory / f"frame_{i:02d}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
    return paths


def rgb_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (SIZE, SIZE))
        return np.asarray(img)


def gif_frame_count(path: Path) -> int:
    with Image.open(path) as img:
        assert img.format == "GIF"
        return int(getattr(img, "n_frames", 1))


# The client


def test_client_prediction_equals_the_servers_answer(server: RunningServer) -> None:
    frames = moving_square()
    body = {
        "tensor": {
            "data": base64.b64encode(frames.tobytes()).decode(),
            "dtype": "uint8",
            "shape": list(frames.shape),
        },
        "horizon": 2,
        "return_tensor": True,
    }
    with server.client() as http:
        raw = http.post("/predict", json=body).json()
    expected = np.frombuffer(base64.b64decode(raw["tensor"]["data"]), "<f4").reshape(2, 40, 40, 3)

    with NextFrameClient(server.url) as client:
        ready = client.ready()
        prediction = client.predict(frames, horizon=2)
    assert (ready.model, ready.frame_shape) == ("convlstm", (T, SIZE, SIZE, 3))
    assert prediction.frames.dtype == np.float32 and prediction.frames.shape == (2, 40, 40, 3)
    np.testing.assert_allclose(prediction.frames, expected, atol=1e-6)
    assert (prediction.model, prediction.provider) == (raw["model"], raw["provider"])
    assert prediction.inference_ms > 0


def test_client_names_the_model(server: RunningServer) -> None:
    with NextFrameClient(server.url) as client:
        if "cnn_lstm" not in client.ready().models:
            pytest.skip("this server serves one model")
        assert client.predict(moving_square(), model="cnn_lstm").model == "cnn_lstm"
        with pytest.raises(ClientError) as err:
            client.predict(moving_square(), model="nope")
    assert "nope" in err.value.message


def test_client_sends_image_files_and_pil_images_as_frames(
    server: RunningServer, tmp_path: Path
) -> None:
    frames = moving_square()
    paths = write_pngs(tmp_path, frames)
    with NextFrameClient(server.url) as client:
        from_array = client.predict(frames).frames
        from_files = client.predict(paths).frames
        images = [Image.fromarray(f) for f in frames]
        images[3] = images[3].resize((32, 40))
        with pytest.raises(ClientError) as err:
            client.predict(images)
    np.testing.assert_allclose(from_files, from_array, atol=1e-6)
    assert (err.value.status, err.value.error_type) == (422, "invalid_input")
    assert err.value.location == "frames[3]" and "32x40" in err.value.message


def test_api_key_is_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_API_KEY": "s3cret"}) as locked:
        with NextFrameClient(locked.url) as client, pytest.raises(ClientError) as err:
            client.predict(moving_square())
        assert (err.value.status, err.value.error_type) == (401, "unauthorized")

        with NextFrameClient(locked.url, api_key="s3cret") as client:
            assert client.predict(moving_square()).frames.shape == (1, 40, 40, 3)

        paths = write_pngs(tmp_path / "in", moving_square())
        args = [*paths, "--url", locked.url, "--out", str(tmp_path / "out")]
        assert main(args) == 1
        assert "missing or wrong API key" in capsys.readouterr().err


# The client without a server: retries and the request body


def test_503_is_retried_after_retry_after_and_then_given_up() -> None:
    bodies: list[dict[str, object]] = []
    answers = [503, 503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if answers.pop(0) == 503:
            error = {"error": {"type": "overloaded", "message": "the queue is full"}}
            return httpx.Response(503, json=error, headers={"Retry-After": "0"})
        tensor = {"data": base64.b64encode(np.zeros(4800, "<f4").tobytes()).decode()}
        return httpx.Response(
            200,
            json={
                "model": "cnn_lstm",
                "model_version": "1",
                "provider": "CPUExecutionProvider",
                "inference_ms": 1.0,
                "tensor": {**tensor, "dtype": "float32", "shape": [1, 40, 40, 3]},
            },
        )

    transport = httpx.MockTransport(handler)
    with NextFrameClient("http://test", transport=transport) as client:
        assert client.predict(moving_square(), model="cnn_lstm").model == "cnn_lstm"
        assert len(bodies) == 3 and bodies[0]["model"] == "cnn_lstm"

        answers[:] = [503] * 4
        with pytest.raises(ClientError) as err:
            client.predict(moving_square())
        assert (err.value.status, err.value.error_type) == (503, "overloaded")
    assert len(bodies) == 3 + 4  # the first try and three retries
    assert "model" not in bodies[-1]


def test_unreachable_server_is_a_client_error_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with NextFrameClient(url) as client, pytest.raises(ClientError) as err:
        client.ready()
    assert err.value.status is None and err.value.error_type == "connection_error"
    assert main([*write_pngs(tmp_path, moving_square()), "--url", url]) == 1
    assert "cannot reach" in capsys.readouterr().err


# The command


def test_cli_png_files(server: RunningServer, tmp_path: Path) -> None:
    paths = write_pngs(tmp_path / "in", moving_square())
    out = tmp_path / "out"
    assert main([*paths, "--url", server.url, "--horizon", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pred_01.png", "pred_02.png", "sequence.gif"]
    rgb_png(out / "pred_01.png")
    rgb_png(out / "pred_02.png")
    assert gif_frame_count(out / "sequence.gif") == T + 2


def test_cli_gif_uses_its_first_15_frames(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [Image.fromarray(f) for f in np.concatenate([moving_square(), moving_square(2)[:3]])]
    gif = tmp_path / "clip.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=100, loop=0)
    out = tmp_path / "out"
    assert main([str(gif), "--url", server.url, "--out", str(out)]) == 0
    assert "18 frames, using the first 15" in capsys.readouterr().err
    rgb_png(out / "pred_01.png")
    assert gif_frame_count(out / "sequence.gif") == T + 1


def test_cli_npy_batch_writes_one_directory_per_sequence(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch.npy"
    np.save(batch, np.stack([moving_square(), moving_square(4)]).astype(np.float32) / 255.0)
    out = tmp_path / "out"
    assert main([str(batch), "--url", server.url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seq_000", "seq_001"]
    for seq in ("seq_000", "seq_001"):
        rgb_png(out / seq / "pred_01.png")
        assert gif_frame_count(out / seq / "sequence.gif") == T + 1
    assert "2/2 sequences" in capsys.readouterr().err


def test_cli_bad_input_exits_2(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path, moving_square())
    assert main([*paths[:14], "--url", server.url]) == 2
    assert "14 frames, but model convlstm needs 15" in capsys.readouterr().err

    assert main([*paths[:14], str(tmp_path / "missing.png"), "--url", server.url]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err

    assert main(["--horizon", "two", paths[0]]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_cli_server_error_exits_1_with_the_servers_message(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path, moving_square())
    assert main([*paths, "--url", server.url, "--horizon", "99"]) == 1
    err = capsys.readouterr().err
    assert "horizon: must be between 1 and" in err and "HTTP 422" in err
    assert not (tmp_path / "predictions").exists()


def test_client_and_command_import_neither_onnxruntime_nor_fastapi() -> None:
    code = (
        "import sys, convlstm_client.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxruntime', 'fastapi', "
        "'starlette', 'uvicorn', 'pydantic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
