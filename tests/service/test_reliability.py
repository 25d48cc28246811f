"""Behaviour under load, on shutdown and with access control, against the real process."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.api.examples import moving_square_frames
from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server
from tests.service.test_codec import png_declaring
from tests.service.test_server import sequence, value

pytestmark = pytest.mark.slow
FRAMES = moving_square_frames()


def predict(server: RunningServer, horizon: int = 1, **kwargs: object) -> httpx.Response:
    with server.client() as client:
        return client.post("/predict", json={"frames": FRAMES, "horizon": horizon}, **kwargs)  # type: ignore[arg-type]


def test_burst_larger_than_the_queue_gets_only_200_and_503() -> None:
    env = {"CONVLSTM_MAX_QUEUE": "2", "CONVLSTM_MAX_BATCH_SIZE": "1"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(lambda _: predict(server, horizon=2), range(12)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        # One running and two queued fit; the rest are refused. Requests that arrive
        # after a slot frees up may also get through, so at least three succeed.
        assert statuses.count(200) >= 3
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "overloaded"
        with server.client() as client:
            text = client.get("/metrics").text
            assert client.post("/predict", json={"frames": FRAMES}).status_code == 200
        assert value(
            text, "convlstm_rejected_requests_total", reason="overloaded"
        ) == statuses.count(503)


def test_deadline_answers_504() -> None:
    env = {"CONVLSTM_REQUEST_TIMEOUT_S": "0.2"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        r = predict(server, horizon=8)  # eight model runs: far more than 0.2 s here
        assert r.status_code == 504, r.text
        assert "0.2 s deadline" in r.json()["error"]["message"]


def metrics_once_dropped(client: httpx.Client, within_s: float = 10.0) -> str:
    """/metrics once a client_gone drop is counted (the worker skips the job only when
    it reaches it), or as it stands after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        text = client.get("/metrics").text
        dropped = value(
            text, "convlstm_dropped_requests_total", model="convlstm", reason="client_gone"
        )
        if dropped or time.monotonic() >= deadline:
            return text
        time.sleep(0.1)


