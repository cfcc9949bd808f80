"""`tokenreel SUBCOMMAND ...`: each subcommand lives in the package that does the work.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their subcommand runs, so `tokenreel ask` does not pay for torch or Ray Data.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tokenreel.demo", "run the whole loop on embedded defaults and print what happened"),
    "index": ("jobs.index.command", "index a video corpus into compressed token sets"),
    "serve": ("serving.serve_command", "serve question answering over indexed videos"),
    "ask": ("serving.ask_command", "ask a question about an indexed video (HTTP client)"),
    "eval": ("jobs.eval.command", "run multiple-choice video QA benchmarks and sweeps"),
    "visualize": ("jobs.visualize.command", "draw which tokens of a video were kept"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="tokenreel",
        description="Compact visual-token caches for video archives, and questions over them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)
