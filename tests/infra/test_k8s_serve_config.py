"""The RayService's serveConfigV2 is a valid Serve config whose import path builds this
repository's application from the args and environment the manifests give it."""

from __future__ import annotations

import importlib

import pytest
import yaml
from ray_manifests import KUSTOMIZATIONS, Manifest, one

# What the Secrets provide in the cluster (placeholders; only their presence matters here).
SECRET_ENV = {
    "TOKENREEL_CATALOG_URL": "postgresql+psycopg://tokenreel:placeholder@db.invalid:5432/tokenreel",
    "TOKENREEL_API_KEY": "placeholder-api-key",
}


def _serve_config(objects: list[Manifest]) -> dict:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def _resolve(import_path: str):
    module_name, _, attribute = import_path.partition(":")
    if not attribute:  # Serve also accepts "package.module.attribute"
        module_name, _, attribute = import_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_serve_config_validates(rendered: dict, name: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(_serve_config(rendered[name]))
    assert [app.import_path for app in config.applications] == ["serving.app:build_app"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_import_path_builds_the_application(
    rendered: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve import Application

    # The environment a Serve replica gets in the pod: the ConfigMap plus the Secrets.
    for key, value in {**one(rendered[name], "ConfigMap")["data"], **SECRET_ENV}.items():
        monkeypatch.setenv(key, value)
    (app,) = _serve_config(rendered[name])["applications"]
    builder = _resolve(app["import_path"])
    assert callable(builder)
    assert isinstance(builder(app["args"]), Application)


def test_broken_serve_config_is_rejected(rendered: dict) -> None:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = _serve_config(rendered["prod"])
    config["http_options"]["port"] = "eighty"
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)
    del config["applications"][0]["import_path"]
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)


def _probes(objects: list[Manifest]) -> list[tuple[str, int]]:
    spec = one(objects, "RayService")["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    return [
        (probe["httpGet"]["path"], probe["httpGet"]["port"])
        for pod in pods
        for container in pod["spec"]["containers"]
        for kind in ("readinessProbe", "livenessProbe")
        if (probe := container.get(kind)) and "httpGet" in probe
    ]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_serve_pods_are_ready_when_a_model_replica_answers(rendered: dict, name: str) -> None:
    from serving.api import router
    from serving.middleware import UNAUTHENTICATED_PATHS

    serve_port = _serve_config(rendered[name])["http_options"]["port"]
    on_serve_port = [path for path, port in _probes(rendered[name]) if port == serve_port]
    assert on_serve_port == ["/readyz"]
    # the path is the service's own readiness route, open without the API key
    assert "/readyz" in {route.path for route in router.routes}
    assert "/readyz" in UNAUTHENTICATED_PATHS
