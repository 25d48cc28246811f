"""`python -m model_export summary`: both models' parameter tables."""

from __future__ import annotations

import argparse

from model_export.frames.model import VARIANTS


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("summary", help="print both models' parameter tables").set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model_export.frames.model import RELEASE_HEAD, build, format_table

    for variant in VARIANTS:
        head = RELEASE_HEAD if variant == "convlstm" else "sigmoid"
        print(format_table(build(variant, head=head)))
        print()
    return 0
