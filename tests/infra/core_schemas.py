"""Minimal JSON Schemas for the core (non-CRD) objects the overlays render.

Only the fields this project uses or could mistype, but strict about them: names, labels and
ConfigMap keys follow the API server's rules, ConfigMap values must be strings (a bare YAML `1` is
the classic mistake), quantities must parse.
"""

from __future__ import annotations

from typing import Any

import jsonschema

# The API server's rules (k8s.io/apimachinery validation).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE]|m)?$"

METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_SUBDOMAIN},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": LABEL_KEY, "maxLength": 317},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

CONFIG_MAP: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "ConfigMap"},
        "metadata": METADATA,
        "data": {
            "type": "object",
            "propertyNames": {"pattern": CONFIG_KEY, "maxLength": 253},
            "additionalProperties": {"type": "string"},
        },
        "immutable": {"type": "boolean"},
    },
}

PERSISTENT_VOLUME_CLAIM: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "PersistentVolumeClaim"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["accessModes", "resources"],
            "additionalProperties": False,
            "properties": {
                "accessModes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "enum": [
                            "ReadWriteOnce",
                            "ReadOnlyMany",
                            "ReadWriteMany",
                            "ReadWriteOncePod",
                        ]
                    },
                },
                "resources": {
                    "type": "object",
                    "required": ["requests"],
                    "additionalProperties": False,
                    "properties": {
                        "requests": {
                            "type": "object",
                            "required": ["storage"],
                            "additionalProperties": False,
                            "properties": {"storage": {"type": "string", "pattern": QUANTITY}},
                        }
                    },
                },
                "storageClassName": {"type": "string"},
                "volumeMode": {"enum": ["Filesystem", "Block"]},
            },
        },
    },
}

CORE_SCHEMAS = {
    ("v1", "ConfigMap"): CONFIG_MAP,
    ("v1", "PersistentVolumeClaim"): PERSISTENT_VOLUME_CLAIM,
}


def core_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = CORE_SCHEMAS.get((api_version, kind))
    if schema is None:
        raise KeyError(
            f"no schema for core object {api_version}/{kind}: add one to core_schemas.py"
        )
    return jsonschema.Draft202012Validator(schema)


def metadata_validator() -> jsonschema.Draft202012Validator:
    """For the metadata of every object, custom resources included (their CRDs leave it open)."""
    return jsonschema.Draft202012Validator(METADATA)
