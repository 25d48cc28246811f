"""``python -m service [--host H] [--port P] [--model PATH] [--provider P]``.

Flags override ``CONVLSTM_*`` environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--model", type=Path, dest="model_path", help="ONNX model file")
    p.add_argument("--provider", choices=["auto", "cuda", "tensorrt", "cpu"])
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return p


class _OneLineStartupFailure(logging.Filter):
    """Starlette hands uvicorn the full traceback of a failed lifespan; the lifespan
    has already logged the cause in one line, so the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Traceback") and "ModelLoadError" in text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "settings"
            print(f"invalid setting {where}: {e['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("uvicorn.error").addFilter(_OneLineStartupFailure())
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
