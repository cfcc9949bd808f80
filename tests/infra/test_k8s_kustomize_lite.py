"""The pure-Python kustomize subset: its mechanics, and agreement with the real kustomize."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kustomize_lite import (
    PatchError,
    UnsupportedKustomization,
    apply_json_patch_op,
    build,
    object_id,
    split_image,
)
from ray_manifests import KUSTOMIZATIONS

CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renders_like_kustomize(name: str) -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl on PATH to compare with")
    result = subprocess.run(
        [*command, str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    theirs = {object_id(o): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {object_id(o): o for o in build(KUSTOMIZATIONS[name])}
    assert ours == theirs


def _write(directory: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (directory / name).write_text(text)
    return directory


def test_patch_ops_add_replace_remove_and_escaped_keys() -> None:
    doc = {"spec": {"items": [{"name": "a"}, {"name": "b"}], "limits": {}}}
    apply_json_patch_op(doc, {"op": "add", "path": "/spec/limits/nvidia.com~1gpu", "value": 1})
    apply_json_patch_op(doc, {"op": "add", "path": "/spec/items/-", "value": {"name": "c"}})
    apply_json_patch_op(doc, {"op": "replace", "path": "/spec/items/0/name", "value": "z"})
    apply_json_patch_op(doc, {"op": "remove", "path": "/spec/items/1"})
    assert doc == {
        "spec": {"items": [{"name": "z"}, {"name": "c"}], "limits": {"nvidia.com/gpu": 1}}
    }


@pytest.mark.parametrize(
    "op",
    [
        {"op": "test", "path": "/spec/items/0/name", "value": "b"},
        {"op": "replace", "path": "/spec/missing", "value": 1},
        {"op": "remove", "path": "/spec/items/5"},
        {"op": "add", "path": "/spec/nothing/below", "value": 1},
    ],
)
def test_patch_ops_fail_loudly(op: dict) -> None:
    with pytest.raises(PatchError):
        apply_json_patch_op({"spec": {"items": [{"name": "a"}]}}, op)


def test_overlay_transformers(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    deployment_like = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "j"},
        "spec": {"deep": {"containers": [{"name": "x", "image": "reg:5000/app:old"}]}},
    }
    _write(
        base,
        {"objects.yaml": deployment_like, "kustomization.yaml": {"resources": ["objects.yaml"]}},
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    _write(
        overlay,
        {
            "kustomization.yaml": {
                "resources": ["../base"],
                "namespace": "ns",
                "labels": [{"pairs": {"team": "ml"}}],
                "images": [{"name": "reg:5000/app", "newName": "other/app", "newTag": "1.2"}],
                "patches": [
                    {
                        "target": {"kind": "RayJob", "name": "j"},
                        "patch": "- {op: add, path: /spec/flag, value: true}",
                    }
                ],
            }
        },
    )
    (job,) = build(overlay)
    assert job["metadata"] == {"name": "j", "namespace": "ns", "labels": {"team": "ml"}}
    assert job["spec"]["flag"] is True
    assert job["spec"]["deep"]["containers"][0]["image"] == "other/app:1.2"


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["c.yaml"], "namePrefix": "dev-"},
        {"resources": ["c.yaml"], "patches": [{"path": "smp.yaml"}]},
        {
            "resources": ["c.yaml"],
            "patches": [{"path": "smp.yaml", "target": {"kind": "ConfigMap"}}],
        },
        {"resources": ["c.yaml"], "labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]},
    ],
)
def test_unsupported_features_are_refused(tmp_path: Path, kustomization: dict) -> None:
    smp = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    _write(tmp_path, {"c.yaml": CONFIG_MAP, "smp.yaml": smp, "kustomization.yaml": kustomization})
    with pytest.raises(UnsupportedKustomization):
        build(tmp_path)


def test_patch_matching_nothing_is_an_error(tmp_path: Path) -> None:
    kustomization = {
        "resources": ["c.yaml"],
        "patches": [{"target": {"kind": "RayJob"}, "patch": "- {op: remove, path: /data}"}],
    }
    _write(tmp_path, {"c.yaml": CONFIG_MAP, "kustomization.yaml": kustomization})
    with pytest.raises(PatchError, match="matches no resource"):
        build(tmp_path)


def test_duplicate_resources_are_an_error(tmp_path: Path) -> None:
    _write(
        tmp_path, {"c.yaml": CONFIG_MAP, "kustomization.yaml": {"resources": ["c.yaml", "c.yaml"]}}
    )
    with pytest.raises(ValueError, match="twice"):
        build(tmp_path)


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("tokenreel", ("tokenreel", None, None)),
        ("tokenreel:0.1.0", ("tokenreel", "0.1.0", None)),
        ("reg:5000/ml/tokenreel:dev", ("reg:5000/ml/tokenreel", "dev", None)),
        ("reg:5000/ml/tokenreel@sha256:ab", ("reg:5000/ml/tokenreel", None, "sha256:ab")),
    ],
)
def test_split_image(image: str, parts: tuple) -> None:
    assert split_image(image) == parts
