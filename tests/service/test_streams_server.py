"""Streams on the real server process over loopback: frames fed one at a time give, after
the 15th, what /predict gives on those 15 frames; SIGTERM closes the open streams."""

from __future__ import annotations

import base64
import signal

import numpy as np

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, run_server

FRAMES = moving_square_frames()


def tensor_of(body: dict[str, object]) -> np.ndarray:
    t = body["tensor"]
    assert isinstance(t, dict)
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


def test_stream_fed_one_frame_at_a_time_equals_predict_then_sigterm_closes_it() -> None:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_SERVE_MODEL_DIR": "false"}) as server:
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
            windowed = client.post("/predict", json={"frames": FRAMES, "return_tensor": True})
            assert windowed.status_code == 200
            np.testing.assert_allclose(tensor_of(last), tensor_of(windowed.json()), atol=1e-5)
            assert last["frames"] == windowed.json()["frames"]  # the same PNG bytes
            info = client.get(f"/v1/streams/{stream_id}").json()
            assert (info["frames_seen"], info["model"]) == (15, "convlstm")
            metrics = client.get("/metrics").text
            assert 'convlstm_streams_open{model="convlstm"} 1.0' in metrics
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert "closed 1 open stream(s); their state is not kept" in server.output()
