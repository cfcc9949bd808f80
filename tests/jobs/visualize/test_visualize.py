"""Token-fate drawing on a hand-made token set: colours at known patch locations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.token_set import TokenKind, TokenSet
from jobs.visualize.render import (
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


# -- from an indexed video (tiny model, real store) to the PNG ------------------------------------
@pytest.mark.slow
def test_visualize_command_draws_an_indexed_video(tmp_path, capsys) -> None:
    from PIL import Image

    from compression.config import CompressionConfig
    from compression.models import load_video_llm
    from compression.outer_stage import compress_video
    from jobs.index.decode import DecodeSettings, decode_video
    from jobs.index.sources import local_copy
    from jobs.visualize.render import figure_layout
    from jobs.visualize.video import resolve_video_id, visualize_video
    from storage import open_store
    from storage.ids import video_id_for
    from tokenreel.cli import main
    from tokenreel.sample_videos import make_sample_videos

    [video] = make_sample_videos(tmp_path / "videos", 1, frames=12, width=80, height=64)
    uri = str(video)
    llm = load_video_llm("tiny-llava-ov")
    decoded = decode_video(uri, DecodeSettings(num_frames=4))
    with local_copy(uri) as copy:
        digest = copy.content_hash
    token_set = compress_video(
        llm.encode(decoded.frames, decoded.timestamps), CompressionConfig(retention_ratio=0.25)
    ).with_metadata(model_id=llm.model_id, video_id=video_id_for(uri), source_uri=uri,
                    content_hash=digest)  # fmt: skip
    store_url = str(tmp_path / "store")
    open_store(store_url).save([token_set])
    fates = token_fates(token_set)
    assert {KEPT, MERGED} <= set(fates.reshape(-1).tolist())

    result = visualize_video(uri, open_store(store_url), question="what moves", panel_width=96)
    pixels = np.asarray(result.image)
    layout = figure_layout(decoded.frames.shape, panel_width=96, question=True, caption_lines=4)
    assert result.image.size == layout.size
    np.testing.assert_array_equal(result.frames, decoded.frames)  # the same sampled frames

    def edge(block: int, f: int, h: int, w: int) -> tuple[int, ...]:
        x0, y0, _, y1 = layout.patch_box(block, f, h, w, (3, 3))
        return tuple(pixels[(y0 + y1) // 2, x0 + 1])

    kept_rows = set(result.answer.kept_visual.tolist())
    assignment = token_set.assignment.reshape(4, 3, 3)
    for f in range(4):
        for h in range(3):
            for w in range(3):
                assert edge(0, f, h, w) == FATE_COLOURS[int(fates[f, h, w])]
                kept_at_k = int(assignment[f, h, w]) in kept_rows
                assert (edge(1, f, h, w) == QUESTION_KEPT_COLOUR) == kept_at_k

    out = tmp_path / "fates.png"
    argv = ["visualize", uri, "--store", store_url, "--out", str(out), "--question", "what"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    assert Image.open(out).size == figure_layout(decoded.frames.shape, question=True,
                                                 caption_lines=4).size  # fmt: skip
    assert resolve_video_id(uri) == token_set.video_id
    assert main(["visualize", "0123456789abcdef", "--store", store_url]) == 2  # unknown id
