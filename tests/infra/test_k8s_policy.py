"""What the CRD schemas cannot say: references resolve, scaling and lifecycle are set up as the
deployment needs, no secret is written into a manifest, GPU settings agree with each other."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from ray_manifests import (
    INFRA,
    Manifest,
    cluster_spec,
    gpus,
    one,
    pod_specs,
    ray_pin,
    worker_group,
)

# Secrets the manifests expect to exist; created out of band as infra/DEPLOY.md describes.
EXTERNAL_SECRETS = {"tokenreel-storage", "tokenreel-api"}
# KubeRay v1.7.0 RayServiceUpgradeType values (the CRD leaves `type` a free string).
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
SECRET_ENV_NAMES = re.compile(
    r"(^|_)(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CATALOG_URL)(_|$)", re.IGNORECASE
)


def _containers(obj: Manifest):
    for group, pod in pod_specs(obj):
        for container in pod["containers"]:
            yield group, pod, container


def _ray_objects(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in {"RayJob", "RayService"}]


def test_config_and_secret_references_resolve(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for obj in _ray_objects(objects):
        for group, pod, container in _containers(obj):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, group
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in EXTERNAL_SECRETS, group
            for ref in container.get("env", []):
                assert "value" not in ref or not SECRET_ENV_NAMES.search(ref["name"]), ref
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, group
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in pod.get("volumes", [])}, group


def test_no_secrets_in_config(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created out of band"
    for key, value in one(objects, "ConfigMap")["data"].items():
        assert not SECRET_ENV_NAMES.search(key), key
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key} holds credentials"


def test_external_secrets_are_documented() -> None:
    deploy = (INFRA / "DEPLOY.md").read_text()
    for name in EXTERNAL_SECRETS:
        assert re.search(rf"kubectl\b.*create secret generic {name}\b", deploy), name
    for key in (
        "TOKENREEL_CATALOG_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "TOKENREEL_API_KEY",
    ):
        assert f"{key}=" in deploy, f"DEPLOY.md does not show how to set {key}"


def test_pods_run_as_non_root_with_resources(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    for obj in _ray_objects(objects):
        for group, pod, container in _containers(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True, group
            assert pod["securityContext"]["runAsUser"] != 0, group
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, group
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                assert kind in resources["requests"] and kind in resources["limits"], group
            # Extended resources (GPUs) must have requests == limits.
            assert resources["requests"].get("nvidia.com/gpu") == resources["limits"].get(
                "nvidia.com/gpu"
            ), group


def test_one_image_and_ray_version_everywhere(overlay: tuple[str, list[Manifest]]) -> None:
    # Ray needs the same Ray and Python version on every node: one image for all pods.
    _, objects = overlay
    images = {c["image"] for obj in _ray_objects(objects) for _, _, c in _containers(obj)}
    assert len(images) == 1, images
    for obj in _ray_objects(objects):
        assert cluster_spec(obj)["rayVersion"] == ray_pin()


def test_model_cache_is_mounted_at_hf_home(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    hf_home = re.search(r"HF_HOME=(\S+)", (INFRA / "Dockerfile").read_text()).group(1)
    for obj in _ray_objects(objects):
        loaders = {"RayJob": "encode", "RayService": "qa"}[obj["kind"]]
        container = worker_group(obj, loaders)["template"]["spec"]["containers"][0]
        assert {"name": "hf-cache", "mountPath": hf_home} in container["volumeMounts"]


def test_autoscaling_bounds(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    for obj in _ray_objects(objects):
        spec = cluster_spec(obj)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group
    for group in cluster_spec(one(objects, "RayJob"))["workerGroupSpecs"]:
        assert group["minReplicas"] == 0, "indexing workers scale from zero"


def test_rayjob_lifecycle(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    spec = one(objects, "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 1


def test_rayjob_entrypoint_holds_no_secret(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    argv = shlex.split(one(objects, "RayJob")["spec"]["entrypoint"])
    assert "--catalog" not in argv, "the catalog URL (with its password) comes from the env"
    assert not [a for a in argv if re.search(r"://[^/@\s]+:[^/@\s]+@", a)]


def test_rayservice_upgrades_without_downtime(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    spec = one(objects, "RayService")["spec"]
    assert spec["upgradeStrategy"]["type"] in UPGRADE_TYPES
    assert spec["upgradeStrategy"]["type"] != "None", "None means no zero-downtime upgrade"
    for group, _, container in _containers(one(objects, "RayService")):
        assert "readinessProbe" in container and "livenessProbe" in container, group


def _flag(argv: list[str], name: str) -> float:
    return float(argv[argv.index(name) + 1])


def _pool(argv: list[str], name: str) -> tuple[int, int]:
    """(MIN, MAX) of an N or MIN:MAX pool option."""
    low, _, high = argv[argv.index(name) + 1].partition(":")
    return int(low), int(high or low)


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_gpu_settings_agree(rendered: dict, name: str) -> None:
    objects = rendered[name]
    job, service = one(objects, "RayJob"), one(objects, "RayService")
    argv = shlex.split(job["spec"]["entrypoint"])
    encode = worker_group(job, "encode")
    encode_gpus = gpus(encode["template"]["spec"]["containers"][0])
    # The encode actors' GPUs, at the elastic pool's largest, must fit in the encode group at
    # its largest; and the pool is elastic where the group has room to grow (prod).
    smallest, largest = _pool(argv, "--workers")
    gpus_needed = largest * _flag(argv, "--gpus-per-worker")
    assert gpus_needed <= encode["maxReplicas"] * encode_gpus
    if name == "prod":
        assert smallest < largest, "the GPU encode pool grows and shrinks with its group"
    # The groups start at zero pods: a check of the resources present at start would refuse.
    assert "--skip-resource-check" in argv
    assert (_flag(argv, "--gpus-per-worker") > 0) == (encode_gpus > 0)

    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    qa = worker_group(service, "qa")
    qa_gpus = gpus(qa["template"]["spec"]["containers"][0])
    args = app["args"]
    assert (args["num_gpus"] > 0) == (qa_gpus > 0) == (args["device"] == "cuda")
    assert args["max_replicas"] * args["num_gpus"] <= qa["maxReplicas"] * qa_gpus

    gpu_pods = [pod for obj in (job, service) for _, pod, c in _containers(obj) if gpus(c)]
    if name == "dev":
        assert gpu_pods == [], "dev is CPU only"
    else:
        assert len(gpu_pods) == 2
        for pod in gpu_pods:
            assert pod["nodeSelector"] and pod["tolerations"]
