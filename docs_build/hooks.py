"""The MkDocs hook (``hooks:`` in ``mkdocs.yml``): a page's ``<!-- generated: NAME -->``
line is replaced by the table ``NAME`` at every build, so the settings, the HTTP API and
the results are read from the code and the records, not copied into the pages."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# MkDocs imports this file by path; the packages it reads (docs_build, service) sit at
# the repository root, which is on sys.path only when mkdocs runs as `python -m mkdocs`.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from docs_build.openapi_schema import app_schema, operations_markdown  # noqa: E402
from docs_build.results_tables import TABLES  # noqa: E402
from docs_build.settings_table import settings_markdown  # noqa: E402

MARKER = re.compile(r"^<!-- generated: ([a-z0-9-]+) -->$", re.MULTILINE)


def generators() -> dict[str, Callable[[], str]]:
    return {
        "settings": settings_markdown,
        "http-operations": lambda: operations_markdown(app_schema()),
        **TABLES,
    }


def expand(markdown: str) -> str:
    """Every marker replaced by its table; an unknown name fails the build, naming it."""
    known = generators()

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in known:
            raise ValueError(f"unknown generated table {name!r}; known: {', '.join(known)}")
        return known[name]()

    return MARKER.sub(table, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)
