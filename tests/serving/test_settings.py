"""ServeSettings: coercion of config-file strings, env fallbacks, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import ServeSettings


def test_strings_from_a_config_file_are_coerced(tmp_path: Path) -> None:
    settings = ServeSettings.from_args(
        {
            "store_url": str(tmp_path),
            "max_batch_size": "4",
            "num_gpus": "0.5",
            "affinity": "false",
            "max_replicas": 3,
        }
    )
    assert settings.max_batch_size == 4 and settings.num_gpus == 0.5
    assert settings.affinity is False and settings.max_replicas == 3
    assert settings.catalog_url == f"sqlite:///{tmp_path / 'catalog.sqlite'}"


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENREEL_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("TOKENREEL_CATALOG_URL", "postgresql+psycopg://db/x")
    monkeypatch.setenv("TOKENREEL_MODEL", "tiny-qwen2.5-vl")
    settings = ServeSettings.from_args({})
    assert settings.store_url == str(tmp_path / "store")
    assert settings.catalog_url == "postgresql+psycopg://db/x"
    assert settings.model == "tiny-qwen2.5-vl"
    # Explicit arguments win over the environment.
    assert ServeSettings.from_args({"model": "tiny-llava-ov"}).model == "tiny-llava-ov"


def test_relative_store_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOKENREEL_STORE_URL", raising=False)
    monkeypatch.delenv("TOKENREEL_CATALOG_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = ServeSettings.from_args({})
    assert settings.store_url == str(tmp_path / "tokenreel-data")


def test_remote_store_needs_a_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENREEL_CATALOG_URL", raising=False)
    with pytest.raises(ValueError, match="catalog URL"):
        ServeSettings.from_args({"store_url": "s3://bucket/prefix"})


@pytest.mark.parametrize(
    "args",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"max_batch_size": 0},
        {"cache_bytes": -1},
        {"device": "tpu"},
        {"affinity": "maybe"},
        {"max_batch_size": 2.5},
        {"unknown_key": 1},
    ],
)
def test_bad_settings_are_rejected(args: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ServeSettings.from_args({"store_url": str(tmp_path), **args})


def test_served_model_names_from_a_list_or_a_config_string(tmp_path: Path) -> None:
    base = {"store_url": str(tmp_path)}
    listed = ServeSettings.from_args({**base, "served_model_names": ["tiny", "alias"]})
    assert listed.served_model_names == ("tiny", "alias")
    assert listed.model_names("tiny-llava-ov") == ("tiny", "alias")
    text = ServeSettings.from_args({**base, "served_model_names": "tiny, alias"})
    assert text.served_model_names == ("tiny", "alias")
    assert ServeSettings.from_args(base).model_names("tiny-llava-ov") == ("tiny-llava-ov",)
    assert ServeSettings.from_args({**base, "expose_source_uris": "true"}).expose_source_uris


@pytest.mark.parametrize(
    "args",
    [
        {"served_model_names": ["a", "a"]},
        {"served_model_names": ["x" * 300]},
        {"request_timeout_s": 0},
        {"max_queued_requests": 0},
        {"retry_after_s": -1},
    ],
)
def test_bad_edge_settings_are_rejected(args: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ServeSettings.from_args({"store_url": str(tmp_path), **args})