def test_work_for_a_gone_client_is_dropped_before_the_model() -> None:
    env = {"CONVLSTM_MAX_BATCH_SIZE": "1"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        with ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(predict, server, 8)
            time.sleep(0.3)  # let the long request reach the model first
            with pytest.raises(httpx.ReadTimeout):
                predict(server, timeout=0.3)  # queued behind it; the client gives up
            assert long.result().status_code == 200
        with server.client() as client:
            text = metrics_once_dropped(client)
            dropped = value(
                text, "convlstm_dropped_requests_total", model="convlstm", reason="client_gone"
            )
            assert dropped == 1
            assert value(text, "convlstm_predicted_frames_total", model="convlstm") == 8


def test_abandoned_oip_request_is_dropped_before_the_model_and_counted() -> None:
    """The Open Inference Protocol front has the same life cycle as /predict: a request
    whose client has left never reaches the model and frees its place in the queue."""
    pixels = np.rint(sequence() * 255).astype(np.uint8)[None]
    body = {
        "inputs": [
            {
                "name": "frames",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "data": pixels.reshape(-1).tolist(),
            }
        ]
    }
    env = {"CONVLSTM_MAX_BATCH_SIZE": "1"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        with ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(predict, server, 8)
            time.sleep(0.3)  # let the long request reach the model first
            with server.client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
                client.post("/v2/models/convlstm/infer", json=body)  # queued; gives up
            assert long.result().status_code == 200
        with server.client() as client:
            text = metrics_once_dropped(client)
            dropped = value(
                text, "convlstm_dropped_requests_total", model="convlstm", reason="client_gone"
            )
            assert dropped == 1
            # Only the long request's eight frames were predicted.
            assert value(text, "convlstm_predicted_frames_total", model="convlstm") == 8
            assert value(text, "convlstm_queue_depth", model="convlstm") == 0
            assert client.post("/v2/models/convlstm/infer", json=body).status_code == 200


def test_sigterm_finishes_accepted_requests_and_exits_zero() -> None:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_SHUTDOWN_GRACE_S": "30"}) as server:
        with ThreadPoolExecutor(max_workers=4) as pool:
            accepted = [pool.submit(predict, server, 3) for _ in range(3)]
            with server.client() as client:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    in_flight = value(
                        client.get("/metrics").text, "convlstm_http_requests_in_flight"
                    )
                    if in_flight and in_flight >= 3:
                        break
                    time.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                ready = client.get("/readyz")
                oip_live = client.get("/v2/health/live")
                oip_ready = client.get("/v2/health/ready")
                refused = client.post("/predict", json={"frames": FRAMES})
            results = [f.result() for f in accepted]
        assert ready.status_code == 503
        assert ready.json()["error"]["message"] == "the service is shutting down"
        # Liveness stays up while draining; OIP readiness answers for itself.
        assert oip_live.status_code == 200 and oip_live.json() == {"live": True}
        assert oip_ready.status_code == 503 and oip_ready.json() == {"ready": False}
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        assert [r.status_code for r in results] == [200, 200, 200]
        assert all(len(r.json()["frames"]) == 3 for r in results)
        assert server.process.wait(timeout=30) == 0


def test_api_key_guards_predict_and_model_but_not_health() -> None:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_API_KEY": "s3cret-key"}) as server:
        with server.client() as client:
            body = {"frames": FRAMES}
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
                r = client.post("/predict", json=body, headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"] == "Bearer"
                assert "API key" in r.json()["error"]["message"]
            assert client.get("/v1/model").status_code == 401
            assert (
                client.post("/predict", json=body, headers={"X-API-Key": "s3cret-key"}).status_code
                == 200
            )
            bearer = {"Authorization": "Bearer s3cret-key"}
            assert client.post("/predict", json=body, headers=bearer).status_code == 200
            assert client.get("/v1/model", headers=bearer).status_code == 200
            for path in ("/healthz", "/readyz", "/metrics"):
                assert client.get(path).status_code == 200, path


def test_request_id_in_response_and_json_logs() -> None:
    env = {"CONVLSTM_LOG_FORMAT": "json"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        with server.client() as client:
            given = client.post(
                "/predict", json={"frames": FRAMES}, headers={"X-Request-ID": "abc-123"}
            )
            made = client.post("/predict", json={"frames": FRAMES[:3]})
            odd = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
        assert given.headers["x-request-id"] == "abc-123"
        assert len(made.headers["x-request-id"]) == 32
        assert odd.headers["x-request-id"] != "bad id with spaces"
        server.process.terminate()
        server.process.wait(timeout=30)
        out = server.output()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    access = [r for r in lines if r["logger"] == "service.access"]
    assert any(r["request_id"] == "abc-123" and " 200 " in r["message"] for r in access)
    assert any(
        r["request_id"] == made.headers["x-request-id"] and " 422 " in r["message"] for r in access
    )
    assert all({"time", "level", "logger", "message", "request_id"} <= r.keys() for r in lines)


# Hostile bodies that must each get a clear 4xx and leave the server serving.
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


HOSTILE: dict[str, tuple[bytes, dict[str, str], int]] = {
    "PNG declaring 60000x60000": (
        json.dumps({"frames": [_b64(png_declaring(60_000, 60_000))] * 15}).encode(),
        {},
        422,
    ),
    "JSON nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, {}, 400),
    "JSON nested 20000 deep": (b"[" * 20_000 + b"]" * 20_000, {}, 400),
    # Past the limit derived from the committed model (18.5 MB at batch 8).
    "19 MB body": (b'{"frames": ["' + b"A" * 19_000_000 + b'"]}', {}, 413),
    "5000 frames": (json.dumps({"frames": ["AAAA"] * 5000}).encode(), {}, 422),
    "latin-1 bytes": ('{"frames": ["é"]}'.encode("latin-1"), {}, 400),
    "null body": (b"null", {}, 422),
    "huge integer horizon": (json.dumps({"frames": FRAMES, "horizon": 10**40}).encode(), {}, 422),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_input_gets_a_clear_4xx(server: RunningServer, case: str) -> None:
    body, headers, status = HOSTILE[case]
    with server.client() as client:
        try:
            r = client.post(
                "/predict", content=body, headers={"content-type": "application/json", **headers}
            )
        except httpx.RemoteProtocolError:
            pytest.fail("the server dropped the connection instead of answering")
        assert r.status_code == status, r.text[:300]
        assert r.json()["error"]["message"], r.text
        assert "Traceback" not in r.text
        assert client.post("/predict", json={"frames": FRAMES}).status_code == 200
    assert server.process.poll() is None


def test_slow_streamed_body_still_counts_against_the_limit(server: RunningServer) -> None:
    stop = threading.Event()

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(300):  # 19.7 MB, past the derived limit
            if stop.is_set():
                return
            yield b" " * 65536

    with server.client() as client:
        r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    stop.set()
    assert r.status_code == 413


def raw_post(server: RunningServer, head_lines: list[str], body: bytes) -> tuple[int, bytes]:
    """Send bytes httpx would refuse to send; the status and body of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    head = "\r\n".join(["POST /predict HTTP/1.1", f"Host: {host}", *head_lines, "", ""])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("length", ["99999999", "12abc", "-5"])
def test_bad_content_length_is_refused_before_reading(server: RunningServer, length: str) -> None:
    lines = ["Content-Type: application/json", f"Content-Length: {length}", "Connection: close"]
    status, body = raw_post(server, lines, b"{}")
    assert status in (400, 413), body
    if status == 413:
        assert b"larger than the limit" in body
    with server.client() as client:
        assert client.post("/predict", json={"frames": FRAMES}).status_code == 200
