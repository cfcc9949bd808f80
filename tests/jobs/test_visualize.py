"""Token-fate drawing on a hand-made token set: colours at known patch locations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.token_set import TokenKind, TokenSet
from jobs.visualize import (
    DARKEN,
    DROPPED,
    FATE_COLOURS,
    KEPT,
    MERGED,
    QUESTION_KEPT_COLOUR,
    FigureLayout,
    frames_per_step,
    render_token_fates,
    token_fates,
)

GREY = 200


def _token_set(grid: tuple[int, int, int] = (2, 2, 2)) -> TokenSet:
    """Grid (T=2, H=2, W=2), N = 8. Rows: 0 selected at (0,0,0); 1 cluster centred at (0,1,1)
    holding (0,0,1), (0,1,0), (0,1,1); 2 selected at (1,0,0). (1,0,1), (1,1,*) dropped."""
    index = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 0, 0]], dtype=torch.int32)
    assignment = torch.tensor([0, 1, 1, 1, 2, -1, -1, -1], dtype=torch.int32)
    return TokenSet(
        tokens=torch.zeros(3, 4),
        index=index,
        kind=torch.tensor([TokenKind.SELECTED, TokenKind.CLUSTER, TokenKind.SELECTED],
                          dtype=torch.int8),
        size=torch.tensor([1, 3, 1], dtype=torch.int32),
        grid=grid,
        assignment=assignment,
        frame_timestamps=(0.0, 1.0),
    )  # fmt: skip


def _frames(count: int) -> np.ndarray:
    return np.full((count, 48, 48, 3), GREY, dtype=np.uint8)


def _layout(image, frames: int, blocks: int) -> FigureLayout:
    layout = FigureLayout(frames, columns=8, panel_width=64, panel_height=64, blocks=blocks)
    assert image.size == layout.size
    return layout


def test_fates_follow_assignment_and_kind() -> None:
    fates = token_fates(_token_set()).reshape(-1).tolist()
    assert fates == [KEPT, MERGED, MERGED, MERGED, KEPT, DROPPED, DROPPED, DROPPED]


def test_outline_colours_and_cluster_centre_dot() -> None:
    ts = _token_set()
    image = render_token_fates(_frames(2), ts, panel_width=64)
    pixels = np.asarray(image)
    layout = _layout(image, 2, blocks=1)
    fates = token_fates(ts)
    for f in range(2):
        for h in range(2):
            for w in range(2):
                x0, y0, x1, y1 = layout.patch_box(0, f, h, w, (2, 2))
                edge = pixels[(y0 + y1) // 2, x0 + 1]  # left side of the inset outline
                assert tuple(edge) == FATE_COLOURS[int(fates[f, h, w])], (f, h, w)
                centre = tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2])
                is_centre = (f, h, w) == (0, 1, 1)
                assert centre == (FATE_COLOURS[MERGED] if is_centre else (GREY,) * 3), (f, h, w)


def test_question_block_outlines_kept_rows_and_darkens_the_rest() -> None:
    ts = _token_set()
    image = render_token_fates(_frames(2), ts, kept_rows=torch.tensor([1]), panel_width=64)
    pixels = np.asarray(image)
    layout = _layout(image, 2, blocks=2)
    kept_by_row_1 = {(0, 0, 1), (0, 1, 0), (0, 1, 1)}
    dark = round(GREY * DARKEN)
    for f in range(2):
        for h in range(2):
            for w in range(2):
                x0, y0, x1, y1 = layout.patch_box(1, f, h, w, (2, 2))
                centre = tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2])
                edge = tuple(pixels[(y0 + y1) // 2, x0 + 1])
                if (f, h, w) in kept_by_row_1:
                    assert centre == (GREY,) * 3 and edge == QUESTION_KEPT_COLOUR
                else:
                    assert centre == (dark,) * 3 and edge == (dark,) * 3


def test_two_frames_per_temporal_step_repeat_the_step() -> None:
    """Qwen2.5-VL: 4 sampled frames over T = 2 steps; frames 0-1 show step 0, 2-3 step 1."""
    ts = _token_set()
    ts = TokenSet(**{**ts.__dict__, "frame_timestamps": (0.0, 0.5, 1.0, 1.5)})
    assert frames_per_step(4, 2) == 2
    image = render_token_fates(_frames(4), ts, panel_width=64)
    pixels = np.asarray(image)
    layout = _layout(image, 4, blocks=1)
    fates = token_fates(ts)
    for f in range(4):
        x0, y0, _, y1 = layout.patch_box(0, f, 1, 0, (2, 2))
        assert tuple(pixels[(y0 + y1) // 2, x0 + 1]) == FATE_COLOURS[int(fates[f // 2, 1, 0])]


def test_bad_inputs() -> None:
    ts = _token_set()
    with pytest.raises(ValueError, match="split evenly"):
        render_token_fates(_frames(3), ts)
    with pytest.raises(ValueError, match="kept rows"):
        render_token_fates(_frames(2), ts, kept_rows=[5])
    no_assignment = TokenSet(**{**ts.__dict__, "assignment": None})
    with pytest.raises(ValueError, match="no assignment"):
        render_token_fates(_frames(2), no_assignment)
