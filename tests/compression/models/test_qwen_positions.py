"""3D M-RoPE position ids of Qwen2.5-VL prompts (METHOD.md section 4), derived by hand."""

from __future__ import annotations

import pytest
import torch

from compression.models.qwen2_5_vl import (
    grid_index,
    prompt_position_ids,
    seconds_per_grid_step,
    temporal_positions,
    video_span_positions,
)


def test_small_grid_by_hand() -> None:
    # 2 text tokens, a 3 x 2 x 2 video at 1 s per temporal step and 2 tokens per second
    # (temporal ids 0, 2, 4), then 3 text tokens. The video spans ids 2..6 (t row: 2 + 4), so
    # the text after it starts at 7 in all three rows.
    positions = prompt_position_ids(2, grid_index((3, 2, 2)), (3, 2, 2), 3, 1.0, 2)
    expected = torch.tensor(
        [
            [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8, 9],
            [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3, 7, 8, 9],
            [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 7, 8, 9],
        ]
    )
    assert torch.equal(positions, expected)


def test_spatial_extent_sets_the_text_start_when_it_dominates() -> None:
    # One temporal step, 3 x 5 merged grid after 4 text tokens: the largest id is w = 4 + 4 = 8.
    video, text_start = video_span_positions(grid_index((1, 3, 5)), (1, 3, 5), 4, 1.0, 2)
    assert text_start == 9
    assert video[0].tolist() == [4] * 15
    assert video[1].tolist() == [4] * 5 + [5] * 5 + [6] * 5
    assert video[2].tolist() == [4, 5, 6, 7, 8] * 3


def test_temporal_ids_truncate_fractional_intervals() -> None:
    # 0.75 s per step at 2 tokens per second: 1.5 ids per step -> floor(0, 1.5, 3.0, 4.5).
    assert temporal_positions(4, 0.75, 2).tolist() == [0, 1, 3, 4]


def test_kept_subset_keeps_the_full_videos_positions_and_text_start() -> None:
    grid = (4, 3, 2)
    full = prompt_position_ids(5, grid_index(grid), grid, 4, 0.5, 3)
    keep = torch.tensor([0, 3, 7, 8, 13, 20])  # leaves out the last temporal step's max ids
    subset = prompt_position_ids(5, grid_index(grid)[keep], grid, 4, 0.5, 3)
    assert torch.equal(subset[:, :5], full[:, :5])
    assert torch.equal(subset[:, 5 : 5 + len(keep)], full[:, 5 + keep])
    assert torch.equal(subset[:, -4:], full[:, -4:])


def test_index_outside_the_grid_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside the grid"):
        video_span_positions(torch.tensor([[0, 2, 0]]), (1, 2, 2), 0, 1.0, 2)


def test_seconds_per_grid_step_from_timestamps() -> None:
    # 5 frames 0.5 s apart = 2 fps: two frames per temporal step = 1 s, as the processor's
    # second_per_grid_ts = temporal_patch_size / fps.
    assert seconds_per_grid_step([0.0, 0.5, 1.0, 1.5, 2.0], 2) == pytest.approx(1.0)
    assert seconds_per_grid_step([3.0], 2) == 1.0
    assert seconds_per_grid_step([], 2) == 1.0


def test_transformers_5_rule_differs_only_after_a_long_video() -> None:
    """transformers 5.23 starts the text after a video at start + max(H, W); ours at the video's
    largest id + 1. With 3 temporal steps 2 ids apart on a 2 x 2 grid the rules disagree."""
    from compression.models.tiny import build_tiny_qwen2_5_vl

    model, _ = build_tiny_qwen2_5_vl()
    video_token = model.config.video_token_id
    grid = (3, 2, 2)
    ids = torch.tensor([[7, 8] + [video_token] * 12 + [9, 10, 11]])
    types = (ids == video_token).int() * 2
    hf, _ = model.model.get_rope_index(
        ids,
        mm_token_type_ids=types,
        video_grid_thw=torch.tensor([[3, 4, 4]]),
        second_per_grid_ts=torch.tensor([1.0]),
    )
    ours = prompt_position_ids(2, grid_index(grid), grid, 3, 1.0, 2)
    assert torch.equal(hf[:, 0, :14], ours[:, :14])  # the text before and the video agree
    assert hf[0, 0, 14:].tolist() == [4, 5, 6]  # 2 + max(2, 2): overlaps temporal ids 4 and 6
    assert ours[0, 14:].tolist() == [7, 8, 9]
