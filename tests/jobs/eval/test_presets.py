"""Presets: each lays out its table's rows and benchmarks; presets reuse token sets wherever the
outer config is the same (counted on what the tiny model indexes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.config import CompressionConfig
from jobs.eval.presets import MULTIPLE_CHOICE, PRESETS, get_preset, list_presets
from jobs.eval.sweep import unique_configs

BASE = CompressionConfig()


def _rows(name: str, num_layers: int = 28, base: CompressionConfig = BASE):
    return get_preset(name).entries(base, num_layers)


def test_table_s2_rows_are_the_papers_rows_without_dytok_and_scissor() -> None:
    rows = [(e.label, e.retention) for e in _rows("table-s2")]
    at_15 = [
        ("VisionZip-style", "15%"),
        ("FastVID", "15%"),
        ("HoliTom", "15%/7.5%"),
        ("Ours", "15%/7.5%"),
    ]

    def at(r: str, half: str) -> list[tuple[str, str]]:
        return [
            ("FastV", f"100%/{r}"),
            ("VisionZip-style", r),
            ("FastVID", r),
            ("HoliTom", f"{r}/{half}"),
            ("Ours (w/o M)", r),
            ("Ours", f"{r}/{half}"),
        ]

    expected = [("Vanilla", "100%"), *at_15, *at("10%", "5%"), *at("5%", "2.5%")]
    expected += [*at("2%", "1%"), *at("1%", "0.5%")]
    assert rows == expected
    assert get_preset("table-s2").benchmarks == MULTIPLE_CHOICE


def test_tables_s1_and_s3_rows_and_benchmarks() -> None:
    s1 = [(e.label, e.retention) for e in _rows("table-s1")]
    assert s1 == [("Vanilla", "100%")] + [
        row
        for r, half in (("2%", "1%"), ("1%", "0.5%"))
        for row in [
            ("VisionZip-style", r),
            ("FastVID", r),
            ("Ours (w/o M)", r),
            ("Ours", f"{r}/{half}"),
        ]
    ]
    assert get_preset("table-s1").family == "qwen2_5_vl"
    s3 = [(e.label, e.retention) for e in _rows("table-s3")]
    assert s3 == [
        ("Vanilla", "100%"),
        ("VisionZip-style", "2%"),
        ("FastVID", "2%"),
        ("HoliTom", "2%/1%"),
        ("Ours", "2%/1%"),
    ]
    assert get_preset("table-s3").benchmarks == ("activitynetqa",)


def test_table_s4_frames() -> None:
    rows = [(e.label, e.setting, e.outer.frames, e.retention) for e in _rows("table-s4")]
    assert rows == [("Vanilla", "16", 16, "100%")] + [
        (label, str(f), f, "2%/1%") for f in (64, 96, 128) for label in ("HoliTom", "Ours")
    ]


def test_tables_s5_and_s8_vary_only_the_merge_of_one_token_set() -> None:
    s5 = _rows("table-s5")
    assert [(e.setting, e.merge.layer) for e in s5[1:]] == [
        ("2", 2),
        ("7", 7),
        ("14", 14),
        ("18", 18),
        ("21", 21),
    ]
    assert s5[0].label == "Vanilla" and s5[0].setting == "-"
    assert {(e.merge.keep_ratio, e.merge.lam, e.retention) for e in s5[1:]} == {(0.5, 0.5, "2%/1%")}
    s8 = _rows("table-s8")
    assert [(e.setting, e.merge.lam, e.merge.layer) for e in s8[1:]] == [
        ("0", 0.0, 18),
        ("0.25", 0.25, 18),
        ("0.5", 0.5, 18),
        ("0.75", 0.75, 18),
        ("1", 1.0, 18),
    ]
    for rows in (s5, s8):
        assert len(unique_configs(rows)) == 2  # the full model's and ours at 2%
    # on a 4-layer model K is scaled, and the setting says so
    assert [e.setting for e in _rows("table-s5", 4)[1:]] == ["2→1", "7→1", "14→2", "18→3", "21→3"]


def test_tables_s6_and_s7_vary_the_outer_stage_without_merge() -> None:
    s6 = _rows("table-s6")
    assert [(e.setting, e.outer.tau) for e in s6[1:]] == [
        ("0.5", 0.5),
        ("0.6", 0.6),
        ("0.7", 0.7),
        ("0.8", 0.8),
        ("0.9", 0.9),
    ]
    s7 = _rows("table-s7")
    assert [e.outer.cluster_ratio for e in s7[1:]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    for rows in (s6, s7):
        assert {(e.label, e.retention, e.merge.method) for e in rows[1:]} == {
            ("Ours (w/o M)", "2%", "none")
        }
        assert len(unique_configs(rows)) == len(rows)  # each row its own outer config


def test_fig_s1_is_a_grid_of_layers_and_pruning_ratios() -> None:
    rows = _rows("fig-s1")
    assert rows[0].label == "Vanilla" and len(rows) == 1 + 15
    grid = {(e.merge.layer, e.merge.keep_ratio) for e in rows[1:]}
    assert grid == {(k, r) for k in (2, 7, 14, 18, 21) for r in (0.75, 0.5, 0.25)}
    assert rows[1].setting == "2 / 25%" and rows[1].series == "pruning 25%"
    assert len(unique_configs(rows)) == 2


def test_every_preset_has_unique_rows_and_a_listing() -> None:
    listing = list_presets()
    for name, preset in PRESETS.items():
        for layers in (28, 4):
            preset.entries(BASE, layers)  # raises on a repeated row key
        assert name in listing and preset.description
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("table-s9")


def test_presets_share_outer_configs() -> None:
    """What a store holding one preset's token sets still lacks for another (counted per video:
    the outer configs not yet seen)."""
    seen: set[str] = set()

    def new(name: str) -> int:
        hashes = {c.stable_hash() for c in unique_configs(_rows(name))}
        added = len(hashes - seen)
        seen.update(hashes)
        return added

    assert new("table-s5") == 2  # full + ours at 2%
    assert new("table-s8") == 0  # lambda: inner only
    assert new("fig-s1") == 0  # K and R: inner only
    assert new("table-s6") == 4  # the four taus other than 0.7
    assert new("table-s7") == 6  # the six cluster ratios other than 0.3
    # Table S2 at 2% shares ours (and the full model for FastV) with them
    assert new("table-s2") == len(unique_configs(_rows("table-s2"))) - 2


# -- what the tiny model actually indexes ------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_indexes_only_the_outer_configs_it_changes(tmp_path: Path) -> None:
    import numpy as np

    from compression.models import load_video_llm
    from jobs.eval.evaluate import BenchmarkTokenSets, EvalSettings
    from storage import open_store
    from tokenreel.sample_videos import write_video

    videos = []
    for name, rgb in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
        videos.append(str(tmp_path / f"{name}.mp4"))
        frames = np.full((8, 64, 64, 3), rgb, np.uint8)
        frames[:, :32] //= 2  # two halves, so the outer stage has something to choose
        write_video(Path(videos[-1]), frames)
    llm = load_video_llm("tiny-llava-ov")
    store = open_store(str(tmp_path / "store"))
    base = CompressionConfig(frames=8)

    def prepare(name: str) -> tuple[int, int]:
        token_sets = BenchmarkTokenSets(llm, store, EvalSettings())
        configs = unique_configs(get_preset(name).entries(base, llm.num_layers))
        token_sets.prepare(dict.fromkeys(videos, configs))
        assert not token_sets.failed
        return token_sets.indexed, token_sets.reused

    assert prepare("table-s5") == (2 * 2, 0)  # per video: the full set and ours at 2%
    assert prepare("table-s8") == (0, 2 * 2)  # lambda sweep: nothing new
    assert prepare("fig-s1") == (0, 2 * 2)
    assert prepare("table-s6") == (2 * 4, 2 * 2)  # only the four new taus
    assert prepare("table-s6") == (0, 2 * 6)
