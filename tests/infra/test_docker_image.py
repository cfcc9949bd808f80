"""infra/Dockerfile agrees with pyproject.toml/constraints.txt and follows the image rules."""

from __future__ import annotations

import pytest
from dockerfile_checks import (
    check_base_image,
    check_no_secrets,
    check_no_weights,
    check_pins,
    check_user,
    copy_sources,
    dockerignore_allows,
    parse,
    read_dockerignore,
)
from ray_manifests import INFRA, REPO, pyproject, ray_pin

PYPROJECT = pyproject()["project"]
DOCKERFILE = (INFRA / "Dockerfile").read_text()


def _requirements() -> list[str]:
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    return PYPROJECT["dependencies"] + [c for c in constraints if c and not c.startswith("#")]


def test_base_image_matches_pinned_ray_and_python() -> None:
    problems = check_base_image(parse(DOCKERFILE), ray_pin(), PYPROJECT["requires-python"])
    assert problems == []


def test_installed_pins_agree_with_the_project() -> None:
    instructions = parse(DOCKERFILE)
    assert check_pins(instructions, _requirements()) == []
    # torch is the one package the Dockerfile pins itself (to choose its index).
    assert any("torch==" in i.text for i in instructions if i.keyword == "RUN")


def test_runs_as_non_root_without_secrets_or_weights() -> None:
    instructions = parse(DOCKERFILE)
    assert check_user(instructions) == []
    assert check_no_secrets(instructions) == []
    assert check_no_weights(instructions) == []


def test_copies_every_package_and_the_context_allows_them() -> None:
    sources = copy_sources(parse(DOCKERFILE))
    tool = pyproject()["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in tool["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", PYPROJECT["readme"], "constraints.txt"} <= set(sources)
    patterns = read_dockerignore((REPO / ".dockerignore").read_text())
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_allows(patterns, source), source


@pytest.mark.parametrize(
    "path",
    [".env", ".venv/bin/python", ".git/config", "tokenreel-data/catalog.sqlite", "tests/x.py"],
)
def test_build_context_excludes_local_state(path: str) -> None:
    patterns = read_dockerignore((REPO / ".dockerignore").read_text())
    assert not dockerignore_allows(patterns, path)
    assert not dockerignore_allows(patterns, "serving/__pycache__/app.cpython-311.pyc")


# ---- the checks catch broken Dockerfiles --------------------------------------------------------

GOOD_HEADER = "ARG RAY=2.60.0\nFROM rayproject/ray:${RAY}-py311-gpu\n"


@pytest.mark.parametrize(
    ("dockerfile", "check", "expected"),
    [
        ("FROM rayproject/ray:2.59.0-py311-gpu\n", "base", "Ray 2.59.0"),
        ("FROM rayproject/ray:2.60.0-py314-gpu\n", "base", "Python 3.14"),
        ("FROM python:3.11\n", "base", "not rayproject/ray"),
        (GOOD_HEADER + "RUN pip install torch==2.3.0\n", "pins", "torch==2.3.0"),
        (GOOD_HEADER + "RUN pip install transformers==5.22.0\n", "pins", "transformers"),
        (GOOD_HEADER + "USER 1000\nRUN true\nUSER root\n", "user", "root"),
        (GOOD_HEADER + "USER ray\n", "user", "numeric"),
        (GOOD_HEADER, "user", "no USER"),
        (GOOD_HEADER + "ENV TOKENREEL_API_KEY=abc\n", "secrets", "TOKENREEL_API_KEY"),
        (GOOD_HEADER + "ARG AWS_SECRET_ACCESS_KEY\n", "secrets", "AWS_SECRET_ACCESS_KEY"),
        (GOOD_HEADER + "COPY .env /app/.env\n", "secrets", "credentials"),
        (GOOD_HEADER + "RUN hf download llava-hf/x \\\n    --local-dir /m\n", "weights", "weights"),
    ],
)
def test_checks_catch_broken_dockerfiles(dockerfile: str, check: str, expected: str) -> None:
    instructions = parse(dockerfile)
    problems = {
        "base": lambda: check_base_image(instructions, "2.60.0", ">=3.10,<3.14"),
        "pins": lambda: check_pins(instructions, _requirements()),
        "user": lambda: check_user(instructions),
        "secrets": lambda: check_no_secrets(instructions),
        "weights": lambda: check_no_weights(instructions),
    }[check]()
    assert any(expected in p for p in problems), problems
