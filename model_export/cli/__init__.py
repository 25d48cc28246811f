"""Command line: ``python -m model_export {summary,train,export,series,quantize,fp16,step-graph,rollouts,check,evaluate}``."""

from __future__ import annotations

import argparse

from model_export.cli import (
    check,
    evaluate,
    export,
    fp16,
    quantize,
    rollouts,
    series,
    step_graph,
    summary,
    train,
)

# In the order ``--help`` lists them; each module adds its sub-parser and its ``run``.
COMMANDS = (summary, train, export, series, quantize, fp16, step_graph, rollouts, check, evaluate)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code
