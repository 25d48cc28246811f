"""The body limit follows the served models: the largest valid request at max batch, as
Open Inference Protocol JSON, is admitted by default; a setting wins; beyond the limit,
413 names it and the setting. In process, on the committed model (15x40x40x3 floats)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from service.api.body_limit import FLOOR_BYTES, largest_request_bytes
from service.config import Settings
from tests.service.conftest import COMMITTED_MODEL, asgi_client, running_app

pytestmark = pytest.mark.anyio
INFER = "/v2/models/convlstm/infer"
VALUES = 15 * 40 * 40 * 3
# Worked out by hand, not by the code under test: 8 sequences x 72,000 values x 32 bytes
# a value, plus 64 kB for the envelope.
DERIVED_LIMIT = 8 * VALUES * 32 + 64 * 1024
OLD_DEFAULT = 2 * 1024 * 1024


def oip_json(batch: np.ndarray, indent: int | None = None) -> bytes:
    """The body tritonclient and a hand-written client send: nested lists of floats."""
    tensor = {"name": "frames", "shape": list(batch.shape), "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": batch.tolist()}]}, indent=indent).encode()


def oip_binary(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    payload = batch.astype("<f4").tobytes()
    tensor = {"name": "frames", "shape": list(batch.shape), "datatype": "FP32"}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(payload)}}]}
    ).encode()
    return header + payload, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def frames(n: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random((n, 15, 40, 40, 3), dtype=np.float32) * scale).astype(np.float32)


def test_largest_request_of_shapes() -> None:
    assert largest_request_bytes([["N", 15, 40, 40, 3], ["N", 4, 2]], 8) == DERIVED_LIMIT
    assert largest_request_bytes([["N", 15, 40, 40, 3]], 1) == VALUES * 32 + 64 * 1024
    assert largest_request_bytes([["N", 4, 2]], 8) == FLOOR_BYTES
    assert largest_request_bytes([], 8) == FLOOR_BYTES


async def test_default_limit_admits_the_largest_request_and_says_so_on_readyz() -> None:
    settings = Settings(model_path=COMMITTED_MODEL, warmup_runs=0)
    async with running_app(settings) as app, asgi_client(app) as client:
        ready = (await client.get("/readyz")).json()
        assert ready["max_body_bytes"] == DERIVED_LIMIT
        assert ready["max_body_bytes_source"] == "models"

        # One sequence, pretty-printed as a person's script might: over the old default.
        one = oip_json(frames(1), indent=1)
        assert len(one) > OLD_DEFAULT
        r = await client.post(INFER, content=one, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["outputs"][0]["shape"] == [1, 40, 40, 3]

        # A full batch of the values whose JSON is longest (1.2e-05: 22 characters).
        full = oip_json(frames(8, scale=1e-4))
        assert 12_000_000 < len(full) <= DERIVED_LIMIT
        r = await client.post(INFER, content=full, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["outputs"][0]["shape"] == [8, 40, 40, 3]

        body, headers = oip_binary(frames(8))
        r = await client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200, r.text[:300]


async def test_a_setting_wins_and_413_names_the_limit_and_the_setting() -> None:
    settings = Settings(model_path=COMMITTED_MODEL, warmup_runs=0, max_body_bytes=OLD_DEFAULT)
    async with running_app(settings) as app, asgi_client(app) as client:
        ready = (await client.get("/readyz")).json()
        assert (ready["max_body_bytes"], ready["max_body_bytes_source"]) == (OLD_DEFAULT, "setting")
        r = await client.post(
            INFER,
            content=oip_json(frames(1), indent=1),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        assert r.json() == {
            "error": f"request body is larger than the limit of {OLD_DEFAULT} bytes "
            "(set by CONVLSTM_MAX_BODY_BYTES)"
        }


async def test_past_the_derived_limit_is_413_even_streamed(app_client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(DERIVED_LIMIT // 65536 + 1):
            yield b" " * 65536

    r = await app_client.post(INFER, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert f"limit of {DERIVED_LIMIT} bytes (derived from the served models" in r.json()["error"]


@pytest.mark.parametrize("length", ["1" * 5000, "²", " 40", "-1", "99999999999999999999"])
async def test_a_length_header_that_is_no_length_is_422_not_500(
    app_client: httpx.AsyncClient, length: str
) -> None:
    """Found by the protocol fuzzer (tests/service/http_fuzz.py): 5,000 digits in
    Inference-Header-Content-Length made ``int()`` raise, a 500."""
    body, headers = oip_binary(np.zeros((1, 15, 40, 40, 3), np.float32))
    raw = {**headers, "inference-header-content-length": length}
    encoded = [(k.encode(), v.encode("latin-1", errors="replace")) for k, v in raw.items()]
    r = await app_client.post(INFER, content=body, headers=encoded)
    assert r.status_code == 422, r.text
    assert "inference-header-content-length" in r.json()["error"]


@pytest.mark.parametrize("length", ["1" * 5000, "²"])
async def test_a_content_length_that_is_no_length_is_413_not_500(
    app_client: httpx.AsyncClient, length: str
) -> None:
    """The same header fuzz on Content-Length, reaching the app in process (uvicorn's
    parser refuses it before, with 400)."""
    headers = [
        (b"content-length", length.encode("latin-1")),
        (b"content-type", b"application/json"),
    ]
    r = await app_client.post(INFER, content=b"{}", headers=headers)
    assert r.status_code == 413, r.text
