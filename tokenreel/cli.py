"""`tokenreel SUBCOMMAND ...`: each subcommand lives in the package that does the work.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their subcommand runs, so `tokenreel ask` does not pay for torch or Ray Data.

What the terminal shows (decision): the command's own lines only. By default Ray's driver
messages and its workers' output (deprecation notices, task retries, `core_worker` lines), Python
warnings and the decoders' ffmpeg chatter stay off the terminal; Ray still writes its workers'
output to its log files (/tmp/ray/session_latest/logs), and what native code writes to this
process's stderr goes to a file under $TMPDIR/tokenreel-logs (removed when empty). An error is
one line naming the command and exits non-zero (1; argparse's usage errors 2; Ctrl-C 130).
`--verbose` (before or after the subcommand) shows all of it, tracebacks included.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tokenreel.demo", "run the whole loop on embedded defaults and print what happened"),
    "index": ("jobs.index.command", "index a video corpus into compressed token sets"),
    "videos": ("storage.videos_command", "list the catalog's videos, or inspect one"),
    "runs": ("storage.runs_command", "list recent indexing runs"),
    "serve": ("serving.serve_command", "serve question answering over indexed videos"),
    "ask": ("serving.ask_command", "ask a question about an indexed video (HTTP client)"),
    "eval": ("jobs.eval.command", "run multiple-choice video QA benchmarks and sweeps"),
    "visualize": ("jobs.visualize.command", "draw which tokens of a video were kept"),
}

# Read by the code that starts Ray Data or decoders (jobs.index): "1" shows their output.
VERBOSE_ENV = "TOKENREEL_VERBOSE"
# Ray reads these when it is imported (driver) and started (its processes inherit them): the
# driver's `ray` logger at errors, and no copy of the workers' output on this terminal (it
# stays in their log files). `setdefault`: a user's own setting wins.
QUIET_RAY_ENV = {"RAY_LOG_TO_DRIVER": "0", "RAY_LOGGER_LEVEL": "error"}
# Where the native libraries' own stderr lines go by default (Ray's C++ core worker logs to the
# process's stderr, e.g. a `core_worker.cc` line about actor constructor arguments).
NATIVE_LOG_DIR = Path(tempfile.gettempdir()) / "tokenreel-logs"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and not names_default(text, action.default)
            and shows_default(action)
        ):
            text += " (default: %(default)s)"
        return text


def shows_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth printing: not a flag's off, not None (whose
    meaning the help says in words), not an empty list of a repeatable option."""
    default = action.default
    if default is None or default is argparse.SUPPRESS or isinstance(default, bool):
        return False
    if isinstance(action, argparse._StoreConstAction):  # store_true/false/const: a flag
        return False
    return not (isinstance(default, list) and not default)


def names_default(text: str, default: object) -> bool:
    """Whether a help text already says its default ("default ...", or "(32)")."""
    return "default" in text or f"({default})" in text or "%(default)" in text


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="tokenreel",
        description="Compact visual-token caches for video archives, and questions over them.",
        formatter_class=HelpFormatter,
    )
    add_verbose(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        sub_parser.set_defaults(_module=module_name)
        add_verbose(sub_parser, argparse.SUPPRESS)
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def add_verbose(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show Ray's, the decoders' and Python's own messages, and tracebacks (default: off)",
    )


def quiet_terminal(command: str) -> Path | None:
    """Keep what is not the command's own output off the terminal (module docstring); returns
    the file the process's native stderr now goes to (None: it could not be redirected)."""
    for name, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")
    # Libraries that install their own filters (Ray shows its deprecations "always") still
    # reach the terminal through showwarning: nothing is shown.
    warnings.showwarning = _no_warning
    return _native_stderr_to_file(command)


def _no_warning(*args: object, **kwargs: object) -> None:
    return None


def _native_stderr_to_file(command: str) -> Path | None:
    """Point file descriptor 2 (what C/C++ code and child processes write to) at a log file,
    and `sys.stderr` (Python's own: the progress bar, error lines, the loggers' stream
    handlers) at a copy of the terminal's descriptor, so only Python-level output that passed
    our filters reaches the terminal. The file is removed at exit when nothing was written.
    Only in a process whose stderr is still the one it started with: a caller that captures it
    (a test, a notebook calling `main`) keeps what it set up."""
    if sys.stderr is not sys.__stderr__:
        return None
    try:
        NATIVE_LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = NATIVE_LOG_DIR / f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sys.stderr.flush()
        terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding)
    except (OSError, ValueError, AttributeError):  # no writable temp dir, or no real stderr
        return None
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = terminal
    atexit.register(_remove_if_empty, path)
    return path


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        quiet_terminal(args.command)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        if verbose:
            raise
        print(f"tokenreel {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            raise
        print(f"tokenreel {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`exc` as one line: its type when the message is empty or does not say what it is."""
    message = " ".join(str(exc).split())
    if not message or isinstance(exc, (KeyError, AttributeError, TypeError)):
        message = f"{type(exc).__name__}: {message}".rstrip(": ")
    return message if len(message) <= limit else message[: limit - 3] + "..."
