"""The HTTP API reference: the app's own OpenAPI document, committed as
``docs/openapi.json`` (so the site and readers without a server have it), and a page that
lists its operations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.app import create_app
from service.config import Settings

OPENAPI_JSON = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
REGENERATE = "python -m docs_build openapi"

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def app_schema() -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves before any model is loaded, with the
    defaults of every setting (the environment is not read, so the file is the same on
    every machine)."""
    return create_app(Settings.model_construct()).openapi()


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def operations_markdown(schema: dict[str, Any]) -> str:
    """One row per operation: method, path, summary and the status codes it documents."""
    rows = ["| method | path | what it does | answers |", "| --- | --- | --- | --- |"]
    for path, item in schema["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            summary = operation.get("summary") or operation.get("operationId", "")
            codes = ", ".join(sorted(operation.get("responses", {})))
            rows.append(f"| `{method.upper()}` | `{path}` | {summary} | {codes} |")
    return "\n".join(rows) + "\n"
