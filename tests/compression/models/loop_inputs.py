"""Inputs shared by the decoder-loop and generation tests: random prompts around visual tokens,
and greedy answers through the generation layer (fixtures `llm`, `parts`: conftest.py)."""

from __future__ import annotations

import pytest
import torch

from compression.config import MergeConfig
from compression.models.decoder_loop import PromptSequence
from compression.models.generation import GenerationRun
from compression.models.interface import GenerationConfig

OFF = MergeConfig(method="none")


BOTH = pytest.mark.parametrize("llm", ["sdpa", "eager"], indirect=True)


def make_sequence(llm, prefix: int, visual: int, text: int, seed: int) -> PromptSequence:
    """Text embeddings around `visual` random visual tokens, consecutive positions."""
    generator = torch.Generator().manual_seed(seed)
    vocab = llm.config.text_config.vocab_size
    ids = torch.randint(5, 100, (prefix + text,), generator=generator) % vocab
    with torch.no_grad():
        words = llm.model.language_model.embed_tokens(ids)
        tokens = torch.randn(visual, words.shape[1], generator=generator) * words.std()
    embeds = torch.cat([words[:prefix], tokens, words[prefix:]])
    return PromptSequence(
        embeds=embeds,
        positions=torch.arange(len(embeds)),
        visual=slice(prefix, prefix + visual),
        text_start=prefix + visual,
        visual_sizes=torch.randint(1, 4, (visual,), generator=generator, dtype=torch.int32),
    )


def hf_last_logits(llm, seq: PromptSequence) -> torch.Tensor:
    with torch.no_grad():
        hidden = llm.model.language_model(
            inputs_embeds=seq.embeds[None], position_ids=seq.positions[None]
        ).last_hidden_state
        return llm.lm_head(hidden[0, -1]).float()


def extended(llm, seq: PromptSequence, tokens: list[int]) -> PromptSequence:
    """The same prompt with generated tokens appended as plain text (no cache)."""
    with torch.no_grad():
        words = llm.model.language_model.embed_tokens(torch.tensor(tokens, dtype=torch.long))
    embeds = torch.cat([seq.embeds, words])
    return PromptSequence(
        embeds, torch.arange(len(embeds)), seq.visual, seq.text_start, seq.visual_sizes
    )


def greedy(parts, sequences, merge, steps=6, **kwargs):
    config = GenerationConfig(max_new_tokens=steps, **kwargs)
    return GenerationRun(parts, sequences, merge, config, decode=ids_text, eos_token_ids=()).run()


def ids_text(ids: list[int]) -> str:
    return "".join(f" t{i}" for i in ids)
