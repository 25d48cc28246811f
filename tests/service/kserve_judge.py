"""Judge bodies by KServe's own pydantic types, unchanged: run by the Python of the KServe
venv (``make kserve-env``: KServe pins protobuf<7, the training stage 7.x, so it cannot
share this project's venv). Imports nothing of this project.

stdin: a JSON list of ``{"type": NAME, "body": ...}``, NAME one of ``TYPES``; stdout: a
JSON list of ``{"type", "ok", "errors"}`` in the same order, ``errors`` as pydantic words
them. The KServe version is printed first, on stderr."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

from kserve.protocol.rest import v2_datamodels as v2
from kserve.protocol.rest.timeseries import types as ts
from pydantic import BaseModel, ValidationError

TYPES: dict[str, type[BaseModel]] = {
    "ForecastRequest": ts.ForecastRequest,
    "ForecastResponse": ts.ForecastResponse,
    "TimeSeriesErrorResponse": ts.ErrorResponse,
    "InferenceRequest": v2.InferenceRequest,
    "InferenceResponse": v2.InferenceResponse,
    "ServerMetadataResponse": v2.ServerMetadataResponse,
    "ServerLiveResponse": v2.ServerLiveResponse,
    "ServerReadyResponse": v2.ServerReadyResponse,
    "ModelMetadataResponse": v2.ModelMetadataResponse,
    "ModelReadyResponse": v2.ModelReadyResponse,
}


def judge(item: dict[str, Any]) -> dict[str, Any]:
    try:
        TYPES[item["type"]].model_validate(item["body"])
    except ValidationError as err:
        return {"type": item["type"], "ok": False, "errors": str(err)}
    return {"type": item["type"], "ok": True, "errors": ""}


def main() -> None:
    print(f"kserve {version('kserve')}", file=sys.stderr)
    json.dump([judge(item) for item in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
