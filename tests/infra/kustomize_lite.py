"""A pure-Python renderer for the subset of kustomize that `infra/k8s` uses.

CI has no kustomize binary (and none is installable from a package registry without fetching a
release binary), so the tests render the overlays themselves. The subset, applied in kustomize's
own order (patches, then namespace, labels, images):

* `resources`: YAML files and directories holding a kustomization.yaml (recursively);
* `patches`: JSON 6902 patches (from `path` or inline `patch`) with a `target` selecting by
  group/version/kind/name; ops add, remove, replace, test;
* `namespace`; `labels` with `pairs` (metadata.labels only: no selectors, no templates);
* `images`: `newName`/`newTag`/`digest` for every container and init container image, wherever
  the containers list sits (kustomize does this for custom resources too).

Anything outside the subset raises `UnsupportedKustomization` instead of being silently ignored,
and this renderer is stricter than kustomize in one place: a patch whose target matches no
object is an error. `tests/infra/test_kustomize_lite.py` compares the output with
`kubectl kustomize` wherever that binary exists.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
)
SUPPORTED_TARGET_KEYS = frozenset({"group", "version", "kind", "name"})
# Kinds that kustomize's namespace transformer leaves alone (the ones this project could meet).
CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
)

Manifest = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature outside the subset this renderer implements."""


class PatchError(ValueError):
    """A JSON 6902 op could not be applied (bad path, failed `test`, unknown target)."""


def build(directory: Path | str) -> list[Manifest]:
    """Render the kustomization in `directory` like `kustomize build` (for the subset above)."""
    directory = Path(directory)
    kustomization = _load_kustomization(directory)
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(load_manifests(path))
    _reject_duplicates(objects)
    for patch in kustomization.get("patches", []):
        _apply_patch_entry(objects, patch, directory)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        _apply_labels(objects, entry)
    for entry in kustomization.get("images", []):
        _apply_image(objects, entry)
    return objects


def load_manifests(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file; each must be a Kubernetes object."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ValueError(f"{path}: every document must be an object with apiVersion and kind")
    return documents


def _load_kustomization(directory: Path) -> Manifest:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no kustomization.yaml in {directory}")
    kustomization = yaml.safe_load(path.read_text()) or {}
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{path}: fields {sorted(unsupported)} are not supported")
    return kustomization


def object_id(obj: Manifest) -> tuple[str, str, str, str]:
    metadata = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], metadata.get("namespace", ""), metadata["name"])


def _reject_duplicates(objects: list[Manifest]) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = object_id(obj)
        if key in seen:
            raise ValueError(f"resource {key} is listed twice")
        seen.add(key)


# ---- patches ---------------------------------------------------------------------------------


def _apply_patch_entry(objects: list[Manifest], entry: Manifest, directory: Path) -> None:
    if ("path" in entry) == ("patch" in entry):
        raise UnsupportedKustomization(f"a patch needs exactly one of path/patch: {entry}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise UnsupportedKustomization(
            f"only JSON 6902 patches (a list of ops) are supported, not strategic merge: {entry}"
        )
    target = entry.get("target")
    if not target:
        raise UnsupportedKustomization(f"a JSON 6902 patch needs a target: {entry}")
    unsupported = set(target) - SUPPORTED_TARGET_KEYS
    if unsupported:
        raise UnsupportedKustomization(f"target selectors {sorted(unsupported)} not supported")
    matches = [obj for obj in objects if _matches(obj, target)]
    if not matches:
        raise PatchError(f"patch target {target} matches no resource")
    for obj in matches:
        for op in ops:
            apply_json_patch_op(obj, op)


def _matches(obj: Manifest, target: Manifest) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
    }
    return all(actual[key] == value for key, value in target.items())


def _pointer_tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _list_index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit():
        raise PatchError(f"list index expected, got {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"list index {index} out of range (length {len(container)})")
    return index


def _resolve_parent(document: Any, tokens: list[str], pointer: str) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(node, token, allow_end=False)]
        else:
            raise PatchError(f"path {pointer!r} does not exist (at {token!r})")
    return node


def apply_json_patch_op(document: Manifest, op: Manifest) -> None:
    """Apply one RFC 6902 op (add, remove, replace, test) to `document` in place."""
    kind, pointer = op.get("op"), op.get("path")
    if kind not in {"add", "remove", "replace", "test"} or not isinstance(pointer, str):
        raise UnsupportedKustomization(f"unsupported JSON patch op: {op}")
    tokens = _pointer_tokens(pointer)
    if not tokens:
        raise PatchError("ops on the whole document are not supported")
    parent = _resolve_parent(document, tokens, pointer)
    key = tokens[-1]
    if isinstance(parent, list):
        index = _list_index(parent, key, allow_end=kind == "add")
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            del parent[index]
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif parent[index] != op["value"]:
            raise PatchError(f"test failed at {pointer!r}: {parent[index]!r} != {op['value']!r}")
        return
    if not isinstance(parent, dict):
        raise PatchError(f"path {pointer!r} does not exist")
    if kind != "add" and key not in parent:
        raise PatchError(f"path {pointer!r} does not exist")
    if kind in {"add", "replace"}:
        parent[key] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[key]
    elif parent[key] != op["value"]:
        raise PatchError(f"test failed at {pointer!r}: {parent[key]!r} != {op['value']!r}")


# ---- labels and images -----------------------------------------------------------------------


def _apply_labels(objects: list[Manifest], entry: Manifest) -> None:
    if entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise UnsupportedKustomization("labels with includeSelectors/includeTemplates")
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise UnsupportedKustomization(f"labels entry not supported: {entry}")
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/repo/name:tag@sha256:...` -> (name, tag, digest)."""
    name, _, digest = image.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _apply_image(objects: list[Manifest], entry: Manifest) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedKustomization(f"images entry not supported: {entry}")
    for obj in objects:
        for container in _containers(obj):
            name, tag, digest = split_image(container.get("image", ""))
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            if "digest" in entry:
                tag, digest = None, entry["digest"]
            elif "newTag" in entry:
                tag, digest = str(entry["newTag"]), None
            container["image"] = (
                name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            )


def _containers(node: Any) -> Iterator[Manifest]:
    """Every container spec anywhere in the object (pod templates nest at any depth in CRDs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"containers", "initContainers"} and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)
