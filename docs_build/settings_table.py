"""The configuration page's table, read from ``service.config.Settings``: every
``CONVLSTM_*`` variable with its default, the values it takes and its docstring."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from service.config import Settings


def env_name(field: str) -> str:
    return f"CONVLSTM_{field.upper()}"


def shown_default(field: FieldInfo) -> str:
    """The default as the table shows it: ``unset`` for None, JSON-like spellings
    otherwise (``true``, ``{}``), since that is what the variable is set to."""
    default = field.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, SecretStr):
        return "(secret)"
    return f"`{default}`"


def accepted_values(field: FieldInfo) -> str:
    """Literal choices, or the type with its bounds (``int``, 1 to 65535)."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) is Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        annotation = args[0]
    name = getattr(annotation, "__name__", None) or str(annotation)
    if typing.get_origin(annotation) is dict:
        name = "JSON object"
    elif annotation is SecretStr:
        name = "string (secret)"
    elif name == "Path":
        name = "path"
    bounds = []
    for rule in field.metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(rule, attr, None)
            if value is not None:
                bounds.append(f"{word} {value}")
    return name + (f" ({', '.join(bounds)})" if bounds else "")


def markdown_of_docstring(text: str) -> str:
    """One table cell: reStructuredText's double backticks to Markdown's single ones, the
    docstring's line breaks to spaces, and pipes escaped so they cannot split the cell."""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    return " ".join(text.split()).replace("|", "\\|")


def settings_markdown() -> str:
    rows = [
        "| variable | default | values | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        rows.append(
            f"| `{env_name(name)}` | {shown_default(field)} | {accepted_values(field)} "
            f"| {markdown_of_docstring(field.description or '')} |"
        )
    return "\n".join(rows) + "\n"
