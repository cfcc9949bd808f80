"""FastVID's outer stage as a baseline (Shen et al., NeurIPS 2025, github LunarShen/FastVID).

Read from the LLaVA-OneVision implementation, the one its README calls the core code, at commit
a40a109: fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py (lines
cited as L<n>). FastVID prunes the video tokens once, before the first decoder layer; that is
all of it, so all of it is here.

The algorithm, per video of F frames of C = H * W tokens and a per-frame budget b:

1. DySeg (L912-922): s_t = cosine of the global features of frames t and t+1; the video is cut
   after frame t for the c - 1 lowest s_t and for every s_t < tau, so there are at least c
   segments (or F, when F < c: FastVID's topk would fail there; we cut everywhere).
2. STPrune budget (L932-952): b - int(b * d) salient tokens per frame, int(b * d) context
   tokens per frame pooled over the segment and given to its anchor frames: the last frame
   and every p-th frame before it, ceil(L / p) of them in a segment of L frames.
3. ATS (L955-962): a frame's salient tokens are its highest-attention tokens (kind SELECTED).
4. DTM (L964-1059): the density-peak score of the frame's other tokens (its "filtered"
   tokens): distances |x_i - x_j| / sqrt(dim), the 4 nearest neighbours including the token
   itself (k = 4 is fixed in the code, L977), density = exp(-mean squared distance), delta =
   distance to the nearest denser token (the densest: the largest distance in the frame),
   score = delta * density. An anchor frame's anchor tokens are its highest-scoring filtered
   tokens. Every filtered token of the SEGMENT goes to its most cosine-similar anchor of the
   anchor frame (L1034, L1044-1049), and an anchor with n members (itself included) becomes
   w * anchor + (1 - w) * mean(members), w = max(1 / (n + 1), beta) (L1003-1008, L1051-1056).
   Kind CLUSTER, at the anchor's own (t, h, w).

Published defaults (lmms-eval/lmms_eval/models/llava_onevision.py L88-93 and scripts/eval.sh
L6-11 of the same folder): retention 0.10 (here: our retention_ratio), DySeg c = 8, tau = 0.9,
STPrune d = 0.4, DTM p = 4, beta = 0.6; k = 4 is not a setting.

Fitting our framework (decisions):

* Frame global feature: FastVID on LLaVA-OneVision takes SigLIP's attention-pooling head output
  (a SigLIP-only module outside our token pipeline, llava_arch.py L223); its own Qwen2.5-VL port,
  a model without such a head, uses the mean of the frame's tokens (fastvid_qwen25vl/.../
  modeling_qwen2_5_vl.py L1836). We take that mean, in float32, for every model.
* Scores: ATS ranks by the SigLIP head's attention; we use the pipeline's contribution scores.
* Budget: FastVID keeps int(C r) per frame and floors again when splitting (at r = 2%, 14 x 14
  cells: 3 per frame, 96 of M = 125 over 32 frames). Decision: the frames' budgets b_t split M
  exactly (floor or ceil of M / F, extras spread evenly, `apportion`), then FastVID's own split
  b_t - int(b_t d) / int(b_t d) per frame; a segment's context tokens are shared by its anchor
  frames as evenly as possible, the extra ones to the latest anchor frames (FastVID floors
  each share and drops the remainder; its own Qwen2.5-VL port hands the remainder out exactly
  so, modeling_qwen2_5_vl.py L1954-1970). An anchor frame gets at most its filtered-token count;
  the excess becomes extra salient tokens of the segment's frames, earliest first (FastVID's
  code fails there: topk beyond the frame, reached only at r > ~0.45 with d = 0.4, p = 4).
  Result: exactly M tokens.
* `assignment` and `size`: in a segment of more than p frames FastVID merges every filtered
  token into EACH anchor frame's anchors, so a token feeds ceil(L / p) kept tokens. The token
  set records one: the token's row in the anchor frame that closes its own p-frame block (the
  next later anchor frame with anchors if that one has none), and `size` counts those members;
  a merged value can therefore include tokens whose `assignment` names another anchor. With
  no context budget in a segment its filtered tokens are dropped (-1), as in FastVID.
* Determinism: FastVID adds uniform noise * 1e-6 to the densities; we break density ties by
  index (the earlier token counts as denser), cut ties by frame (earlier transition first),
  ties of salient or anchor scores by index, and an equally similar pair of anchors by anchor
  score order (what FastVID's argmax over its topk order does). An anchor always joins itself.
* Numerics: float32 similarities, distances and merges whatever the token dtype (FastVID:
  the model dtype, bf16, where even its member counts round); the density score is ranked in
  the log domain (see compression/holitom.py, whose density-peak helpers this module shares).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compression.config import CompressionConfig
from compression.dpc_knn import peak_order
from compression.holitom import OuterTokens, apportion
from compression.kept_tokens import KeptTokens, VideoTokens
from compression.retention_pool import contribution_order, unit_rows
from compression.token_set import TokenKind

# FastVID's DTM density uses the 4 nearest neighbours, a constant in its code (L977).
DENSITY_NEIGHBOURS = 4


def fastvid(video: VideoTokens, budget: int, config: CompressionConfig) -> KeptTokens:
    """FastVID's outer stage on validated tokens: exactly `budget` kept tokens."""
    frames, height, width = video.grid
    cells = height * width
    segments = dynamic_segments(
        video.tokens.reshape(frames, cells, -1), config.fastvid_segments, config.fastvid_tau
    )
    frame_budget = apportion([cells] * frames, budget)
    salient = [b - int(b * config.fastvid_context_ratio) for b in frame_budget]
    context = [b - s for b, s in zip(frame_budget, salient, strict=True)]
    kept = OuterTokens(video)
    for first, last in segments:
        plan = _plan(first, last, sum(context[first : last + 1]), salient, cells, config)
        _add_segment(kept, video, plan, salient, config.fastvid_beta)
    return kept.result()


