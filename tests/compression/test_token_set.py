"""`TokenSet.scores` (issue 14): validated, carried by `to`, `to_columns` / `from_columns` (also
from columns written before it existed), counted in `nbytes`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compression import CompressionConfig, TokenSet, compress
from compression.token_set import grid_index


def _token_set() -> TokenSet:
    gen = torch.Generator().manual_seed(0)
    grid = (3, 4, 4)
    n = 48
    tokens = torch.randn(n, 8, generator=gen).bfloat16()
    return compress(tokens, torch.rand(n, generator=gen), grid_index(grid), CompressionConfig(0.2))


def test_columns_round_trip_keeps_scores_bit_for_bit():
    token_set = _token_set()
    assert token_set.scores is not None
    back = TokenSet.from_columns(token_set.to_columns())
    for name in ("tokens", "index", "kind", "size", "assignment", "scores"):
        assert torch.equal(getattr(back, name), getattr(token_set, name)), name
    without = dataclasses.replace(token_set, scores=None)
    assert TokenSet.from_columns(without.to_columns()).scores is None


def test_columns_from_before_scores_existed_read_as_none():
    columns = _token_set().to_columns()
    del columns["scores"]
    assert TokenSet.from_columns(columns).scores is None


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (lambda m: torch.zeros(m, dtype=torch.float64), "scores must be"),
        (lambda m: torch.zeros(m + 1), "scores must be"),
        (lambda m: torch.zeros(m, 1), "scores must be"),
        (lambda m: torch.full((m,), float("nan")), "scores contain NaN"),
        (lambda m: torch.full((m,), float("inf")), "scores contain NaN"),
    ],
)
def test_malformed_scores_are_refused(scores, message: str):
    token_set = _token_set()
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(token_set, scores=scores(token_set.kept_count))


def test_scores_travel_and_count():
    token_set = _token_set()
    moved = token_set.to("cpu", torch.float32)
    assert torch.equal(moved.scores, token_set.scores)
    without = dataclasses.replace(token_set, scores=None)
    assert token_set.nbytes - without.nbytes == 4 * token_set.kept_count
    with pytest.raises(ValueError, match="metadata only"):
        token_set.with_metadata(scores=None)
