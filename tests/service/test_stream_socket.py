"""A stream over its WebSocket (``/v1/streams/{id}/ws``) against the real server process
on loopback, driven by a real WebSocket client (the ``websockets`` package): frames in,
predictions out equal to ``/predict``'s; errors as a last message and a close code of
4000 + the HTTP status; the API key in the headers or the first message; and SIGTERM
answering the step under way, then closing with 1001."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server

KEY = "socket-test-key"
FRAMES = moving_square_frames()
ENV = {"CONVLSTM_API_KEY": KEY, "CONVLSTM_SERVE_MODEL_DIR": "false", "CONVLSTM_WARMUP_RUNS": "0"}


# HTTP's idle and keep-alive limits, short: a WebSocket, once upgraded, is not HTTP's to cut.
SHORT_HTTP_LIMITS = {
    "CONVLSTM_HEADER_TIMEOUT_S": "1",
    "CONVLSTM_BODY_IDLE_TIMEOUT_S": "1",
    "CONVLSTM_KEEP_ALIVE_S": "1",
    # Every message here is far smaller; one test sends a larger one.
    "CONVLSTM_MAX_BODY_BYTES": "200000",
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with run_server(COMMITTED_MODEL, env={**ENV, **SHORT_HTTP_LIMITS}) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        yield c


def open_stream(http: httpx.Client) -> str:
    opened = http.post("/v1/streams", json={"model": "convlstm"})
    assert opened.status_code == 201, opened.text
    stream_id: str = opened.json()["stream_id"]
    return stream_id


def socket(server: RunningServer, stream_id: str, key: str | None = KEY) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + f"/v1/streams/{stream_id}/ws"
    headers = {"X-API-Key": key} if key is not None else None
    return connect(url, additional_headers=headers, open_timeout=30, close_timeout=10)


def answer(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=60)
    assert isinstance(message, str)
    body: dict[str, Any] = json.loads(message)
    return body


def closed_with(ws: ClientConnection) -> tuple[dict[str, Any], int, str]:
    """The last message (the error) and the close code and reason that follow it."""
    last = answer(ws)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None
    return last, closed.value.rcvd.code, closed.value.rcvd.reason


def tensor_of(body: dict[str, Any]) -> np.ndarray:
    t = body["tensor"]
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


def test_png_frames_in_one_at_a_time_equal_predict(
    server: RunningServer, http: httpx.Client
) -> None:
    stream_id = open_stream(http)
    with socket(server, stream_id) as ws:
        for frame in FRAMES[:-1]:
            ws.send(base64.b64decode(frame))  # a binary message: the PNG itself
            got = answer(ws)
            assert got["horizon"] == 1 and len(got["frames"]) == 1
        # The last as JSON, asking for the tensor too.
        ws.send(json.dumps({"frames": [FRAMES[-1]], "return_tensor": True}))
        last = answer(ws)
    windowed = http.post("/predict", json={"frames": FRAMES, "return_tensor": True}).json()
    np.testing.assert_allclose(tensor_of(last), tensor_of(windowed), atol=1e-5)
    assert last["frames"] == windowed["frames"]  # the same PNG bytes
    info = http.get(f"/v1/streams/{stream_id}").json()
    assert info["frames_seen"] == 15  # the socket's close left the stream open
    metrics = http.get("/metrics").text
    assert 'route="/v1/streams/{stream_id}/ws",status="200"} 15.0' in metrics


def test_an_idle_socket_outlives_the_http_time_limits(
    server: RunningServer, http: httpx.Client
) -> None:
    with socket(server, open_stream(http)) as ws:
        time.sleep(2.5)  # past every HTTP limit set above, and a sweep of the guard
        ws.send(base64.b64decode(FRAMES[0]))
        assert len(answer(ws)["frames"]) == 1


def test_a_message_over_the_body_limit_ends_with_4413(
    server: RunningServer, http: httpx.Client
) -> None:
    with socket(server, open_stream(http)) as ws:
        ws.send(b"\0" * 300_000)
        error, code, reason = closed_with(ws)
    assert code == 4413 and error["error"]["type"] == "payload_too_large"
    assert "larger than the limit of 200000 bytes" in reason


def test_a_tensor_and_a_horizon(server: RunningServer, http: httpx.Client) -> None:
    stream_id = open_stream(http)
    x = np.random.default_rng(0).random((3, 40, 40, 3), dtype=np.float32)
    tensor = {"data": base64.b64encode(x.tobytes()).decode(), "dtype": "float32", "shape": [3, 40, 40, 3]}  # fmt: skip
    with socket(server, stream_id) as ws:
        ws.send(json.dumps({"tensor": tensor, "horizon": 2, "return_tensor": True}))
        got = answer(ws)
    assert got["horizon"] == 2 and tensor_of(got).shape == (2, 40, 40, 3)


def test_a_message_that_is_not_an_image_ends_with_4422_and_leaves_the_stream(
    server: RunningServer, http: httpx.Client
) -> None:
    stream_id = open_stream(http)
    with socket(server, stream_id) as ws:
        ws.send(base64.b64decode(FRAMES[0]))
        answer(ws)
        ws.send(b"GIF89a not a frame")
        error, code, reason = closed_with(ws)
    assert code == 4422
    assert error["error"]["type"] == "invalid_input"
    assert reason and reason in error["error"]["message"] or reason.endswith("...")
    assert "frames[0]" in error["error"]["message"]
    assert http.get(f"/v1/streams/{stream_id}").json()["frames_seen"] == 1


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ("{not json", "message: Invalid JSON"),
        (json.dumps({"horizon": 1}), "give exactly one of 'frames' and 'tensor'"),
        (json.dumps({"frames": []}), "frames: a stream takes 1 to 256 frames per request, got 0"),
        (json.dumps({"frames": ["x"], "horizon": 999}), "horizon"),
    ],
)
def test_bad_json_messages_end_with_a_4xx(
    server: RunningServer, http: httpx.Client, message: str, where: str
) -> None:
    with socket(server, open_stream(http)) as ws:
        ws.send(message)
        error, code, _ = closed_with(ws)
    assert 4400 <= code < 4500
    assert where in error["error"]["message"] or where in error["error"]["type"]


def test_unknown_stream_and_api_key(server: RunningServer, http: httpx.Client) -> None:
    with socket(server, "no-such-stream") as ws:
        error, code, reason = closed_with(ws)
    assert code == 4404 and "no-such-stream" in error["error"]["message"]
    stream_id = open_stream(http)
    with socket(server, stream_id, key="wrong") as ws:
        _, code, _ = closed_with(ws)
    assert code == 4401
    # A browser cannot set headers on a WebSocket: the key as the first message.
    with socket(server, stream_id, key=None) as ws:
        ws.send(json.dumps({"api_key": KEY}))
        ws.send(base64.b64decode(FRAMES[0]))
        assert len(answer(ws)["frames"]) == 1
    with socket(server, stream_id, key=None) as ws:
        ws.send(base64.b64decode(FRAMES[0]))
        _, code, reason = closed_with(ws)
    assert code == 4401 and "API key" in reason
    # The page sends the key as a message whenever one is entered: taken with a header too.
    with socket(server, stream_id) as ws:
        ws.send(json.dumps({"api_key": KEY}))
        ws.send(base64.b64decode(FRAMES[0]))
        assert len(answer(ws)["frames"]) == 1
        ws.send(json.dumps({"api_key": "wrong"}))
        _, code, _ = closed_with(ws)
    assert code == 4401


def test_sigterm_answers_the_step_under_way_then_closes_with_1001() -> None:
    with run_server(COMMITTED_MODEL, env=ENV) as server:
        with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as c:
            stream_id = open_stream(c)
        with socket(server, stream_id) as ws:
            # 15 frames and 8 more predicted: a step long enough to be under way.
            ws.send(json.dumps({"frames": FRAMES, "horizon": 8}))
            time.sleep(0.1)
            server.process.send_signal(signal.SIGTERM)
            got = answer(ws)
            assert len(got["frames"]) == 8
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1001,
            "the service is shutting down",
        )
        assert server.process.wait(timeout=30) == 0
