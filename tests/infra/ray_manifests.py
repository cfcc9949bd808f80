"""Paths of the infra files and accessors for rendered KubeRay objects (used by the infra tests)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CRD_DIR = INFRA / "crds" / "kuberay-v1.7.0"
KUSTOMIZATIONS = {
    "base": INFRA / "k8s" / "base",
    "dev": INFRA / "k8s" / "overlays" / "dev",
    "prod": INFRA / "k8s" / "overlays" / "prod",
}

Manifest = dict[str, Any]


@functools.cache
def pyproject() -> dict[str, Any]:
    """The parsed pyproject.toml of the repository."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_pin() -> str:
    """The Ray version pyproject.toml pins (`ray[...]==X.Y.Z`)."""
    (ray,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray(\[|==)", d)]
    return ray.split("==")[1]


def one(objects: list[Manifest], kind: str) -> Manifest:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def cluster_spec(obj: Manifest) -> Manifest:
    """The RayCluster spec inside a RayJob or RayService."""
    field = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[obj["kind"]]
    return obj["spec"][field]


def worker_group(obj: Manifest, name: str) -> Manifest:
    groups = [g for g in cluster_spec(obj)["workerGroupSpecs"] if g["groupName"] == name]
    assert len(groups) == 1, f"{obj['kind']} has no single worker group {name!r}"
    return groups[0]


def pod_specs(obj: Manifest) -> Iterator[tuple[str, Manifest]]:
    """(group name, pod spec) for the head and every worker group of a RayJob/RayService."""
    spec = cluster_spec(obj)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def gpus(container: Manifest) -> int:
    """GPUs a container asks for (limits; Kubernetes requires requests == limits for them)."""
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
