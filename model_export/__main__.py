"""Command line: ``python -m model_export {summary,train,export,series,quantize,step-graph,rollouts,check,evaluate}``.

The commands live in ``model_export/cli/``, one module each."""

from __future__ import annotations

from model_export.cli import main, parser

__all__ = ["main", "parser"]

if __name__ == "__main__":
    raise SystemExit(main())