def dynamic_segments(x: torch.Tensor, min_segments: int, tau: float) -> list[tuple[int, int]]:
    """DySeg's segments (first frame, last frame) of x [F, C, d], in time order."""
    frames = x.shape[0]
    unit = unit_rows(x.float().mean(dim=1))
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)
    cut = similarity < tau
    cut[torch.sort(similarity, stable=True).indices[: min(min_segments, frames) - 1]] = True
    segments, first = [], 0
    for end in torch.nonzero(cut).flatten().tolist():
        segments.append((first, end))
        first = end + 1
    segments.append((first, frames - 1))
    return segments


@dataclass(frozen=True)
class _Segment:
    """A segment's frames and its anchor frames (latest first) with their anchor-token counts."""

    first: int
    last: int
    interval: int
    anchor_frames: list[int]
    anchors: list[int]

    def recorders(self) -> list[int]:
        """For each anchor frame j, the anchor frame whose tokens record its block's members:
        j itself if it has anchors, else the nearest later one that has, else the nearest
        earlier one."""
        having = [j for j, count in enumerate(self.anchors) if count]
        return [
            max((h for h in having if h <= j), default=min(having))
            for j in range(len(self.anchors))
        ]


def _plan(
    first: int,
    last: int,
    context: int,
    salient: list[int],
    cells: int,
    config: CompressionConfig,
) -> _Segment:
    """Share the segment's `context` tokens over its anchor frames (module docstring); anchors
    beyond a frame's filtered tokens become salient tokens (`salient` is updated in place)."""
    anchor_frames = list(range(last, first - 1, -config.fastvid_anchor_interval))
    share, extra = divmod(context, len(anchor_frames))
    anchors, excess = [], 0
    for j, frame in enumerate(anchor_frames):
        wanted = share + (j < extra)
        anchors.append(min(wanted, cells - salient[frame]))
        excess += wanted - anchors[-1]
    at_frame = dict(zip(anchor_frames, anchors, strict=True))
    for t in range(first, last + 1):
        add = min(excess, cells - salient[t] - at_frame.get(t, 0))
        salient[t] += add
        excess -= add
    return _Segment(first, last, config.fastvid_anchor_interval, anchor_frames, anchors)


def _add_segment(
    kept: OuterTokens, video: VideoTokens, plan: _Segment, salient: list[int], beta: float
) -> None:
    cells = video.grid[1] * video.grid[2]
    device = video.tokens.device
    filtered = []
    for t in range(plan.first, plan.last + 1):
        rows = t * cells + torch.arange(cells, device=device)
        by_score = contribution_order(video.scores[rows])
        top = rows[torch.sort(by_score[: salient[t]]).values]
        if top.numel():
            kept.add(top, video.tokens[top], TokenKind.SELECTED)
        filtered.append(rows[torch.sort(by_score[salient[t] :]).values])
    pool = torch.cat(filtered)
    if pool.numel() == 0 or not any(plan.anchors):
        return  # no context budget: the filtered tokens are dropped
    offsets = [0]
    for rows in filtered:
        offsets.append(offsets[-1] + rows.numel())
    pool_tokens = video.tokens[pool].float()
    unit_pool = unit_rows(pool_tokens)
    # a token's p-frame block ends at anchor frame j = (last - t) // p (frames last, last - p, ...)
    block = (plan.last - pool // cells) // plan.interval
    recorded_under = torch.tensor(plan.recorders(), device=device)[block]
    for j, (frame, count) in enumerate(zip(plan.anchor_frames, plan.anchors, strict=True)):
        if count == 0:
            continue
        local = filtered[frame - plan.first]
        order = peak_order(video.tokens[local].float(), min(DENSITY_NEIGHBOURS, local.numel()))
        order = order[:count]  # in score order, as FastVID's topk gives them
        anchor_rows = local[order]
        labels = (unit_pool @ unit_pool[offsets[frame - plan.first] + order].T).argmax(dim=1)
        labels[offsets[frame - plan.first] + order] = torch.arange(count, device=device)
        members = torch.bincount(labels, minlength=count).unsqueeze(1)
        pooled = torch.zeros(count, video.tokens.shape[1], device=device)
        pooled.index_add_(0, labels, pool_tokens)
        anchor = video.tokens[anchor_rows].float()
        weight = (1.0 / (members + 1)).clamp_min(beta)
        values = weight * anchor + (1.0 - weight) * pooled / members.clamp_min(1)
        mine = recorded_under == j
        kept.add(anchor_rows, values, TokenKind.CLUSTER, members=pool[mine], labels=labels[mine])
