"""Global retention pool (METHOD.md section 2, Eq. 2).

All N tokens of a video are visited in ONE descending-contribution order across frames; a
candidate joins the pool only if its max cosine similarity to the pool is below tau.

Exact fast form: a running vector m holds every token's max similarity to the pool. Max
similarity only grows, so a rejected token never becomes admissible again, and each step admits
"the first token in contribution order with m < tau that is not yet admitted", then raises m with
that token's similarity row. The "first such token" is found on the device (argmax over the
candidate mask, which returns the first maximum), so there is no host synchronisation per step.

Only a prefix of the contribution order is ever visited (the pool fills after M_s admissions), so
the order is processed in blocks of B tokens: the block's B x B cosine matrix (one small matmul)
supplies the similarity rows, and m starts from the block's similarity to the pool so far. A block
whose candidates run out leaves every one of its tokens decided (admitted, or rejected for good),
and the next block continues. This is the same greedy, token for token, as running m over all N
tokens, but costs O(visited * (B + M_s) * d) in matmuls instead of M_s matrix-vector products
over all N tokens, and never holds more than a B x B matrix (B = clamp(4 M_s, 512, 4096)).

Decisions the paper leaves open:
* cosine similarity is computed in float32 whatever the token dtype; a zero token has cosine 0
  with everything (its norm is clamped), so it is never "similar" to anything;
* ties in contribution are broken by original index (stable sort), so the order is deterministic;
* host synchronisations: one per block, plus one per `_EXHAUSTION_CHECK_EVERY` steps inside a
  block to stop early when its candidates run out (steps after that are no-ops and discarded).
"""

from __future__ import annotations

import torch

# One host synchronisation per this many admissions, to stop early when candidates run out.
_EXHAUSTION_CHECK_EVERY = 64
_MIN_BLOCK, _MAX_BLOCK = 512, 4096
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
    tokens: torch.Tensor,
    scores: torch.Tensor,
    capacity: int,
    tau: float,
    *,
    block_size: int | None = None,
) -> torch.Tensor:
    """Indices (into `tokens`) of the pool P, in admission order (descending contribution).

    tokens: [N, d] any float dtype; scores: [N] contribution of each token; capacity: M_s, the
    most tokens the pool may hold; tau: similarity threshold; block_size: B (default
    clamp(4 * capacity, 512, 4096); any B gives the same pool). Returns an int64 tensor of at
    most `capacity` indices on the tokens' device; fewer when every token is admitted or rejected
    before the pool is full. Every token not returned belongs to the recycle pool.
    """
    n = tokens.shape[0]
    capacity = min(int(capacity), n)
    if capacity <= 0:
        return torch.empty(0, dtype=torch.long, device=tokens.device)
    block = block_size or min(max(4 * capacity, _MIN_BLOCK), _MAX_BLOCK)
    order = contribution_order(scores.to(tokens.device))
    pool_rows: list[torch.Tensor] = []
    pool_unit = torch.empty(0, tokens.shape[1], dtype=torch.float32, device=tokens.device)
    for start in range(0, n, block):
        rows = order[start : start + block]
        unit = unit_rows(tokens.index_select(0, rows))
        max_sim = (unit @ pool_unit.T).amax(dim=1) if pool_rows else None
        admitted = _greedy_in_order(unit @ unit.T, max_sim, tau, capacity - pool_unit.shape[0])
        pool_rows.append(rows[admitted])
        pool_unit = torch.cat([pool_unit, unit[admitted]])
        if pool_unit.shape[0] == capacity:
            break
    return torch.cat(pool_rows)


def _greedy_in_order(
    similarity: torch.Tensor, max_sim: torch.Tensor | None, tau: float, steps: int
) -> torch.Tensor:
    """Positions admitted from a block in contribution order, in admission order.

    similarity: [B, B] cosines within the block; max_sim: [B] each token's max cosine to the
    pool so far (None: empty pool); at most `steps` admissions.
    """
    b = similarity.shape[0]
    device = similarity.device
    steps = min(steps, b)
    if max_sim is None:
        max_sim = torch.full((b,), float("-inf"), dtype=torch.float32, device=device)
    admitted = torch.zeros(b, dtype=torch.bool, device=device)
    picks = torch.empty(steps, dtype=torch.long, device=device)
    found = torch.empty(steps, dtype=torch.bool, device=device)
    for step in range(steps):
        candidate = (max_sim < tau) & ~admitted
        # argmax returns the FIRST maximal entry: the first candidate in contribution order.
        # With no candidate left it returns position 0, already admitted or rejected, so the
        # updates below change nothing and `found` marks the step as void. index_select /
        # index_fill_ (not Python indexing with a 0-d tensor) keep everything on the device.
        pick = torch.argmax(candidate.to(torch.uint8)).view(1)
        picks[step : step + 1] = pick
        found[step : step + 1] = candidate.any()
        admitted.index_fill_(0, pick, True)
        torch.maximum(max_sim, similarity.index_select(0, pick)[0], out=max_sim)
        if (step + 1) % _EXHAUSTION_CHECK_EVERY == 0 and not bool(found[step]):
            break
    return picks[: step + 1][found[: step + 1]]
