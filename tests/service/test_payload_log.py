"""The payload log (``CONVLSTM_PAYLOAD_LOG_URL``): the app in this process sends its
CloudEvents to a real HTTP sink on loopback. What arrives is KServe's binary content mode
(``ce-*`` headers, the body as sent or answered); no header of the client's, and so no
API key, ever reaches the sink; a slow or unreachable sink never slows or fails a request,
and what it loses is counted and warned about once per interval; a bad URL or mode is
refused at start-up."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from pydantic import ValidationError

from bench.loopback import loopback_server
from bench.server import free_port
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app, start_failure

pytestmark = pytest.mark.anyio
MODEL = COMMITTED_MODEL.parent / "cnn_lstm.onnx"
KEY = "payload-log-secret-key"
REQUEST = json.loads((COMMITTED_MODEL.parents[1] / "examples" / "request.json").read_text())


@dataclass
class Sink:
    url: str = ""
    delay_s: float = 0.0
    events: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= count:
                    return list(self.events)
            time.sleep(0.02)
        raise TimeoutError(f"{len(self.events)} of {count} events arrived")


@contextmanager
def sink(delay_s: float = 0.0) -> Iterator[Sink]:
    """An HTTP server on loopback that keeps every POST's headers and body."""
    received = Sink(delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(received.delay_s)
            with received.lock:
                received.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    with loopback_server(Handler) as server:
        received.url = f"http://127.0.0.1:{server.server_port}/events"
        yield received


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def settings(url: str, **more: Any) -> Settings:
    return Settings(
        model_path=MODEL, warmup_runs=0, grpc_port=0, payload_log_url=url, api_key=KEY, **more
    )


def counted(app: Any, outcome: str) -> float:
    value = app.state.registry.metrics.registry.get_sample_value(
        "convlstm_payload_log_events_total",
        {"type": "org.kubeflow.serving.inference.request", "outcome": outcome},
    )
    return float(value or 0.0)


@pytest.fixture(scope="module")
def loopback_sink() -> Iterator[Sink]:
    with sink() as s:
        yield s


async def test_request_and_answer_arrive_as_kserve_cloudevents(loopback_sink: Sink) -> None:
    body = json.dumps(REQUEST).encode()
    async with running_app(settings(loopback_sink.url)) as app, asgi_client(app) as client:
        # Not inference: never logged.
        assert (await client.get("/v1/models", headers={"X-API-Key": KEY})).status_code == 200
        answer = await client.post(
            "/predict",
            content=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {KEY}",
                "X-Request-ID": "payload-1",
            },
        )
        assert answer.status_code == 200, answer.text
        events = loopback_sink.wait_for(2)
        assert counted(app, "sent") == 1
    assert len(events) == 2
    (request_headers, request_body), (answer_headers, answer_body) = events
    assert request_headers["ce-type"] == "org.kubeflow.serving.inference.request"
    assert answer_headers["ce-type"] == "org.kubeflow.serving.inference.response"
    for headers in (request_headers, answer_headers):
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-id"] == "payload-1"
        assert headers["ce-inferenceservicename"] == "cnn_lstm"
        assert headers["ce-component"] == "predictor"
        assert headers["ce-endpoint"] == "default"
        assert headers["ce-subject"] == "/predict"
        assert headers["ce-source"].startswith("http://")
        assert headers["ce-time"].endswith("Z")
        assert headers["content-type"] == "application/json"
    assert request_body == body
    assert answer_body == answer.content
    # The client's headers, and so its key, never reach the sink.
    for headers, sent in events:
        assert KEY not in json.dumps(headers) and KEY.encode() not in sent
        assert "authorization" not in headers and "x-request-id" not in headers


async def test_metadata_mode_sends_both_events_without_bodies(loopback_sink: Sink) -> None:
    already = len(loopback_sink.events)
    async with (
        running_app(settings(loopback_sink.url, payload_log_mode="metadata")) as app,
        asgi_client(app) as client,
    ):
        answer = await client.post("/predict", json=REQUEST, headers={"X-API-Key": KEY})
        assert answer.status_code == 200
        events = loopback_sink.wait_for(already + 2)[already:]
    assert [h["ce-type"].rsplit(".", 1)[1] for h, _ in events] == ["request", "response"]
    assert [body for _, body in events] == [b"", b""]
    assert all("content-type" not in h for h, _ in events)


async def test_a_refused_request_logs_no_answer(loopback_sink: Sink) -> None:
    already = len(loopback_sink.events)
    async with (
        running_app(settings(loopback_sink.url, payload_log_mode="all")) as app,
        asgi_client(app) as client,
    ):
        answer = await client.post(
            "/predict", json={"frames": ["bm90IGEgcG5n"]}, headers={"X-API-Key": KEY}
        )
        assert answer.status_code == 422
        events = loopback_sink.wait_for(already + 1)[already:]
        time.sleep(0.2)
    assert [h["ce-type"] for h, _ in loopback_sink.events[already:]] == [
        "org.kubeflow.serving.inference.request"
    ]
    assert json.loads(events[0][1]) == {"frames": ["bm90IGEgcG5n"]}


async def test_unreachable_sink_fails_no_request(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody"  # nothing listens there
    async with running_app(settings(url)) as app, asgi_client(app) as client:
        for _ in range(3):
            answer = await client.post("/predict", json=REQUEST, headers={"X-API-Key": KEY})
            assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while counted(app, "failed") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counted(app, "failed") == 3
        assert counted(app, "sent") == 0
    warnings = [r for r in caplog.records if r.name == "service.payload_log" and r.levelno >= 30]
    # One warning in the interval, and one at shutdown with what was left to say.
    assert 1 <= len(warnings) <= 2
    assert "failed" in warnings[0].getMessage()


async def test_slow_sink_never_slows_requests(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.payload_log")
    requests = 6
    with sink(delay_s=1.0) as slow:
        async with (
            running_app(settings(slow.url, payload_log_queue=1)) as app,
            asgi_client(app) as client,
        ):
            start = time.perf_counter()
            for _ in range(requests):
                answer = await client.post("/predict", json=REQUEST, headers={"X-API-Key": KEY})
                assert answer.status_code == 200
            elapsed = time.perf_counter() - start
            dropped = counted(app, "dropped")
            dropped_answers = app.state.registry.metrics.registry.get_sample_value(
                "convlstm_payload_log_events_total",
                {"type": "org.kubeflow.serving.inference.response", "outcome": "dropped"},
            )
    # 12 events against a sink taking 1 s each and a queue of one: most are dropped, and
    # the requests did not wait for the sink (12 s had they).
    assert dropped + (dropped_answers or 0) >= 2 * requests - 4
    assert elapsed < requests * 1.0
    in_interval = [
        r for r in caplog.records if r.name == "service.payload_log" and "dropped" in r.getMessage()
    ]
    assert 1 <= len(in_interval) <= 2


def test_bad_url_or_mode_is_refused_at_start_up() -> None:
    for url, why in (
        ("ftp://sink.example/events", "scheme 'ftp'"),
        ("http:///events", "has no host"),
        ("http://sink.example:99999/", "invalid port"),
    ):
        with pytest.raises(ValidationError, match=why):
            Settings(payload_log_url=url)
    with pytest.raises(ValidationError, match="payload_log_mode"):
        Settings(payload_log_url="http://127.0.0.1:9/", payload_log_mode="everything")
    code, output = start_failure(MODEL, env={"CONVLSTM_PAYLOAD_LOG_URL": "sink:9000"})
    assert code == 2
    assert "invalid setting payload_log_url" in output and "scheme 'sink'" in output
