"""MergeConfig: one step or a layer schedule (Fig. S1), its validation, its kept counts, and the
K of each inner method on models of any depth."""

from __future__ import annotations

import math

import pytest

from compression.config import (
    INNER_METHODS,
    PUBLISHED_MERGE_LAYERS,
    MergeConfig,
    default_merge_layer,
)


def test_one_step_config_means_what_it_always_meant() -> None:
    config = MergeConfig(layer=18, keep_ratio=0.5)
    assert config == MergeConfig() == MergeConfig.from_schedule([(18, 0.5)])
    assert config.schedule == ((18, 0.5),) and config.later_steps == ()
    assert config.kept_count(125) == 63 == math.ceil(0.5 * 125)
    assert MergeConfig("fastv", 3, 0.1, 0.5).layer == 3  # positional order unchanged


def test_default_layer_is_each_methods_published_k() -> None:
    assert [MergeConfig(method=m).layer for m in ("text_aware", "fastv", "holitom")] == [18, 2, 18]
    assert MergeConfig(method="holitom").keep_ratio == 0.5  # HoliTom's HOLITOM_r = 0.5


def test_schedule_steps_compose_relative_to_the_previous_step() -> None:
    config = MergeConfig.from_schedule([[8, 0.5], [16, 0.5], [24, 0.2]], method="holitom")
    assert config.schedule == ((8, 0.5), (16, 0.5), (24, 0.2))
    assert isinstance(config.later_steps, tuple) and hash(config) == hash(
        MergeConfig("holitom", 8, 0.5, 0.5, ((16, 0.5), (24, 0.2)))
    )
    # 125 -> ceil(62.5) = 63 -> ceil(31.5) = 32 -> ceil(6.4) = 7
    assert config.kept_counts(125) == [63, 32, 7] and config.kept_count(125) == 7
    assert config.kept_counts(1) == [1, 1, 1] and config.kept_counts(0) == [0, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"later_steps": ((18, 0.5),)}, "strictly increasing"),
        ({"layer": 4, "later_steps": ((8, 0.5), (6, 0.5))}, "strictly increasing"),
        ({"later_steps": ((20, 0.0),)}, "keep_ratio"),
        ({"later_steps": ((20, 1.5),)}, "keep_ratio"),
        ({"keep_ratio": float("nan")}, "keep_ratio"),
        ({"later_steps": ((20.0, 0.5),)}, "non-negative integer"),
        ({"layer": -1}, "non-negative integer"),
        ({"layer": True}, "non-negative integer"),
        ({"later_steps": ((20,),)}, "pair"),
        ({"later_steps": "20:0.5"}, "sequence"),
        ({"method": "fastv", "layer": 0}, "K - 1"),
        ({"method": "holitom", "layer": 0}, "K - 1"),
        ({"method": "tome"}, "unknown merge method"),
        ({"lam": 2.0}, "lam"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MergeConfig(**kwargs)


def test_from_schedule_rejects_an_empty_or_malformed_schedule() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MergeConfig.from_schedule([])
    with pytest.raises(ValueError, match="pair"):
        MergeConfig.from_schedule([8])
    assert MergeConfig.from_schedule([(0, 0.5)]).layer == 0  # ours may merge at layer 0


def test_default_merge_layer_scales_each_methods_k() -> None:
    assert set(PUBLISHED_MERGE_LAYERS) == set(INNER_METHODS) - {"none"}
    assert [default_merge_layer(28, m) for m in ("text_aware", "fastv", "holitom")] == [18, 2, 18]
    assert default_merge_layer(28) == 18  # text_aware unless told
    # round(K * L / 28) within [1, L - 1]
    assert [default_merge_layer(n, "fastv") for n in (2, 4, 24, 32, 80)] == [1, 1, 2, 2, 6]
    assert [default_merge_layer(n) for n in (2, 4, 24, 80)] == [1, 3, 15, 51]
    with pytest.raises(ValueError, match="no merge layer"):
        default_merge_layer(28, "none")
