"""OpenTelemetry tracing, end to end: the real server process exports its spans over
OTLP/HTTP to a receiver on loopback (``bench.otlp_receiver``, which decodes them with
``opentelemetry-proto``). A ``/predict`` continues the caller's trace; concurrent
requests share one model run span, linked both ways; a malformed ``traceparent`` starts
a new trace; an unsampled parent is honoured (the standard parent-based sampler); gRPC
calls continue the trace from their metadata; the JSON log lines carry the ids."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from service.app import create_app
from service.config import Settings
from service.tracing import wanted
from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server

REQUEST = json.loads((COMMITTED_MODEL.parents[1] / "examples" / "request.json").read_text())
CONCURRENT = 4


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(receiver: OtlpReceiver) -> Iterator[RunningServer]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        # Export every 50 ms rather than every 5 s: the test waits for the spans.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "convlstm-under-test",
        "CONVLSTM_LOG_FORMAT": "json",
        # A window long enough that the concurrent requests below share one batch.
        "CONVLSTM_MAX_BATCH_WAIT_MS": "300",
        "CONVLSTM_BATCH_COHORT_WAIT": "0",
    }
    with run_server(COMMITTED_MODEL, env=env) as running:
        yield running


def traceparent(trace_id: str, parent: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{parent}-{'01' if sampled else '00'}"


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def has(trace_id: str, *names: str) -> Any:
    def holds(spans: list[ReceivedSpan]) -> bool:
        present = {s.name for s in spans if s.trace_id == trace_id}
        return all(n in present for n in names)

    return holds


def test_predict_continues_the_callers_trace(server: RunningServer, receiver: OtlpReceiver) -> None:
    trace_id, parent = new_ids()
    answer = httpx.post(
        f"{server.url}/predict",
        json=REQUEST,
        headers={"traceparent": traceparent(trace_id, parent)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    names = ("POST /predict", "decode", "queue wait", "inference", "encode")
    receiver.wait_for(has(trace_id, *names))
    spans = receiver.of_trace(trace_id)
    (root,) = by_name(spans, "POST /predict")
    assert root.parent_span_id == parent
    assert root.service_name == "convlstm-under-test"
    assert root.attributes["http.route"] == "/predict", root.attributes
    for name in ("decode", "queue wait", "inference", "encode"):
        (child,) = by_name(spans, name)
        assert child.parent_span_id == root.span_id, name
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    # Horizon 3 is one batch of three model runs: one run span, in this request's trace.
    (run,) = by_name(spans, "model run")
    assert run.parent_span_id == root.span_id
    assert run.attributes["convlstm.model"] == "convlstm"
    assert run.attributes["convlstm.provider"] == "CPUExecutionProvider"
    assert run.attributes["convlstm.batch_size"] == 1
    assert run.attributes["convlstm.model_version"]
    assert (trace_id, root.span_id) in run.links
    (inference,) = by_name(spans, "inference")
    assert inference.links == [(trace_id, run.span_id)]


def test_concurrent_requests_share_one_linked_run(
    server: RunningServer, receiver: OtlpReceiver
) -> None:
    ids = [new_ids() for _ in range(CONCURRENT)]

    def post(trace_id: str, parent: str) -> int:
        body = {**REQUEST, "horizon": 1}
        headers = {"traceparent": traceparent(trace_id, parent)}
        return httpx.post(
            f"{server.url}/predict", json=body, headers=headers, timeout=60
        ).status_code

    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert list(pool.map(lambda ij: post(*ij), ids)) == [200] * CONCURRENT
    for trace_id, _ in ids:
        receiver.wait_for(has(trace_id, "POST /predict", "inference"))
    roots = {t: by_name(receiver.of_trace(t), "POST /predict")[0] for t, _ in ids}
    inferences = {t: by_name(receiver.of_trace(t), "inference")[0] for t, _ in ids}
    # Each request links to the run it was part of; the 300 ms window batches them.
    runs = {inference.links[0] for inference in inferences.values()}
    shared = [r for r in runs if sum(i.links[0] == r for i in inferences.values()) > 1]
    assert shared, f"no two of {CONCURRENT} concurrent requests shared a batch: {runs}"
    run_trace, run_id = shared[0]
    (run,) = [s for s in receiver.of_trace(run_trace) if s.span_id == run_id]
    assert run.name == "model run"
    members = [t for t, i in inferences.items() if i.links[0] == (run_trace, run_id)]
    assert run.attributes["convlstm.batch_size"] == len(members)
    # The run links back to every request in it, and lives in the trace of one of them.
    assert {(t, roots[t].span_id) for t in members} <= set(run.links)
    assert run_trace in members


def test_stream_step_traces_its_state_and_its_step_graph_run(
    server: RunningServer, receiver: OtlpReceiver
) -> None:
    opened = httpx.post(f"{server.url}/v1/streams", json={"model": "convlstm"}, timeout=30)
    assert opened.status_code == 201, opened.text
    stream_id = opened.json()["stream_id"]
    trace_id, parent = new_ids()
    answer = httpx.post(
        f"{server.url}/v1/streams/{stream_id}",
        json={"frames": REQUEST["frames"][:2]},
        headers={"traceparent": traceparent(trace_id, parent)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    names = ("stream.state.load", "decode", "model run", "stream.state.store", "encode")
    receiver.wait_for(has(trace_id, *names))
    spans = receiver.of_trace(trace_id)
    (root,) = by_name(spans, "POST /v1/streams/{stream_id}")
    assert root.attributes["http.route"] == "/v1/streams/{stream_id}"
    for name in ("stream.state.load", "decode", "queue wait", "stream.state.store", "encode"):
        assert by_name(spans, name)[0].parent_span_id == root.span_id, name
    # Two frames are one job of the streams' batcher: one batch, one run span.
    (run,) = by_name(spans, "model run")
    assert run.attributes["convlstm.graph"] == "step"
    assert run.attributes["convlstm.model"] == "convlstm"
    httpx.delete(f"{server.url}/v1/streams/{stream_id}", timeout=30)


def test_malformed_traceparent_starts_a_new_trace(
    server: RunningServer, receiver: OtlpReceiver
) -> None:
    bad_trace = "ab" * 16
    header = f"00-{bad_trace}-not-a-span-id-01"
    answer = httpx.post(
        f"{server.url}/predict",
        json={**REQUEST, "horizon": 1},
        headers={"traceparent": header, "x-request-id": "malformed-traceparent"},
        timeout=60,
    )
    assert answer.status_code == 200
    assert receiver.of_trace(bad_trace) == []
    # The access line of that request names the trace the server started instead.
    line = next(
        json.loads(text)
        for text in server.output().splitlines()
        if '"malformed-traceparent"' in text and "POST /predict" in text
    )
    trace_id = line["trace_id"]
    assert len(trace_id) == 32 and trace_id != bad_trace
    assert len(line["span_id"]) == 16
    spans = receiver.wait_for(has(trace_id, "POST /predict"))
    (root,) = [s for s in spans if s.trace_id == trace_id and s.name == "POST /predict"]
    assert root.parent_span_id == ""


def test_unsampled_parent_records_nothing(server: RunningServer, receiver: OtlpReceiver) -> None:
    sampled, parent = new_ids()
    unsampled, _ = new_ids()
    for trace_id, flag in ((unsampled, False), (sampled, True)):
        headers = {"traceparent": traceparent(trace_id, parent, sampled=flag)}
        body = {**REQUEST, "horizon": 1}
        assert httpx.post(
            f"{server.url}/predict", json=body, headers=headers, timeout=60
        ).is_success
    # Spans are exported in order; once the sampled request's are in, the other's would be.
    receiver.wait_for(has(sampled, "POST /predict", "encode"))
    assert receiver.of_trace(unsampled) == []


def test_grpc_call_continues_the_trace(server: RunningServer, receiver: OtlpReceiver) -> None:
    trace_id, parent = new_ids()
    x = np.random.default_rng(0).random((1, 15, 40, 40, 3), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="convlstm")
    request.inputs.add(name="frames", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(str(server.grpc_address)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, metadata=[("traceparent", traceparent(trace_id, parent))])
    name = "/inference.GRPCInferenceService/ModelInfer"
    receiver.wait_for(has(trace_id, name, "inference", "model run"))
    spans = receiver.of_trace(trace_id)
    (root,) = by_name(spans, name)
    assert root.parent_span_id == parent
    for child in ("decode", "queue wait", "inference"):
        assert by_name(spans, child)[0].parent_span_id == root.span_id, child


def test_health_routes_make_no_spans(server: RunningServer, receiver: OtlpReceiver) -> None:
    trace_id, parent = new_ids()
    headers = {"traceparent": traceparent(trace_id, parent)}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}", headers=headers, timeout=10).is_success
    marker, _ = new_ids()
    httpx.post(
        f"{server.url}/predict",
        json={**REQUEST, "horizon": 1},
        headers={"traceparent": traceparent(marker, parent)},
        timeout=60,
    )
    receiver.wait_for(has(marker, "encode"))
    assert receiver.of_trace(trace_id) == []


def test_tracing_is_off_unless_asked() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert not wanted(None, {})
    assert wanted(None, endpoint)
    assert wanted(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert wanted(True, {})
    assert not wanted(False, endpoint)
    assert not wanted(True, {"OTEL_SDK_DISABLED": "true"})
    # Off, the request path has no tracing middleware at all.
    app = create_app(Settings(model_path=COMMITTED_MODEL, tracing=False, grpc_port=0))
    assert "OpenTelemetryMiddleware" not in [
        getattr(m.cls, "__name__", "") for m in app.user_middleware
    ]
    assert "RequestObserver" in [getattr(m.cls, "__name__", "") for m in app.user_middleware]


def test_an_exporter_the_service_lacks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValidationError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"):
        Settings()
    # Tracing turned off explicitly: the exporter's settings are none of its business.
    assert Settings(tracing=False).tracing is False
