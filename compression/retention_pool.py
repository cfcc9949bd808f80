"""Global retention pool (METHOD.md section 2, Eq. 2).

All N tokens of a video are visited in ONE descending-contribution order across frames; a
candidate joins the pool only if its max cosine similarity to the pool is below tau.

Exact fast form: a running vector m holds every token's max similarity to the pool. Max
similarity only grows, so a rejected token never becomes admissible again, and each step admits
"the first token in contribution order with m < tau that is not yet admitted", then raises m with
that token's similarity row. That is `capacity` matrix-vector products of O(N d) each: no N x N
matrix, and the "first such token" is found on the device (argmax over the candidate mask taken
in contribution order), so there is no host synchronisation per step.

Decisions the paper leaves open:
* cosine similarity is computed in float32 whatever the token dtype; a zero token has cosine 0
  with everything (its norm is clamped), so it is never "similar" to anything;
* ties in contribution are broken by original index (stable sort), so the order is deterministic;
* the loop checks whether candidates ran out only every `_EXHAUSTION_CHECK_EVERY` steps (one
  host synchronisation each); steps after exhaustion are no-ops and are discarded at the end.
"""

from __future__ import annotations

import torch

# One host synchronisation per this many admissions, to stop early when candidates run out.
_EXHAUSTION_CHECK_EVERY = 64
# Rows normalised per chunk, so that a bf16/fp16 input never has a full float32 copy AND a
# second temporary alive at once.
_NORMALISE_CHUNK_ROWS = 4096


def contribution_order(scores: torch.Tensor) -> torch.Tensor:
    """Token indices by descending contribution; equal scores keep original (ascending) order."""
    return torch.sort(scores, descending=True, stable=True).indices


def unit_rows(tokens: torch.Tensor) -> torch.Tensor:
    """float32 copy of `tokens` [N, d] with rows scaled to unit norm (zero rows stay zero)."""
    out = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    for start in range(0, tokens.shape[0], _NORMALISE_CHUNK_ROWS):
        rows = out[start : start + _NORMALISE_CHUNK_ROWS]
        rows.copy_(tokens[start : start + _NORMALISE_CHUNK_ROWS])
        rows.div_(rows.norm(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny))
    return out


def retention_pool(
    tokens: torch.Tensor, scores: torch.Tensor, capacity: int, tau: float
) -> torch.Tensor:
    """Indices (into `tokens`) of the pool P, in admission order (descending contribution).

    tokens: [N, d] any float dtype; scores: [N] contribution of each token; capacity: M_s, the
    most tokens the pool may hold; tau: similarity threshold. Returns an int64 tensor of at most
    `capacity` indices on the tokens' device; fewer when every token is admitted or rejected
    before the pool is full. Every token not returned belongs to the recycle pool.
    """
    n = tokens.shape[0]
    capacity = min(int(capacity), n)
    device = tokens.device
    if capacity <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    unit = unit_rows(tokens)
    order = contribution_order(scores.to(device))
    max_sim = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    admitted = torch.zeros(n, dtype=torch.bool, device=device)
    picks = torch.empty(capacity, dtype=torch.long, device=device)
    found = torch.empty(capacity, dtype=torch.bool, device=device)
    for step in range(capacity):
        in_order = ((max_sim < tau) & ~admitted)[order]
        # argmax returns the FIRST maximal entry: the first candidate in contribution order.
        # With no candidate left it points at order[0], admitted at step 0, so the updates
        # below are no-ops and `found` marks the step as void. index_select/index_fill_ (not
        # Python indexing with a 0-d tensor) keep everything on the device.
        pick = order.index_select(0, torch.argmax(in_order.to(torch.uint8)).view(1))
        picks[step : step + 1] = pick
        found[step : step + 1] = in_order.any()
        admitted.index_fill_(0, pick, True)
        torch.maximum(max_sim, torch.mv(unit, unit.index_select(0, pick)[0]), out=max_sim)
        if (step + 1) % _EXHAUSTION_CHECK_EVERY == 0 and not bool(found[step]):
            break
    return picks[: step + 1][found[: step + 1]]
