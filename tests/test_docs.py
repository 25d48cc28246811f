"""The documentation site's generated parts: the committed OpenAPI document is the app's,
the generated tables cover what they read, and the README stays a front page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from docs_build.hooks import expand, generators
from docs_build.openapi_schema import OPENAPI_JSON, REGENERATE, app_schema, schema_text
from docs_build.results_tables import TABLES
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_committed_openapi_document_is_the_apps() -> None:
    committed = OPENAPI_JSON.read_text()
    assert committed == schema_text(app_schema()), (
        f"docs/openapi.json differs from the app's OpenAPI document: run `{REGENERATE}` "
        "and commit it"
    )


def test_the_reference_page_lists_every_operation() -> None:
    page = expand((DOCS / "api" / "reference.md").read_text())
    schema = json.loads(OPENAPI_JSON.read_text())
    for path, item in schema["paths"].items():
        for method in item:
            assert f"| `{method.upper()}` | `{path}` |" in page, (method, path)


def test_the_settings_table_names_every_field_with_its_docstring() -> None:
    table = expand("<!-- generated: settings -->")
    rows = [line for line in table.splitlines() if line.startswith("| `CONVLSTM_")]
    assert len(rows) == len(Settings.model_fields)
    assert (
        "| `CONVLSTM_PROVIDER` | `auto` | `auto`, `cuda`, `tensorrt`, `cpu`, `simulated` |" in table
    )
    assert "| `CONVLSTM_PORT` | `8000` | int (≥ 1, ≤ 65535) | TCP port to listen on. |" in table
    # reStructuredText's ``x`` is rendered as Markdown's `x`
    assert "``" not in table


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_results_table_is_a_table(name: str) -> None:
    lines = TABLES[name]().splitlines()
    widths = {line.count(" | ") for line in lines if line.startswith("|")}
    assert len(widths) == 1, f"{name}: rows of different widths"
    assert sum(line.startswith("|") for line in lines) >= 3


def test_the_quality_table_is_read_from_the_cards() -> None:
    card = json.loads((REPO / "models" / "convlstm.json").read_text())
    mse = card["evaluation"]["metrics"]["convlstm"]["mse"]
    assert f"| ConvLSTM (served by default) | 746,942 | {mse:.5f} |" in TABLES["quality"]()


def test_an_unknown_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown generated table 'settngs'"):
        expand("<!-- generated: settngs -->")


def test_every_marker_in_the_pages_is_known() -> None:
    known = generators()
    for page in DOCS.rglob("*.md"):
        for name in re.findall(r"^<!-- generated: ([a-z0-9-]+) -->$", page.read_text(), re.M):
            assert name in known, f"{page.relative_to(REPO)}: {name}"


def test_readme_is_a_front_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    # .ci/run calls these two; the README is where a newcomer finds them.
    assert "make run" in readme and "make test" in readme
    assert "docs/prediction.png" in readme
    for target in re.findall(r"\]\(((?:docs)/[^)#]+)", readme):
        assert (REPO / target).is_file(), target


def test_every_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, page
