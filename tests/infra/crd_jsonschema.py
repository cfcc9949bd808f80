"""Validate manifests against CustomResourceDefinitions offline, with the `jsonschema` package.

A CRD's `openAPIV3Schema` is almost JSON Schema; what differs, and how it is handled here:

* `x-kubernetes-int-or-string`: integer or string (the CRDs pair it with an `anyOf`; one is added
  where missing, and any `type` is dropped);
* `nullable: true`: `null` is allowed too;
* `x-kubernetes-preserve-unknown-fields`: unknown keys allowed below that node;
* strictness: an object with `properties` and neither `additionalProperties` nor
  preserve-unknown-fields rejects unknown keys (the API server would silently prune them, which
  hides typos such as `minReplica`: kubeconform's `-strict` does the same);
* `format: int32/int64`: range checked;
* `x-kubernetes-list-type: map|set`: keys (`x-kubernetes-list-map-keys`) or items must be unique,
  as the API server requires;
* `x-kubernetes-validations` (CEL rules): not evaluated offline. Rather than pass a field it cannot
  check, the validator REJECTS any value at a node carrying CEL rules, naming the rules; none of
  them guard a field this project uses (they are on managedBy, deletionStrategy, GCS FT backend).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")

Schema = dict[str, Any]


def openapi_to_jsonschema(node: Schema) -> Schema:
    """Convert one openAPIV3Schema node (recursively) to a JSON Schema (draft 2020-12)."""
    out = dict(node)
    if "properties" in out:
        out["properties"] = {k: openapi_to_jsonschema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = openapi_to_jsonschema(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = openapi_to_jsonschema(out["additionalProperties"])
    for key in _SUBSCHEMA_LISTS:
        if key in out:
            out[key] = [openapi_to_jsonschema(s) for s in out[key]]
    if "not" in out:
        out["not"] = openapi_to_jsonschema(out["not"])

    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserve_unknown = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not preserve_unknown
        and not out.get("x-kubernetes-embedded-resource")
    ):
        out["additionalProperties"] = False
    if out.get("format") in INT_RANGES and out.get("type") == "integer":
        low, high = INT_RANGES[out["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    return out


def _cel_rules(validator: Any, rules: list[Schema], instance: Any, schema: Schema) -> Iterator:
    messages = "; ".join(rule.get("message", rule["rule"]) for rule in rules)
    yield jsonschema.ValidationError(
        f"this field is guarded by CEL rules that cannot be evaluated offline ({messages}); "
        "extend tests/infra/crd_jsonschema.py before using it"
    )


def _list_type(validator: Any, list_type: str, instance: Any, schema: Schema) -> Iterator:
    if not isinstance(instance, list) or list_type == "atomic":
        return
    if list_type == "set":
        keys = [repr(item) for item in instance]
    else:  # "map": unique by the list-map keys
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [repr(tuple(item.get(n) for n in names)) for item in instance]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        yield jsonschema.ValidationError(
            f"duplicate entries in a list of type {list_type!r}: {', '.join(duplicates)}"
        )


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"x-kubernetes-validations": _cel_rules, "x-kubernetes-list-type": _list_type},
)


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader: the CRDs are ~3 MB
    with path.open() as handle:
        return yaml.load(handle, Loader=loader)


@functools.cache
def crd_validators(crd_dir: Path) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> validator, for every served version of every CRD in `crd_dir`."""
    validators = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = _load_yaml(path)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = KubernetesValidator(schema)
    if not validators:
        raise FileNotFoundError(f"no CustomResourceDefinitions in {crd_dir}")
    return validators


def validation_errors(validator: Any, manifest: dict[str, Any]) -> list[str]:
    """Readable errors, each with the path of the offending field."""
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return ["/".join(str(p) for p in e.absolute_path) + ": " + e.message for e in errors]
