"""Fixtures for the infra tests: the kustomizations rendered once per session (no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helper modules of this folder (kustomize_lite, crd_jsonschema, ...), whatever import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kustomize_lite
from ray_manifests import KUSTOMIZATIONS, Manifest


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Each kustomization rendered once per session: name -> objects."""
    return {name: kustomize_lite.build(path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Manifest]]) -> tuple:
    """(name, objects) for each of base, dev and prod."""
    return request.param, rendered[request.param]
