"""Random token sets for the storage tests (built directly: no compression algorithm involved),
and catalogs brought to a given schema revision."""

from __future__ import annotations

import math

import torch

from compression.config import CompressionConfig
from compression.token_set import TokenSet
from storage.catalog import MIGRATIONS_DIR, create_engine


def make_token_set(
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    kept: int = 12,
    hidden: int = 16,
    grid: tuple[int, int, int] = (4, 3, 3),
    with_assignment: bool = True,
    with_scores: bool = True,
    model_id: str = "test-model",
    config: CompressionConfig | None = None,
    uri: str | None = None,
) -> TokenSet:
    """A valid TokenSet with random tokens; bf16/fp16 tokens include NaN, inf and -0.0 so a
    round trip that converts floats anywhere would not be bit-exact (scores, finite by rule,
    include -0.0 and a subnormal). The scores are drawn last: without them the token set is the
    one this function made before scores existed (the version-1 file in data/ was written so)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(grid)
    flat = torch.randperm(n, generator=g)[:kept].sort().values
    index = torch.stack(
        [flat // (grid[1] * grid[2]), (flat // grid[2]) % grid[1], flat % grid[2]], dim=1
    ).to(torch.int32)
    tokens = torch.randn(kept, hidden, generator=g).to(dtype)
    tokens[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0], dtype=dtype)
    assignment = None
    if with_assignment:
        assignment = torch.randint(-1, kept, (n,), generator=g, dtype=torch.int32)
    uri = uri or f"s3://videos/clip-{seed}.mp4"
    kind = torch.randint(0, 2, (kept,), generator=g, dtype=torch.int8)
    size = torch.randint(1, 5, (kept,), generator=g, dtype=torch.int32)
    scores = None
    if with_scores:
        scores = torch.rand(kept, generator=g)
        scores[: min(kept, 2)] = torch.tensor([-0.0, 1e-40])[: min(kept, 2)]
    return TokenSet(
        tokens=tokens,
        index=index,
        kind=kind,
        size=size,
        grid=grid,
        config=config or CompressionConfig(),
        assignment=assignment,
        scores=scores,
        model_id=model_id,
        source_uri=uri,
        content_hash=f"sha256:{seed:064x}",
        frame_timestamps=tuple(0.5 * t + 0.1 for t in range(grid[0])),
        extras={"seconds_per_grid_step": 1.0, "note": "x", "n": 3},
    )


def assert_same_token_set(a: TokenSet, b: TokenSet) -> None:
    """Bit-exact equality of every tensor and every metadata field."""
    assert a.tokens.dtype == b.tokens.dtype and a.tokens.shape == b.tokens.shape
    as_bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    bits = as_bits[a.tokens.dtype]
    assert torch.equal(a.tokens.view(bits), b.tokens.view(bits))
    for name in ("index", "kind", "size"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    for name in ("assignment", "scores"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x.view(torch.int32), y.view(torch.int32))
    for name in (
        "grid",
        "config",
        "model_id",
        "source_uri",
        "content_hash",
        "frame_timestamps",
        "extras",
    ):
        assert getattr(a, name) == getattr(b, name), name


def migrate_catalog(catalog_url: str, revision: str, *, down: bool = False) -> None:
    """Bring the catalog at `catalog_url` to `revision` with Alembic, as the shell command does."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(catalog_url)
    with engine.connect() as conn:
        conn = conn.execution_options(tokenreel_write=True)
        with conn.begin():
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, revision)
    engine.dispose()
