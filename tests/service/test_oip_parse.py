"""``parse_request``: orjson and pydantic's own parser accept the same requests and
refuse them with the same messages; only the speed differs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.api.oip import InferRequest, parse_request
from service.errors import InvalidInput

TENSOR = '{"name": "frames", "shape": [1, 2], "datatype": "FP32"'


def pydantic_message(body: bytes) -> str:
    try:
        InferRequest.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"{where}: {first['msg']}"
    raise AssertionError("pydantic accepted it")


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"inputs": []}',
        b'{"inputs": 3}',
        b'{"inputs": [3]}',
        b'{"inputs": [{"name": "frames"}]}',
        ('{"inputs": [' + TENSOR + ', "data": 5}]}').encode(),
        ('{"inputs": [' + TENSOR + ', "data": [1, 2]}], "id": 5}').encode(),
        ('{"inputs": [' + TENSOR + ', "data": [1, 2]}], "outputs": [{}]}').encode(),
        ('{"inputs": [' + TENSOR + ', "shape": [-1]}]}').encode(),
        b'{"inputs": [{"name": "x\xff"}]}',
    ],
)
def test_refused_with_pydantic_message(body: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_request(body)
    assert str(err.value.args[0]) == pydantic_message(body)


@pytest.mark.parametrize(
    "body",
    [
        ('{"id": "a", "inputs": [' + TENSOR + ', "data": [0.5, 1]}]}').encode(),
        ('{"inputs": [' + TENSOR + ', "data": [NaN, 1]}]}').encode(),
        ('{"inputs": [' + TENSOR + ', "data": [1e400, 123456789012345678901234]}]}').encode(),
        (
            '{"inputs": [' + TENSOR + ', "parameters": {"binary_data_size": 8}}],'
            ' "outputs": [{"name": "next_frame"}], "parameters": {"horizon": 2}}'
        ).encode(),
    ],
)
def test_accepted_as_pydantic_reads_it(body: bytes) -> None:
    got, expected = parse_request(body), InferRequest.model_validate_json(body)
    assert repr(got) == repr(expected)
