"""A protocol fuzzer for the real server, in the manner of Triton's ``qa/L0_http_fuzz``:
boofuzz describes each request as primitives (the request line, headers, the body's
fields) and walks their mutations; every mutated request goes to the server on loopback
over a fresh connection, and its status line is kept.

boofuzz renders the cases; this module sends them, so that a run can be bounded (every
``stride``-th case of each request, spread over all of its primitives) and every answer
judged: the oracle is "no 5xx, and the process still alive", not boofuzz's own
"the target still accepts connections". A closed connection without an answer counts as
a cut (the connection guard's answer to framing it cannot read), never as a pass of a
5xx."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from boofuzz import Block, Delim, Group, Request, Size, Static, String
from boofuzz.mutation_context import MutationContext

SERVED = "convlstm"
SERIES = "co2_lstm"
UNLOADABLE = "seq"


def _request_line(name: str, methods: list[str], path: str) -> Block:
    return Block(
        f"{name}-line",
        children=(
            Group(name="method", values=methods),
            Delim(name="sp1", default_value=" "),
            String(name="path", default_value=path),
            Delim(name="sp2", default_value=" "),
            String(name="version", default_value="HTTP/1.1"),
            Static(name="eol", default_value="\r\n"),
        ),
    )


def _header(name: str, value: str) -> Block:
    """``Name: value`` with both halves fuzzed."""
    return Block(
        f"h-{name}",
        children=(
            String(name="name", default_value=name),
            Delim(name="colon", default_value=":"),
            Delim(name="space", default_value=" "),
            String(name="value", default_value=value),
            Static(name="eol", default_value="\r\n"),
        ),
    )


def _json_request(name: str, path: str, body: tuple[str | tuple[str, str], ...]) -> Request:
    """A JSON POST whose body alternates fixed text and fuzzed fields ``(name, default)``;
    Content-Length follows the rendered body (and is itself fuzzed)."""
    parts: list[Static | String] = []
    for i, part in enumerate(body):
        if isinstance(part, str):
            parts.append(Static(name=f"s{i}", default_value=part))
        else:
            parts.append(String(name=part[0], default_value=part[1]))
    return Request(
        name,
        children=(
            _request_line(name, ["POST", "PUT", "GET"], path),
            Static(name="host", default_value="Host: 127.0.0.1\r\n"),
            _header("Content-Type", "application/json"),
            Static(name="cl", default_value="Content-Length: "),
            Size(name="length", block_name="body", output_format="ascii", fuzzable=True),
            Static(name="end", default_value="\r\n\r\n"),
            Block("body", children=tuple(parts)),
        ),
    )


def _bare_request(name: str, methods: list[str], path: str) -> Request:
    """A request without a body: the request line and the headers are what is fuzzed."""
    return Request(
        name,
        children=(
            _request_line(name, methods, path),
            _header("Host", "127.0.0.1"),
            _header("Accept", "application/json"),
            _header("Connection", "close"),
            Static(name="end", default_value="\r\n"),
        ),
    )


def _chunked_request(name: str, path: str, body: str) -> Request:
    """A body sent in chunks: the chunk size line and the terminator are fuzzed."""
    return Request(
        name,
        children=(
            _request_line(name, ["POST"], path),
            Static(name="host", default_value="Host: 127.0.0.1\r\n"),
            _header("Transfer-Encoding", "chunked"),
            Static(name="ct", default_value="Content-Type: application/json\r\n\r\n"),
            String(name="chunk-size", default_value=f"{len(body):x}"),
            Delim(name="chunk-eol", default_value="\r\n"),
            String(name="chunk", default_value=body),
            Static(name="chunk-end", default_value="\r\n"),
            String(name="last-chunk", default_value="0\r\n\r\n"),
        ),
    )


def _binary_infer_request() -> Request:
    """The protocol's binary tensor extension: a JSON header of a fuzzed length, then raw
    bytes."""
    header = '{"inputs":[{"name":"frames","shape":[1,2],"datatype":"UINT8","parameters":{"binary_data_size":2}}]}'
    return Request(
        "infer-binary",
        children=(
            _request_line("infer-binary", ["POST"], f"/v2/models/{SERVED}/infer"),
            Static(name="host", default_value="Host: 127.0.0.1\r\n"),
            _header("Content-Type", "application/octet-stream"),
            _header("Inference-Header-Content-Length", str(len(header))),
            Static(name="cl", default_value="Content-Length: "),
            Size(name="length", block_name="body", output_format="ascii", fuzzable=True),
            Static(name="end", default_value="\r\n\r\n"),
            Block(
                "body",
                children=(
                    String(name="json", default_value=header),
                    String(name="tensor", default_value="\x00\x01"),
                ),
            ),
        ),
    )


def requests() -> list[Request]:
    """Every route family: native prediction, the Open Inference Protocol (JSON and
    binary), streams, time series, the repository, health, and chunked framing."""
    return [
        _json_request(
            "predict",
            "/predict",
            (
                '{"model": "',
                ("model", SERVED),
                '", "horizon": ',
                ("horizon", "1"),
                ', "frames": ',
                ("frames", '["aGVsbG8="]'),
                "}",
            ),
        ),
        _json_request(
            "predict-tensor",
            "/predict",
            (
                '{"tensor": {"dtype": "',
                ("dtype", "uint8"),
                '", "shape": ',
                ("shape", "[1, 15, 40, 40, 3]"),
                ', "data": "',
                ("data", "AAAA"),
                '"}}',
            ),
        ),
        _json_request(
            "infer",
            f"/v2/models/{SERVED}/infer",
            (
                '{"id": "',
                ("id", "1"),
                '", "inputs": [{"name": "',
                ("name", "frames"),
                '", "shape": ',
                ("shape", "[1, 2]"),
                ', "datatype": "',
                ("datatype", "UINT8"),
                '", "data": ',
                ("data", "[0, 1]"),
                "}], ",
                ("rest", '"outputs": [{"name": "next_frame"}]'),
                "}",
            ),
        ),
        _binary_infer_request(),
        _json_request(
            "stream-open",
            "/v1/streams",
            ('{"model": "', ("model", SERVED), '", ', ("rest", '"ttl_s": 5'), "}"),
        ),
        _json_request(
            "stream-step",
            "/v1/streams/00000000000000000000000000000000",
            ('{"frames": ', ("frames", '["aGVsbG8="]'), ', "horizon": ', ("horizon", "1"), "}"),
        ),
        _bare_request("stream-get", ["GET", "DELETE"], "/v1/streams/0123"),
        _json_request(
            "forecast",
            "/v1/timeseries/forecast",
            (
                '{"model": "',
                ("model", SERIES),
                '", "inputs": [{"type": "',
                ("type", "univariate_time_series"),
                '", "name": "y", "series": ',
                ("series", "[1.0, 2.0, 3.0]"),
                ', "frequency": "',
                ("frequency", "W"),
                '", "start_timestamp": "',
                ("start", "2020-01-05T00:00:00"),
                '"}], "options": {"horizon": ',
                ("horizon", "4"),
                "}}",
            ),
        ),
        _json_request("repo-index", "/v2/repository/index", ('{"ready": ', ("ready", "true"), "}")),
        _json_request(
            "repo-load",
            f"/v2/repository/models/{UNLOADABLE}/load",
            ('{"parameters": ', ("parameters", '{"version": "1"}'), "}"),
        ),
        _json_request(
            "repo-unload",
            f"/v2/repository/models/{UNLOADABLE}/unload",
            ('{"parameters": ', ("parameters", '{"unload_dependents": false}'), "}"),
        ),
        _bare_request("health", ["GET", "HEAD", "OPTIONS"], "/readyz"),
        _bare_request("oip-meta", ["GET"], f"/v2/models/{SERVED}/versions/1/ready"),
        _chunked_request("chunked", "/predict", '{"frames": []}'),
    ]


def cases(request: Request, stride: int) -> Iterator[bytes]:
    """Every ``stride``-th mutation of ``request``, rendered, starting with the unmutated
    request."""
    yield request.render()
    for i, mutations in enumerate(request.get_mutations()):
        if i % stride == 0:
            context = MutationContext(
                message_path=[], mutations={m.qualified_name: m for m in mutations}
            )
            yield request.render(context)


def send(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send one request on a fresh connection; the status line of the answer, b"" when
    the server closed the connection without one, b"timeout" when nothing came back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the server cut the connection mid-send; what it answered is read below
        answer = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in answer:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                return b"timeout"
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0]


@dataclass
class FuzzResult:
    """What the server answered, by request and status line."""

    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    timeouts: list[tuple[str, bytes]] = field(default_factory=list)

    def record(self, name: str, payload: bytes, status_line: bytes) -> None:
        self.cases += 1
        if status_line == b"timeout":
            self.statuses["timeout"] += 1
            self.timeouts.append((name, payload[-300:]))
            return
        parts = status_line.split(b" ", 2)
        code = parts[1].decode(errors="replace") if len(parts) > 1 else "closed"
        self.statuses[code] += 1
        if code.startswith("5"):
            self.server_errors.append((name, payload[-300:], status_line))


def fuzz(
    host: str,
    port: int,
    *,
    stride: int,
    timeout: float = 5.0,
    only: set[str] | None = None,
) -> FuzzResult:
    """Send every ``stride``-th case of every request family; see ``FuzzResult``."""
    result = FuzzResult()
    for request in requests():
        if only is not None and request.name not in only:
            continue
        for payload in cases(request, stride):
            result.record(request.name, payload, send(host, port, payload, timeout))
    return result
