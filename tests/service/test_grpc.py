"""The Open Inference Protocol over gRPC, driven by Triton's own client
(``tritonclient.grpc``, unchanged) and the standard health client against the real
server process on loopback: the same answers, errors and API key as HTTP."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.service.conftest import COMMITTED_MODEL, RunningServer, run_server, start_failure
from tests.service.test_reliability import metrics_once_dropped
from tests.service.test_server import value

KEY = "grpc-test-key"
BEARER = [("authorization", f"Bearer {KEY}")]
SHAPE = [2, 15, 40, 40, 3]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_API_KEY": KEY}) as running:
        assert running.grpc_address is not None
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(str(server.grpc_address)) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[Any]:
    """The generated stub itself, for requests tritonclient never sends (typed contents,
    a raw tensor of the wrong length)."""
    with grpc.insecure_channel(str(server.grpc_address)) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def frames(seed: int = 0, shape: list[int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def infer_input(x: np.ndarray, datatype: str = "FP32", name: str = "frames") -> Any:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def http_answer(http: httpx.Client, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "frames", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip
    answer = http.post("/v2/models/convlstm/infer", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def http_error(http: httpx.Client, body: dict[str, Any], model: str = "convlstm") -> str:
    answer = http.post(f"/v2/models/{model}/infer", json=body)
    assert answer.status_code >= 400, answer.text
    message: str = answer.json()["error"]
    return message


def grpc_error(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details()


def test_health_readiness_and_server_metadata_need_no_key(
    client: triton.InferenceServerClient, http: httpx.Client, server: RunningServer
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("convlstm")
    assert client.is_model_ready("cnn_lstm")
    meta = client.get_server_metadata(as_json=True)
    assert meta == http.get("/v2").json()
    with grpc.insecure_channel(str(server.grpc_address)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        code, _ = grpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="x")))
        assert code == grpc.StatusCode.NOT_FOUND


def test_unknown_model_readiness_is_not_found(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.is_model_ready("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_model_metadata_is_the_http_one(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    got = client.get_model_metadata("convlstm", headers={"x-api-key": KEY}, as_json=True)
    want = http.get("/v2/models/convlstm").json()
    assert got["name"] == want["name"] and got["platform"] == want["platform"]
    assert got["versions"] == want["versions"]
    for kind in ("inputs", "outputs"):
        assert [
            {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
            for t in got[kind]
        ] == want[kind]


def test_infer_equals_the_http_answer(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    x = frames(1)
    result = client.infer("convlstm", [infer_input(x)], headers={"x-api-key": KEY})
    got = result.as_numpy("next_frame")
    assert got.shape == (2, 40, 40, 3)
    np.testing.assert_allclose(got, http_answer(http, x), atol=1e-6)
    # UINT8 pixels, scaled by 1/255 as over HTTP.
    pixels = np.round(x * 255).astype(np.uint8)
    result = client.infer("convlstm", [infer_input(pixels, "UINT8")], headers=dict(BEARER))
    np.testing.assert_allclose(
        result.as_numpy("next_frame"),
        http_answer(http, pixels.astype(np.float32) / np.float32(255)),
        atol=1e-6,
    )


def test_typed_contents_equal_raw(stub: Any, client: triton.InferenceServerClient) -> None:
    x = frames(2, [1, 15, 40, 40, 3])
    request = pb.ModelInferRequest(model_name="convlstm", id="typed")
    tensor = request.inputs.add(name="frames", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    answer = stub.ModelInfer(request, metadata=BEARER)
    assert answer.id == "typed" and answer.model_name == "convlstm"
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(answer.outputs[0].shape)
    raw = client.infer("convlstm", [infer_input(x)], headers=dict(BEARER))
    np.testing.assert_allclose(got, raw.as_numpy("next_frame"), atol=1e-6)


def test_bad_inputs_get_the_http_message_and_invalid_argument(
    client: triton.InferenceServerClient, http: httpx.Client, stub: Any
) -> None:
    def refused(tensor: Any, model: str = "convlstm") -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor], headers=dict(BEARER))
        return str(caught.value.status()), str(caught.value.message())

    x = frames(3, [1, 14, 40, 40, 3])
    status, message = refused(infer_input(x))
    assert status == "StatusCode.INVALID_ARGUMENT"
    body = {"inputs": [{"name": "frames", "shape": [1, 14, 40, 40, 3], "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip
    assert message == http_error(http, body)

    status, message = refused(infer_input(frames(4, [1, 15, 40, 40, 3]).astype(np.float64), "FP64"))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message == "inputs[0].datatype: 'FP64' is not one of ['FP32', 'UINT8']"

    status, message = refused(infer_input(frames(5, [1, 15, 40, 40, 3]), name="x"))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        "inputs: the model takes one input named 'frames', got ['x']",
    )

    status, message = refused(infer_input(frames(6, [1, 15, 40, 40, 3])), model="nope")
    assert status == "StatusCode.NOT_FOUND"
    assert message == http_error(http, {"inputs": []}, model="nope")

    # A raw tensor shorter than its shape says, and one with typed contents beside it.
    request = pb.ModelInferRequest(model_name="convlstm")
    request.inputs.add(name="frames", datatype="FP32", shape=[1, 15, 40, 40, 3])
    request.raw_input_contents.append(b"\0" * 1000)
    code, details = grpc_error(lambda: stub.ModelInfer(request, metadata=BEARER))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1000" in details, details
    request.inputs[0].contents.fp32_contents.extend([0.5])
    code, details = grpc_error(lambda: stub.ModelInfer(request, metadata=BEARER))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "both" in details, details
    # FP32 values in the wrong field; a negative dimension.
    request = pb.ModelInferRequest(model_name="convlstm")
    tensor = request.inputs.add(name="frames", datatype="FP32", shape=[1, 15, 40, 40, 3])
    tensor.contents.int_contents.extend([1, 2])
    code, details = grpc_error(lambda: stub.ModelInfer(request, metadata=BEARER))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fp32_contents" in details, details
    request.inputs[0].contents.Clear()
    request.inputs[0].shape[0] = -1
    code, details = grpc_error(lambda: stub.ModelInfer(request, metadata=BEARER))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inputs.0.shape.0" in details, details


def test_message_over_the_limit_is_resource_exhausted(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="convlstm")
    request.inputs.add(name="frames", datatype="FP32", shape=[9, 15, 40, 40, 3])
    request.raw_input_contents.append(b"\0" * (9 * 15 * 40 * 40 * 3 * 4))
    code, _ = grpc_error(lambda: stub.ModelInfer(request, metadata=BEARER))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_exceeded(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "convlstm", [infer_input(frames(7))], headers=dict(BEARER), client_timeout=0.001
        )
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_api_key(client: triton.InferenceServerClient, stub: Any) -> None:
    x = infer_input(frames(8, [1, 15, 40, 40, 3]))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("convlstm", [x], headers=headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "missing or wrong API key" in str(caught.value.message())
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("convlstm")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert (
        client.infer("convlstm", [x], headers={"x-api-key": KEY}).as_numpy("next_frame") is not None
    )
    assert client.infer("convlstm", [x], headers={"authorization": f"bearer {KEY}"}) is not None


def test_sequence_over_grpc_equals_the_http_sequence(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    x = frames(9, [1, 15, 40, 40, 3])
    got = client.infer(
        "convlstm",
        [infer_input(x)],
        headers=dict(BEARER),
        sequence_id=7,
        sequence_start=True,
        sequence_end=True,
    ).as_numpy("next_frame")
    body = {
        "inputs": [{"name": "frames", "shape": [1, 15, 40, 40, 3], "datatype": "FP32",
                    "data": x.reshape(-1).tolist()}],
        "parameters": {"sequence_id": 8, "sequence_start": True, "sequence_end": True},
    }  # fmt: skip
    answer = http.post("/v2/models/convlstm/infer", json=body)
    assert answer.status_code == 200, answer.text
    want = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(got.shape)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("convlstm", [infer_input(x)], headers=dict(BEARER), sequence_id=7)
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "was ended" in str(caught.value.message())


def test_grpc_calls_are_in_the_metrics(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    client.get_model_metadata("convlstm", headers=dict(BEARER))
    text = http.get("/metrics").text
    assert 'route="/inference.GRPCInferenceService/ModelMetadata",status="200"' in text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="401"' in text


def stream(
    server: RunningServer, send: Any, headers: dict[str, str] | None = None
) -> list[tuple[Any, Any]]:
    """Open a ``ModelStreamInfer`` call with tritonclient, ``send(client)`` on it, close
    it, and return every (result, error) the callback got, in order."""
    got: list[tuple[Any, Any]] = []
    with triton.InferenceServerClient(str(server.grpc_address)) as c:
        c.start_stream(callback=lambda result, error: got.append((result, error)), headers=headers)
        send(c)
        c.stop_stream()
    return got


def test_stream_answers_plain_requests_in_order(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    xs = [frames(20 + i, [1, 15, 40, 40, 3]) for i in range(4)]
    bad = frames(30, [1, 14, 40, 40, 3])

    def send(c: triton.InferenceServerClient) -> None:
        for i, x in enumerate(xs[:2]):
            c.async_stream_infer("convlstm", [infer_input(x)], request_id=str(i))
        c.async_stream_infer("convlstm", [infer_input(bad)], request_id="bad")
        for i, x in enumerate(xs[2:], start=2):
            c.async_stream_infer("convlstm", [infer_input(x)], request_id=str(i))

    got = stream(server, send, headers=dict(BEARER))
    assert len(got) == 5
    # The bad request gets its error; the stream carries on with the next ones.
    result, error = got[2]
    assert result is None and "inputs[0].shape" in str(error.message()), error
    answers = [g for i, g in enumerate(got) if i != 2]
    for i, (x, (result, error)) in enumerate(zip(xs, answers, strict=True)):
        assert error is None, error
        assert result.get_response().id == str(i)
        want = client.infer("convlstm", [infer_input(x)], headers=dict(BEARER))
        np.testing.assert_allclose(
            result.as_numpy("next_frame"), want.as_numpy("next_frame"), atol=1e-6
        )


def test_stream_steps_a_sequence_frame_by_frame(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    x = frames(40, [1, 15, 40, 40, 3])

    def send(c: triton.InferenceServerClient) -> None:
        for t in range(15):
            c.async_stream_infer(
                "convlstm",
                [infer_input(x[:, t : t + 1])],
                sequence_id=99,
                sequence_start=t == 0,
                sequence_end=t == 14,
            )

    got = stream(server, send, headers=dict(BEARER))
    assert len(got) == 15 and all(error is None for _, error in got), got
    last = got[-1][0].as_numpy("next_frame")
    window = client.infer("convlstm", [infer_input(x)], headers=dict(BEARER))
    np.testing.assert_allclose(last, window.as_numpy("next_frame"), atol=1e-5)


def test_stream_needs_the_api_key(server: RunningServer) -> None:
    def send(c: triton.InferenceServerClient) -> None:
        # The server may have refused the call before this request is sent: then the
        # client refuses to send it, and the refusal reaches the callback all the same.
        with contextlib.suppress(InferenceServerException):
            c.async_stream_infer("convlstm", [infer_input(frames(50, [1, 15, 40, 40, 3]))])

    got = stream(server, send)
    assert len(got) == 1
    result, error = got[0]
    assert result is None and error.status() == "StatusCode.UNAUTHENTICATED", error


def test_sigterm_finishes_grpc_calls_refuses_new_ones_ends_streams_and_exits_zero() -> None:
    x = frames(60, [2, 15, 40, 40, 3])
    with run_server(COMMITTED_MODEL, env={"CONVLSTM_SHUTDOWN_GRACE_S": "30"}) as server:
        address = str(server.grpc_address)
        ended: list[Any] = []
        with triton.InferenceServerClient(address) as streaming:
            streaming.start_stream(callback=lambda result, error: ended.append((result, error)))
            streaming.async_stream_infer("convlstm", [infer_input(x[:1])])

            def long_call() -> np.ndarray:
                with triton.InferenceServerClient(address) as c:
                    params = {"horizon": 3}
                    out: np.ndarray = c.infer(
                        "convlstm", [infer_input(x)], parameters=params
                    ).as_numpy("next_frame")
                    return out

            with ThreadPoolExecutor(max_workers=3) as pool:
                accepted = [pool.submit(long_call) for _ in range(3)]
                with server.client() as http:
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        text = http.get("/metrics").text
                        if value(text, "convlstm_http_requests_in_flight") >= 3:
                            break
                        time.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                with grpc.insecure_channel(address) as channel:
                    health = health_pb2_grpc.HealthStub(channel)
                    status = health.Check(health_pb2.HealthCheckRequest()).status
                with triton.InferenceServerClient(address) as c:
                    assert not c.is_server_ready()
                    with pytest.raises(InferenceServerException) as refused:
                        c.infer("convlstm", [infer_input(x[:1])])
                results = [f.result(timeout=60) for f in accepted]
            assert server.process.wait(timeout=30) == 0
            streaming.stop_stream()
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message() == "the service is shutting down; retry on another replica"
    assert [r.shape for r in results] == [(2, 3, 40, 40, 3)] * 3
    # The stream's one request was answered; then the stream ended with a status.
    assert ended[0][1] is None and ended[-1][1] is not None, ended


def test_full_queue_is_resource_exhausted_and_a_gone_call_frees_its_slot() -> None:
    x = frames(70, [1, 15, 40, 40, 3])
    env = {"CONVLSTM_MAX_QUEUE": "2", "CONVLSTM_MAX_BATCH_SIZE": "1"}
    with run_server(COMMITTED_MODEL, env=env) as server:
        address = str(server.grpc_address)

        def call(horizon: int, timeout: float | None = None) -> str:
            with triton.InferenceServerClient(address) as c:
                try:
                    c.infer(
                        "convlstm",
                        [infer_input(x)],
                        parameters={"horizon": horizon},
                        client_timeout=timeout,
                    )
                except InferenceServerException as err:
                    return str(err.status())
                return "OK"

        with ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(call, 8)
            time.sleep(0.3)  # let the long call reach the model first
            # Queued behind it, past its deadline: gRPC cancels it on the server too.
            assert call(1, timeout=0.3) == "StatusCode.DEADLINE_EXCEEDED"
            assert long.result() == "OK"
        with server.client() as http:
            text = metrics_once_dropped(http)
        assert (
            value(text, "convlstm_dropped_requests_total", model="convlstm", reason="client_gone")
            == 1
        )
        # Only the long call's eight frames were predicted.
        assert value(text, "convlstm_predicted_frames_total", model="convlstm") == 8

        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda _: call(2), range(12)))
        assert set(statuses) == {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, statuses


def test_a_taken_grpc_port_stops_the_start_with_a_reason(server: RunningServer) -> None:
    # Another server's gRPC port (gRPC would share it, by SO_REUSEPORT, unless told not to).
    port = int(str(server.grpc_address).rsplit(":", 1)[1])
    code, out = start_failure(COMMITTED_MODEL, env={"CONVLSTM_GRPC_PORT": str(port)})
    assert code == 1 and f"gRPC cannot listen on port {port}" in out, out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = start_failure(COMMITTED_MODEL, env={"CONVLSTM_GRPC_PORT": str(port)})
    assert code == 1, out
    assert f"gRPC cannot listen on port {port}" in out and "Traceback" not in out, out


def test_model_config_in_tritons_shape(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("cnn_lstm", headers=dict(BEARER), as_json=True)["config"]
    assert config["name"] == "cnn_lstm" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8  # CONVLSTM_MAX_BATCH_SIZE's default
    assert config["input"] == [
        {"name": "frames", "data_type": "TYPE_FP32", "dims": ["15", "40", "40", "3"]}
    ]
    assert config["output"][0]["dims"] == ["40", "40", "3"]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("nope", headers=dict(BEARER))
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("convlstm")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
