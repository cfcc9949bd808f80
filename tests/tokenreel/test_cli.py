"""The `tokenreel` command line as people meet it: every option explains itself and names its
default; a failure is one line and a non-zero exit, with the traceback only under --verbose."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tokenreel import cli
from tokenreel.cli import QUIET_RAY_ENV, SUBCOMMANDS, VERBOSE_ENV, build_parser, main, shows_default

ROOT = Path(__file__).resolve().parents[2]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help_naming_its_default(name: str) -> None:
    parser = _subparser(name)
    formatter = parser._get_formatter()
    for action in _options(parser):
        label = "/".join(action.option_strings)
        assert action.help, f"tokenreel {name} {label} has no help text"
        if isinstance(action, argparse._StoreConstAction):
            continue  # a flag (store_true/false): its default is that it is not given
        shown = formatter._expand_help(action)
        if action.default is None:
            # None stands for something (an environment variable, "auto", "all"): say what.
            assert "default" in shown, f"tokenreel {name} {label}: what is the default? {shown!r}"
        elif shows_default(action):
            said = f"default: {action.default}" in shown or f"({action.default})" in shown
            assert said or "default" in shown, f"tokenreel {name} {label}: {shown!r}"


def _unusable_catalog(tmp_path: Path) -> str:
    """A SQLite catalog whose directory cannot exist (a file is in the way)."""
    (tmp_path / "a-file").write_text("not a directory")
    return f"sqlite:///{tmp_path}/a-file/catalog.sqlite"


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `main` changes for the whole process, restored after the test: the environment its
    children inherit and the warning hook; the stderr redirection stays off here (pytest's
    own capture; `test_the_command_runs_as_a_process` runs it for real)."""
    for name in (VERBOSE_ENV, *QUIET_RAY_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(cli, "_native_stderr_to_file", lambda command: None)


@pytest.mark.usefixtures("cli_environment")
def test_an_error_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["videos", "--store", str(tmp_path), "--catalog", _unusable_catalog(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenreel videos: error: "), err
    assert "Traceback" not in err


@pytest.mark.usefixtures("cli_environment")
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_lets_the_exception_through(tmp_path: Path, where: str) -> None:
    """Under --verbose (before or after the subcommand) the error keeps its traceback."""
    argv = ["videos", "--store", str(tmp_path), "--catalog", _unusable_catalog(tmp_path)]
    argv = ["--verbose", *argv] if where == "before" else [*argv, "--verbose"]
    with pytest.raises(OSError):
        main(argv)


def test_the_command_runs_as_a_process(tmp_path: Path) -> None:
    """The entry point end to end: an empty store lists nothing, exit 0, no warnings."""
    result = subprocess.run(
        [sys.executable, "-m", "tokenreel", "runs", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no indexing runs recorded" and not result.stderr


def _tokenreel(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m tokenreel ARGV` as a user runs it: its own process, its real stderr (which the
    command redirects by default), temporary files (native logs) under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in (VERBOSE_ENV, *QUIET_RAY_ENV)}
    env["TMPDIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "tokenreel", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_an_error_in_a_real_process_is_one_line_and_a_traceback_under_verbose(
    tmp_path: Path,
) -> None:
    """The promise of the module docstring where it matters, on the process's own stderr: one
    line naming the command by default, the whole traceback with --verbose (before or after)."""
    argv = ["videos", "--store", str(tmp_path / "store"), "--catalog", _unusable_catalog(tmp_path)]
    quiet = _tokenreel(tmp_path, *argv)
    assert quiet.returncode == 1 and not quiet.stdout
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenreel videos: error: "), quiet.stderr
    assert "a-file" in lines[0]  # it says what went wrong
    for verbose in (["--verbose", *argv], [*argv, "-v"]):
        loud = _tokenreel(tmp_path, *verbose)
        assert loud.returncode == 1
        assert "Traceback (most recent call last)" in loud.stderr, loud.stderr
        assert loud.stderr.strip().splitlines()[-1].startswith("FileExistsError: ")
