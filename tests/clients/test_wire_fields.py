"""The client owns its copies of the answers it reads (docs/architecture.md says why):
every field it reads is in the server's committed OpenAPI document, which
``tests/test_docs.py`` checks against the app. A field the server renames fails here
before a caller meets a ``KeyError``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.service.conftest import REPO

OPENAPI = REPO / "docs" / "openapi.json"

# schema -> the properties convlstm_client/client.py reads from it.
READ_BY_THE_CLIENT = {
    "NextFrameResponse": {"tensor", "model", "model_version", "provider", "inference_ms"},
    "PredictedTensor": {"data", "shape"},
    "ReadyResponse": {"model", "model_version", "provider", "input_shape", "models", "served"},
    "ModelSummary": {"name", "input_shape"},
    "StreamInfo": {"stream_id", "model"},
    "ForecastResponse": {"model", "outputs"},
    "ForecastOutput": {"content"},
    "TimeSeriesForecast": {"mean_forecast", "start_timestamp", "quantiles"},
    "service__api__schemas__ErrorDetail": {"type", "message", "location"},
    "service__api__timeseries__ErrorDetail": {"type", "message", "param"},
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(OPENAPI.read_text())["components"]["schemas"]
    return found


@pytest.mark.parametrize("schema", sorted(READ_BY_THE_CLIENT))
def test_the_fields_the_client_reads_are_in_the_servers_schema(
    schemas: dict[str, Any], schema: str
) -> None:
    properties = set(schemas[schema]["properties"])
    assert READ_BY_THE_CLIENT[schema] <= properties, READ_BY_THE_CLIENT[schema] - properties


def test_the_client_source_reads_those_fields() -> None:
    """Keeps the table above honest: each field it names appears in the client's code."""
    source = (REPO / "clients/python/convlstm_client/client.py").read_text()
    for fields in READ_BY_THE_CLIENT.values():
        for field in fields - {"served"}:
            assert f'"{field}"' in source, field
    assert 'body.get("served"' in source
