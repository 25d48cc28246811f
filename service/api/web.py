"""The browser demo: ``GET /`` serves the page, ``GET /web/...`` its script, style and samples.

The page is static (no build step) and calls the public ``/predict`` like any client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

# Beside the package's modules, so an installed package finds it as well as a checkout
# (pyproject ships it as package data).
WEB_DIR = Path(__file__).resolve().parent.parent / "web"

router = APIRouter(include_in_schema=False)
# Used as a file lookup (media types, ETag, 304, paths kept inside WEB_DIR) behind an
# ordinary route rather than mounted, so that request metrics label it "/web/{path:path}".
_files = StaticFiles(directory=WEB_DIR)
# Every file is revalidated on each load (a 304 when unchanged), so that a browser never
# mixes a cached script with a newer page after an upgrade.
_REVALIDATE = {"Cache-Control": "no-cache"}


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers=_REVALIDATE)


@router.api_route("/web/{path:path}", methods=["GET", "HEAD"])
async def web_file(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers.update(_REVALIDATE)
    return response


def mount_web(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/web``."""
    app.include_router(router)
