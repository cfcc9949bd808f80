"""The operator version pinned in the Helm values and docs is the one the CRDs come from."""

from __future__ import annotations

import re

import yaml
from ray_manifests import CRD_DIR, INFRA

CRD_VERSION = CRD_DIR.name.removeprefix("kuberay-v")  # "1.7.0"


def test_operator_image_matches_the_vendored_crds() -> None:
    values = yaml.safe_load((INFRA / "helm" / "kuberay-operator-values.yaml").read_text())
    assert values["image"]["tag"] == f"v{CRD_VERSION}"


def test_install_commands_pin_the_chart_version() -> None:
    for path in (INFRA / "helm" / "kuberay-operator-values.yaml", INFRA / "DEPLOY.md"):
        versions = re.findall(
            r"helm install kuberay-operator \S+ --version (\S+)", path.read_text()
        )
        assert versions and set(versions) == {CRD_VERSION}, path
