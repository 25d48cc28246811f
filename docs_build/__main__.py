"""``python -m docs_build openapi``: write docs/openapi.json from the app (commit it)."""

from __future__ import annotations

import argparse

from docs_build.openapi_schema import OPENAPI_JSON, app_schema, schema_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m docs_build")
    parser.add_argument("what", choices=["openapi"], help="openapi: write docs/openapi.json")
    parser.parse_args(argv)
    OPENAPI_JSON.write_text(schema_text(app_schema()))
    print(f"wrote {OPENAPI_JSON}")


if __name__ == "__main__":
    main()
