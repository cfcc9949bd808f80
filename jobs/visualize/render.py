"""Draw what happened to every visual token of a video (the supplement's Figs. S2 and S3).

Kept apart from the algorithm, as ToMe keeps its `vis.py`: compression stays pure; this module
only reads a `TokenSet` (and, for a question, `Answer.kept_visual`) and paints the sampled frames
(`jobs.visualize.video` finds them for an indexed video).

First block, one panel per sampled frame, every original token's patch outlined by its fate in
the outer stage (from `TokenSet.assignment`):

* green: kept, represented by a selected token (the retention pool, or a baseline's pick);
* purple: merged into a cluster token (DPC-KNN refill, or a baseline's merge); the cluster's
  centre (the position the cluster token carries) gets a filled purple dot;
* red: dropped, represented by nothing (`assignment == -1`).

Second block, when a question was asked: which tokens the in-LLM merge kept at layer K (Fig. S2).
Original tokens whose token-set row is in `kept_visual` are outlined amber; every other patch
(merged at K into a kept token, or dropped before the LLM) is darkened.

Frames and the temporal grid: the grid has T steps; with F sampled frames, each step covers
F / T frames (1 for LLaVA-OneVision; 2 for Qwen2.5-VL, whose ViT patches pairs of frames), so
frame f shows the tokens of step f // (F / T). Spatially, both plug-ins feed the whole frame
resized to the token grid (no crop), so token (h, w) covers the same share of the frame's height
and width: rows [h, h + 1) * frame_height / H, and the same for columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from compression.token_set import TokenKind, TokenSet

KEPT, MERGED, DROPPED = 0, 1, 2
FATE_COLOURS: dict[int, tuple[int, int, int]] = {
    KEPT: (0, 200, 0),
    MERGED: (160, 32, 240),
    DROPPED: (230, 0, 0),
}
QUESTION_KEPT_COLOUR = (255, 191, 0)
DARKEN = 0.35  # brightness left to the patches the in-LLM merge did not keep
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def token_fates(token_set: TokenSet) -> np.ndarray:
    """[T, H, W] int array of KEPT / MERGED / DROPPED for every original token."""
    if token_set.assignment is None:
        raise ValueError(
            "this token set has no assignment (which row represents each original token), "
            "so the fate of each token is unknown; re-index it with a current tokenreel"
        )
    assignment = token_set.assignment.cpu().long()
    kinds = token_set.kind.cpu().long()
    fates = torch.full_like(assignment, DROPPED)
    assigned = assignment >= 0
    row_kind = kinds[assignment[assigned]]
    fates[assigned] = torch.where(row_kind == TokenKind.CLUSTER, MERGED, KEPT)
    return fates.reshape(token_set.grid).numpy()


def frames_per_step(frame_count: int, temporal_steps: int) -> int:
    """How many sampled frames one temporal grid step covers (see the module docstring)."""
    if frame_count < 1 or temporal_steps < 1 or frame_count % temporal_steps:
        raise ValueError(
            f"{frame_count} frames do not split evenly over {temporal_steps} temporal grid steps"
        )
    return frame_count // temporal_steps


@dataclass(frozen=True)
class FigureLayout:
    """Where each panel and each token's patch lands in the figure (pixels, inclusive boxes)."""

    frame_count: int
    columns: int
    panel_width: int
    panel_height: int
    blocks: int = 1
    gap: int = 4
    header_height: int = 0
    block_title_height: int = 14

    @property
    def rows(self) -> int:
        return math.ceil(self.frame_count / self.columns)

    @property
    def block_height(self) -> int:
        return self.block_title_height + self.rows * (self.panel_height + self.gap)

    @property
    def size(self) -> tuple[int, int]:
        width = self.gap + min(self.columns, self.frame_count) * (self.panel_width + self.gap)
        height = self.header_height + self.blocks * self.block_height + self.gap
        return width, height

    def panel_origin(self, block: int, frame: int) -> tuple[int, int]:
        row, col = divmod(frame, self.columns)
        x = self.gap + col * (self.panel_width + self.gap)
        y = (
            self.header_height
            + block * self.block_height
            + self.block_title_height
            + self.gap
            + row * (self.panel_height + self.gap)
        )
        return x, y

    def patch_box(
        self, block: int, frame: int, h: int, w: int, grid_hw: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive, of token (h, w) on the panel of `frame`."""
        ox, oy = self.panel_origin(block, frame)
        rows, cols = grid_hw
        x0 = ox + (w * self.panel_width) // cols
        x1 = ox + ((w + 1) * self.panel_width) // cols - 1
        y0 = oy + (h * self.panel_height) // rows
        y1 = oy + ((h + 1) * self.panel_height) // rows - 1
        return x0, y0, x1, y1


def figure_layout(
    frames_shape: Sequence[int],
    *,
    panel_width: int = 192,
    columns: int = 8,
    question: bool = False,
    caption_lines: int = 0,
) -> FigureLayout:
    """The layout `render_token_fates` draws for frames of shape [F, H, W, 3]."""
    if panel_width < 8 or columns < 1:
        raise ValueError(f"panel_width must be >= 8 and columns >= 1, got {panel_width}, {columns}")
    count, height, width = frames_shape[:3]
    return FigureLayout(
        frame_count=count,
        columns=columns,
        panel_width=panel_width,
        panel_height=max(8, round(panel_width * height / width)),
        blocks=2 if question else 1,
        header_height=14 * caption_lines + (4 if caption_lines else 0),
    )


def _line_width(layout: FigureLayout, grid_hw: tuple[int, int]) -> int:
    cell = min(layout.panel_width // grid_hw[1], layout.panel_height // grid_hw[0])
    return 2 if cell >= 10 else 1


def render_token_fates(
    frames: np.ndarray,
    token_set: TokenSet,
    *,
    kept_rows: torch.Tensor | Sequence[int] | None = None,
    panel_width: int = 192,
    columns: int = 8,
    caption: Sequence[str] = (),
) -> Image.Image:
    """The figure for decoded `frames` (uint8 [F, H, W, 3], the token set's sampled frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    layout = figure_layout(
        frames.shape, panel_width=panel_width, columns=columns,
        question=kept_rows is not None, caption_lines=len(caption),
    )  # fmt: skip
    font = ImageFont.load_default()
    figure = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(figure)
    for i, line in enumerate(caption):
        draw.text((layout.gap, 2 + 14 * i), line, fill=TEXT_COLOUR, font=font)
    panels = [
        Image.fromarray(frame).resize(
            (layout.panel_width, layout.panel_height), Image.Resampling.BILINEAR
        )
        for frame in frames
    ]
    _draw_outer_block(figure, draw, layout, panels, token_set, font)
    if kept_rows is not None:
        _draw_question_block(figure, draw, layout, panels, token_set, kept_rows, font)
    return figure


def _draw_outer_block(
    figure: Image.Image,
    draw: ImageDraw.ImageDraw,
    layout: FigureLayout,
    panels: Sequence[Image.Image],
    token_set: TokenSet,
    font: ImageFont.ImageFont,
) -> None:
    """Block 0: every patch outlined by its fate; a dot on each cluster's centre."""
    fates = token_fates(token_set)
    steps, grid_h, grid_w = token_set.grid
    per_step = frames_per_step(len(panels), steps)
    width = _line_width(layout, (grid_h, grid_w))
    _block_title(
        draw, layout, 0, "outer stage: green kept, purple merged (dot: centre), red dropped", font
    )
    for f, panel in enumerate(panels):
        figure.paste(panel, layout.panel_origin(0, f))
        for h in range(grid_h):
            for w in range(grid_w):
                box = _inset(layout.patch_box(0, f, h, w, (grid_h, grid_w)), 1)
                colour = FATE_COLOURS[int(fates[f // per_step, h, w])]
                draw.rectangle(box, outline=colour, width=width)
    centres = token_set.index[token_set.kind.cpu() == TokenKind.CLUSTER].cpu().tolist()
    for t, h, w in centres:
        for f in range(t * per_step, (t + 1) * per_step):
            x0, y0, x1, y1 = layout.patch_box(0, f, h, w, (grid_h, grid_w))
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            r = max(1.5, min(x1 - x0, y1 - y0) / 6)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=FATE_COLOURS[MERGED])


def _draw_question_block(
    figure: Image.Image,
    draw: ImageDraw.ImageDraw,
    layout: FigureLayout,
    panels: Sequence[Image.Image],
    token_set: TokenSet,
    kept_rows: torch.Tensor | Sequence[int],
    font: ImageFont.ImageFont,
) -> None:
    """Block 1: patches kept at layer K outlined amber, all others darkened."""
    steps, grid_h, grid_w = token_set.grid
    per_step = frames_per_step(len(panels), steps)
    width = _line_width(layout, (grid_h, grid_w))
    kept = _kept_mask(token_set, kept_rows).reshape(token_set.grid)
    _block_title(draw, layout, 1, "in the LLM at layer K: amber kept for this question", font)
    for f, panel in enumerate(panels):
        step_kept = kept[f // per_step]
        lit = _upsample_mask(step_kept, layout.panel_height, layout.panel_width)
        shaded = np.asarray(panel).astype(np.float32) * np.where(lit[..., None], 1.0, DARKEN)
        figure.paste(Image.fromarray(shaded.round().astype(np.uint8)), layout.panel_origin(1, f))
        for h, w in zip(*np.nonzero(step_kept), strict=True):
            box = _inset(layout.patch_box(1, f, int(h), int(w), (grid_h, grid_w)), 1)
            draw.rectangle(box, outline=QUESTION_KEPT_COLOUR, width=width)


def _inset(box: tuple[int, int, int, int], by: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return x0 + by, y0 + by, max(x0 + by, x1 - by), max(y0 + by, y1 - by)


def _block_title(
    draw: ImageDraw.ImageDraw, layout: FigureLayout, block: int, text: str, font
) -> None:
    x, y = layout.panel_origin(block, 0)
    draw.text(
        (x, y - layout.gap - layout.block_title_height + 1), text, fill=TEXT_COLOUR, font=font
    )


def _kept_mask(token_set: TokenSet, kept_rows: torch.Tensor | Sequence[int]) -> np.ndarray:
    """[N] bool: original tokens whose token-set row the in-LLM merge kept."""
    rows = torch.as_tensor(kept_rows, dtype=torch.long).cpu().flatten()
    if rows.numel() and (rows.min() < 0 or rows.max() >= token_set.kept_count):
        raise ValueError(f"kept rows must lie in [0, {token_set.kept_count}), got {rows.tolist()}")
    kept_row = torch.zeros(token_set.kept_count, dtype=torch.bool)
    kept_row[rows] = True
    assignment = token_set.assignment.cpu().long()  # token_fates already checked it exists
    mask = torch.zeros_like(assignment, dtype=torch.bool)
    assigned = assignment >= 0
    mask[assigned] = kept_row[assignment[assigned]]
    return mask.numpy()


def _upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] -> [height, width], each cell filling exactly the pixels `patch_box` gives it."""
    return mask[_cell_of_pixel(height, mask.shape[0])][:, _cell_of_pixel(width, mask.shape[1])]


def _cell_of_pixel(pixels: int, cells: int) -> np.ndarray:
    starts = (np.arange(cells) * pixels) // cells
    return np.searchsorted(starts, np.arange(pixels), side="right") - 1
