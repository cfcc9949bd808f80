"""CompressionConfig's stored form: fields added later (LEGACY_VALUES) keep old hashes."""

from __future__ import annotations

import dataclasses

import pytest

from compression.config import LEGACY_VALUES, CompressionConfig


def test_a_config_stored_before_a_field_existed_reads_with_its_legacy_value_and_hash():
    today = CompressionConfig(retention_ratio=0.05, method="ours")
    stored = {k: v for k, v in today.to_dict().items() if k not in LEGACY_VALUES}
    old = CompressionConfig.from_dict(stored)
    assert old.dpc_knn_convention == LEGACY_VALUES["dpc_knn_convention"] == "exclude_self"
    # the hash a writer computed before the field existed: every field it knew, nothing else
    legacy = dataclasses.replace(today, dpc_knn_convention="exclude_self")
    assert old == legacy and old.stable_hash() == legacy.stable_hash()
    assert today.stable_hash() != legacy.stable_hash()  # the new default is another setting


def test_a_field_away_from_its_legacy_value_round_trips_and_changes_the_hash():
    config = CompressionConfig(dpc_knn_convention="peers")
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert config.stable_hash() == CompressionConfig.from_dict(config.to_dict()).stable_hash()
    legacy = CompressionConfig(dpc_knn_convention="exclude_self")
    assert config.stable_hash() != legacy.stable_hash()


def test_unknown_convention_and_fields_are_refused():
    with pytest.raises(ValueError, match="dpc_knn_convention"):
        CompressionConfig(dpc_knn_convention="self")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown CompressionConfig fields"):
        CompressionConfig.from_dict({"knn_k": 7, "colour": "red"})
