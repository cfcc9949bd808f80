"""Every rendered object validates against its schema: KubeRay v1.7.0 CRDs, or the core schemas.

The negative tests prove the validator catches what it claims to (wrong types, typos in field
names, malformed quantities, duplicate list keys, CEL-guarded fields it cannot check).
"""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
from core_schemas import core_validator, metadata_validator
from crd_jsonschema import crd_validators, openapi_to_jsonschema, validation_errors
from ray_manifests import CRD_DIR, Manifest, cluster_spec, one


def _errors(obj: Manifest) -> list[str]:
    key = (obj["apiVersion"], obj["kind"])
    crds = crd_validators(CRD_DIR)
    validator = crds[key] if key in crds else core_validator(*key)
    errors = validation_errors(validator, obj)
    errors += ["metadata/" + e for e in validation_errors(metadata_validator(), obj["metadata"])]
    return errors


def test_crds_are_the_v1_7_0_set() -> None:
    assert {("ray.io/v1", kind) for kind in ("RayCluster", "RayJob", "RayService")} <= set(
        crd_validators(CRD_DIR)
    )


def test_vendored_crds_are_unmodified() -> None:
    # SOURCE.md records the sha256 of the upstream files: a hand-edited schema could hide errors.
    source = (CRD_DIR / "SOURCE.md").read_text()
    recorded = {
        name: digest for digest, name in re.findall(r"([0-9a-f]{64})\s+(\S+\.yaml)", source)
    }
    assert sorted(recorded) == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    for name, digest in recorded.items():
        assert hashlib.sha256((CRD_DIR / name).read_bytes()).hexdigest() == digest, name


def test_every_object_validates(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    kinds = sorted(obj["kind"] for obj in objects)
    assert {"ConfigMap", "RayJob", "RayService"} <= set(kinds), kinds
    for obj in objects:
        assert obj["apiVersion"] != "ray.io/v1alpha1", "use the stored version ray.io/v1"
        assert _errors(obj) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}"


# ---- negative tests: the validator must reject broken manifests --------------------------------


def _broken(rendered: dict, kind: str, mutate) -> Manifest:
    obj = copy.deepcopy(one(rendered["prod"], kind))
    mutate(obj)
    return obj


BREAKAGES = {
    "wrong type (string for int32)": (
        "RayJob",
        lambda o: cluster_spec(o)["workerGroupSpecs"][0].update(minReplicas="zero"),
        "minReplicas",
    ),
    "int32 overflow": ("RayJob", lambda o: o["spec"].update(backoffLimit=2**31), "backoffLimit"),
    "typo in a field name": (
        "RayService",
        lambda o: cluster_spec(o)["workerGroupSpecs"][0].update(minReplica=1),
        "minReplica",
    ),
    "unknown top-level spec field": ("RayJob", lambda o: o["spec"].update(entrypoints="x"), ""),
    "malformed quantity": (
        "RayService",
        lambda o: cluster_spec(o)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"].update(memory="16 gigabytes"),
        "memory",
    ),
    "int-or-string given a list": (
        "RayService",
        lambda o: cluster_spec(o)["headGroupSpec"]["template"]["spec"]["containers"][0][
            "readinessProbe"
        ]["httpGet"].update(port=[8265]),
        "port",
    ),
    "rayStartParams values must be strings": (
        "RayJob",
        lambda o: cluster_spec(o)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "num-cpus",
    ),
    "enum violated": (
        "RayJob",
        lambda o: cluster_spec(o)["autoscalerOptions"].update(upscalingMode="Eager"),
        "upscalingMode",
    ),
    "duplicate container names (list-map key)": (
        "RayJob",
        lambda o: cluster_spec(o)["headGroupSpec"]["template"]["spec"]["containers"].append(
            copy.deepcopy(cluster_spec(o)["headGroupSpec"]["template"]["spec"]["containers"][0])
        ),
        "duplicate",
    ),
    "CEL-guarded field": ("RayService", lambda o: o["spec"].update(managedBy="someone"), "CEL"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_manifest_is_rejected(rendered: dict, breakage: str) -> None:
    kind, mutate, expected_in_error = BREAKAGES[breakage]
    errors = _errors(_broken(rendered, kind, mutate))
    assert errors, f"{breakage} was not caught"
    assert any(expected_in_error in e for e in errors), errors


@pytest.mark.parametrize(
    ("mutate", "expected_in_error"),
    [
        (lambda o: o["data"].update(RETRIES=3), "RETRIES"),  # a bare YAML int, not a string
        (lambda o: o["data"].update({"bad key!": "x"}), "bad key!"),
        (lambda o: o["metadata"].update(name="Tokenreel_Config"), "name"),
        (lambda o: o["metadata"]["labels"].update(team="a b"), "team"),
    ],
)
def test_broken_config_map_is_rejected(rendered: dict, mutate, expected_in_error: str) -> None:
    obj = copy.deepcopy(one(rendered["prod"], "ConfigMap"))
    mutate(obj)
    errors = _errors(obj)
    assert any(expected_in_error in e for e in errors), errors


def test_broken_pvc_is_rejected(rendered: dict) -> None:
    pvc = copy.deepcopy(one(rendered["prod"], "PersistentVolumeClaim"))
    pvc["spec"]["accessModes"] = ["ReadWriteAll"]
    assert any("accessModes" in e for e in _errors(pvc))


def test_conversion_of_openapi_extensions() -> None:
    schema = openapi_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "size": {
                    "x-kubernetes-int-or-string": True,
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                },
                "maybe": {"type": "string", "nullable": True},
                "free": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"a": {"type": "string"}},
                },
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert "type" not in schema["properties"]["size"]
