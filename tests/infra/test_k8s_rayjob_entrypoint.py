"""The RayJob entrypoint is a real `tokenreel` command whose options this repository accepts."""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys

import pytest
from ray_manifests import KUSTOMIZATIONS, REPO, one, pyproject


def _argv(rendered: dict, name: str) -> list[str]:
    return shlex.split(one(rendered[name], "RayJob")["spec"]["entrypoint"])


def test_tokenreel_is_a_console_script() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert scripts["tokenreel"] == "tokenreel.cli:main"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_entrypoint_parses_with_the_real_cli(rendered: dict, name: str) -> None:
    from tokenreel.cli import SUBCOMMANDS, build_parser

    argv = _argv(rendered, name)
    assert argv[0] == "tokenreel" and argv[1] == "index", argv
    assert argv[1] in SUBCOMMANDS
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = build_parser(argv[1]).parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"`{' '.join(argv)}` is rejected by the CLI: {stderr.getvalue()}")
    assert args.command == "index"


def test_subcommand_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenreel", "index", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "--gpus-per-worker" in result.stdout
