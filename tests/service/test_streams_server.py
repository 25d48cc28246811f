"""Streams on the real server process over loopback: frames fed one at a time give, after
the 15th, what /predict gives on those 15 frames; Triton's sequence parameters through
tritonclient; SIGTERM closes the open streams. (The tests share one server, in order:
the last one stops it.)"""

from __future__ import annotations

import base64
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server

FRAMES = moving_square_frames()


@pytest.fixture(scope="module")
def streams_server() -> Iterator[RunningServer]:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_SERVE_MODEL_DIR": "false"}) as server:
        yield server


def tensor_of(body: dict[str, object]) -> np.ndarray:
    t = body["tensor"]
    assert isinstance(t, dict)
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


def predicted_by_predict(server: RunningServer) -> dict[str, object]:
    with server.client() as client:
        r = client.post("/predict", json={"frames": FRAMES, "return_tensor": True})
        assert r.status_code == 200
        body: dict[str, object] = r.json()
        return body


def test_triton_sequence_parameters_map_onto_streams(streams_server: RunningServer) -> None:
    from tests.service.test_server import decode_png

    pixels = np.stack([decode_png(f) for f in FRAMES])[None]  # (1, 15, 40, 40, 3) uint8
    tc = triton.InferenceServerClient(streams_server.url.removeprefix("http://"))

    def step(frames: np.ndarray, **flags: object) -> np.ndarray:
        inp = triton.InferInput("frames", list(frames.shape), "UINT8")
        inp.set_data_from_numpy(frames, binary_data=True)
        result = tc.infer("convlstm", [inp], sequence_id=42, **flags)  # type: ignore[arg-type]
        out: np.ndarray = result.as_numpy("next_frame")
        return out

    got = step(pixels[:, :1], sequence_start=True)
    assert got.shape == (1, 40, 40, 3)
    for t in range(1, 14):
        step(pixels[:, t : t + 1])
    got = step(pixels[:, 14:15], sequence_end=True)
    expected = tensor_of(predicted_by_predict(streams_server))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Ended: the id is gone until a new start.
    with pytest.raises(InferenceServerException, match="sequence 42 of model 'convlstm' was ended"):
        step(pixels[:, :1])
    with pytest.raises(InferenceServerException, match=r"\[1, k, 40, 40, 3\]"):
        step(pixels[0], sequence_start=True)
    # Several frames in one request, and a start again on a used id begins from zero.
    step(pixels[:, :4], sequence_start=True)
    again = step(pixels, sequence_start=True, sequence_end=True)
    np.testing.assert_allclose(again, expected, atol=1e-5)


def test_client_stream_feeds_frames_and_closes(streams_server: RunningServer) -> None:
    from convlstm_client import ClientError, NextFrameClient
    from tests.service.test_server import decode_png

    pixels = np.stack([decode_png(f) for f in FRAMES])  # (15, 40, 40, 3) uint8
    with NextFrameClient(streams_server.url) as client:
        with client.stream() as stream:
            for t in range(15):
                prediction = stream.send(pixels[t : t + 1])
            assert stream.info()["frames_seen"] == 15
            expected = client.predict(pixels)
        np.testing.assert_allclose(prediction.frames, expected.frames, atol=1e-5)
        with pytest.raises(ClientError) as err:
            stream.info()
        assert err.value.status == 404 and "was closed" in err.value.message


def test_cli_streams_any_number_of_frames(streams_server: RunningServer, tmp_path: Path) -> None:
    from convlstm_client.cli import main
    from tests.service.test_client import moving_square, write_pngs

    paths = write_pngs(tmp_path / "in", moving_square()[:5])
    out = tmp_path / "out"
    argv = [*paths, "--url", streams_server.url, "--stream", "--horizon", "2", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"next_{t:03d}.png" for t in range(1, 6)),
        "pred_01.png",
        "pred_02.png",
        "sequence.gif",
    ]


def test_stream_fed_one_frame_at_a_time_equals_predict_then_sigterm_closes_it(
    streams_server: RunningServer,
) -> None:
    server = streams_server
    with server.client() as client:
        opened = client.post("/v1/streams", json={"model": "convlstm"})
        assert opened.status_code == 201, opened.text
        stream_id = opened.json()["stream_id"]
        last = {}
        for frame in FRAMES:
            r = client.post(
                f"/v1/streams/{stream_id}", json={"frames": [frame], "return_tensor": True}
            )
            assert r.status_code == 200, r.text
            last = r.json()
        windowed = predicted_by_predict(server)
        np.testing.assert_allclose(tensor_of(last), tensor_of(windowed), atol=1e-5)
        assert last["frames"] == windowed["frames"]  # the same PNG bytes
        info = client.get(f"/v1/streams/{stream_id}").json()
        assert (info["frames_seen"], info["model"]) == (15, "convlstm")
        metrics = client.get("/metrics").text
        assert 'convlstm_streams_open{model="convlstm"} 1.0' in metrics
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "closed 1 open stream(s); their state is not kept" in server.output()
