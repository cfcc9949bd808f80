"""The shared decoder loop on tiny random models (CPU, fp32): equivalence with Hugging Face's own
forward, cached decoding against recomputation, the merge at layer K and its cache lengths,
batching with left padding, sampling, EOS, stop strings and streaming."""

from __future__ import annotations

import math

import pytest
import torch
from single_thread import single_torch_thread  # noqa: F401 - fixture

from compression.config import GenerationConfig, MergeConfig
from compression.decoder_loop import (
    GenerationRun,
    LanguageModelParts,
    PromptSequence,
    attention_mask,
    decode_step,
    generate,
    prefill,
)
from compression.tiny_models import build_tiny_llava_onevision, build_tiny_qwen2_5_vl

OFF = MergeConfig(method="none")

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def models() -> dict:
    """The tiny LLaVA-OV with each attention implementation the loop supports."""
    return {impl: build_tiny_llava_onevision(impl)[0] for impl in ("sdpa", "eager")}


@pytest.fixture
def llm(models, request):
    """sdpa unless a test is parametrized with `implementation`."""
    return models[getattr(request, "param", "sdpa")]


@pytest.fixture
def parts(llm):
    return LanguageModelParts(llm.model.language_model, llm.lm_head)


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
    return generate(parts, sequences, merge, config, decode=_ids_text, eos_token_ids=())


def _ids_text(ids: list[int]) -> str:
    return "".join(f" t{i}" for i in ids)


# -- equivalences -----------------------------------------------------------------------------
@BOTH
def test_prefill_without_merge_equals_hf_forward(llm, parts):
    sequences = [make_sequence(llm, 3, 10, 5, seed=0), make_sequence(llm, 2, 6, 9, seed=1)]
    state = prefill(parts, sequences, OFF)  # one batch, left-padded
    for b, seq in enumerate(sequences):
        torch.testing.assert_close(state.logits[b], hf_last_logits(llm, seq), atol=1e-5, rtol=1e-5)


@BOTH
def test_cached_decoding_equals_recompute(llm, parts):
    sequences = [make_sequence(llm, 3, 10, 5, seed=2), make_sequence(llm, 1, 4, 3, seed=3)]
    state = prefill(parts, sequences, OFF)
    generated = [[], []]
    for _ in range(4):
        tokens = state.logits.argmax(dim=-1)
        for b, token in enumerate(tokens.tolist()):
            generated[b].append(token)
        cached = decode_step(parts, state, tokens)
        for b, seq in enumerate(sequences):
            fresh = prefill(parts, [extended(llm, seq, generated[b])], OFF).logits[0]
            torch.testing.assert_close(cached[b], fresh, atol=1e-5, rtol=1e-5)


def test_merge_keeping_everything_changes_nothing(llm, parts):
    sequences = [make_sequence(llm, 3, 10, 5, seed=4), make_sequence(llm, 2, 7, 6, seed=5)]
    keep_all = MergeConfig(layer=2, keep_ratio=1.0)
    merged, plain = prefill(parts, sequences, keep_all), prefill(parts, sequences, OFF)
    torch.testing.assert_close(merged.logits, plain.logits, atol=1e-6, rtol=1e-6)
    for stats_m, stats_p in zip(merged.stats, plain.stats, strict=True):
        assert stats_m.layer_tokens == stats_p.layer_tokens
        assert stats_m.kept_visual.tolist() == list(range(stats_m.visual_in))
    with_merge, without = greedy(parts, sequences, keep_all), greedy(parts, sequences, OFF)
    assert [a.token_ids for a in with_merge] == [a.token_ids for a in without]


@pytest.mark.parametrize("method", ["text_aware", "fastv"])
def test_merge_shortens_layers_from_k_and_the_cache_follows(llm, parts, method):
    seq = make_sequence(llm, 3, 11, 5, seed=6)
    merge = MergeConfig(method=method, layer=2, keep_ratio=0.5)
    state = prefill(parts, [seq], merge)
    kept = math.ceil(0.5 * 11)
    full, short = seq.length, seq.length - 11 + kept
    stats = state.stats[0]
    assert stats.layer_tokens == [full, full, short, short]
    assert stats.layer_visual_tokens == [11, 11, kept, kept]
    assert stats.visual_after_merge == kept == len(stats.kept_visual)
    assert [state.cache.layers[i].keys.shape[2] for i in range(4)] == [full, full, short, short]
    for _ in range(3):
        decode_step(parts, state, state.logits.argmax(dim=-1))
    lengths = [state.cache.layers[i].keys.shape[2] for i in range(4)]
    assert lengths == [full + 3, full + 3, short + 3, short + 3]
    assert int(state.next_positions[0]) == seq.length + 3  # positions continue after the prompt


def test_no_merge_when_k_is_past_the_last_layer(llm, parts):
    seq = make_sequence(llm, 3, 8, 4, seed=7)
    state = prefill(parts, [seq], MergeConfig(layer=4, keep_ratio=0.25))
    assert state.stats[0].layer_tokens == [seq.length] * 4
    assert state.stats[0].kept_visual is None
    torch.testing.assert_close(state.logits, prefill(parts, [seq], OFF).logits)


@pytest.mark.parametrize(
    "merge",
    [
        OFF,
        MergeConfig(layer=2, keep_ratio=0.5),
        MergeConfig(method="fastv", layer=1, keep_ratio=0.3),
    ],
)
@BOTH
def test_batch_equals_one_by_one(llm, parts, merge):
    sequences = [
        make_sequence(llm, 3, 12, 5, seed=8),
        make_sequence(llm, 2, 5, 9, seed=9),
        make_sequence(llm, 4, 9, 2, seed=10),
    ]
    batch = greedy(parts, sequences, merge, steps=8)
    single = [greedy(parts, [s], merge, steps=8)[0] for s in sequences]
    for a, b in zip(batch, single, strict=True):
        assert a.token_ids == b.token_ids
        assert a.layer_tokens == b.layer_tokens
        assert (a.kept_visual is None) == (b.kept_visual is None)
        if a.kept_visual is not None:
            assert a.kept_visual.tolist() == b.kept_visual.tolist()


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, parts):
    sequences = [make_sequence(llm, 3, 8, 5, seed=11), make_sequence(llm, 1, 5, 7, seed=12)]
    merge = MergeConfig(layer=2)
    sample = {"temperature": 1.3, "top_p": 0.9, "top_k": 20, "seed": 7}
    batch = greedy(parts, sequences, merge, steps=10, **sample)
    again = greedy(parts, sequences, merge, steps=10, **sample)
    single = [greedy(parts, [s], merge, steps=10, **sample)[0] for s in sequences]
    assert [a.token_ids for a in batch] == [a.token_ids for a in again]
    assert [a.token_ids for a in batch] == [a.token_ids for a in single]
    # top_k = 1 leaves one candidate: sampling must then be greedy.
    top1 = greedy(parts, sequences, merge, steps=10, temperature=1.0, top_k=1, seed=3)
    assert [a.token_ids for a in top1] == [a.token_ids for a in greedy(parts, sequences, merge, 10)]


# -- stopping and streaming -------------------------------------------------------------------
def test_eos_stop_strings_and_streaming(llm, parts):
    seq = make_sequence(llm, 3, 8, 5, seed=13)
    reference = greedy(parts, [seq], OFF, steps=8)[0]
    assert reference.finish_reason == "length" and len(reference.token_ids) == 8
    ids = reference.token_ids
    cut = next(i for i in range(1, 8) if ids[i] not in ids[:i])  # first new token after the start

    ended = generate(
        parts,
        [seq],
        OFF,
        GenerationConfig(max_new_tokens=8),
        decode=_ids_text,
        eos_token_ids={ids[cut]},
    )[0]
    assert ended.token_ids == ids[:cut] and ended.finish_reason == "stop"

    stop = f" t{ids[cut]}"
    run = GenerationRun(
        parts,
        [seq],
        OFF,
        GenerationConfig(max_new_tokens=8, stop=(stop,)),
        decode=_ids_text,
        eos_token_ids=(),
    )
    pieces = [p[0] for p in run]
    answer = run.answers[0]
    assert answer.finish_reason == "stop"
    assert answer.text == _ids_text(ids[:cut])
    assert "".join(pieces) == answer.text
    assert stop not in "".join(pieces)


def test_streamed_pieces_concatenate_to_the_text(llm, parts):
    seq = make_sequence(llm, 2, 6, 4, seed=14)
    run = GenerationRun(
        parts, [seq], OFF, GenerationConfig(max_new_tokens=6), decode=_ids_text, eos_token_ids=()
    )
    pieces = [p[0] for p in run]
    assert len(pieces) == 6
    assert "".join(pieces) == run.answers[0].text == _ids_text(run.answers[0].token_ids)


# -- masks and 3D positions -------------------------------------------------------------------
def test_attention_mask_rows():
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    assert attention_mask(valid[1:], 4, "sdpa", torch.float32) is None
    mask = attention_mask(valid, 4, "sdpa", torch.float32)[:, 0]
    assert mask.any(dim=-1).all()  # no fully masked row: no NaN can reach real tokens
    assert mask[0, 0].tolist() == [True, False, False, False]  # a pad query sees itself only
    assert mask[0, 3].tolist() == [False, False, True, True]
    assert mask[1].tolist() == torch.ones(4, 4, dtype=torch.bool).tril().tolist()
    additive = attention_mask(valid, 1, "eager", torch.float32)[:, 0]
    assert additive[0, 0].tolist()[2:] == [0.0, 0.0] and additive[0, 0, 0] < -1e30


def test_three_d_positions_equal_hf_and_merge():
    model, _ = build_tiny_qwen2_5_vl()
    lm = model.model.language_model
    parts = LanguageModelParts(lm, model.lm_head)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(14, lm.config.hidden_size, generator=generator) * 0.5
    visual = torch.tensor([[3, 3, 3, 3, 4, 4, 4, 4], [3, 3, 4, 4, 3, 3, 4, 4], [3, 4] * 4])
    positions = torch.cat(
        [torch.arange(3).expand(3, -1), visual, (torch.arange(3) + 5).expand(3, -1)], dim=1
    )
    seq = PromptSequence(embeds, positions, slice(3, 11), 11, torch.ones(8, dtype=torch.int32))
    with torch.no_grad():
        hidden = lm(
            inputs_embeds=embeds[None],
            position_ids=positions[:, None],
            attention_mask=torch.ones(1, 14, dtype=torch.long),
        ).last_hidden_state
        expected = model.lm_head(hidden[0, -1])
    state = prefill(parts, [seq], OFF)
    torch.testing.assert_close(state.logits[0], expected, atol=1e-5, rtol=1e-5)
    assert int(state.next_positions[0]) == 8
    merged = prefill(parts, [seq, seq], MergeConfig(layer=2, keep_ratio=0.5))
    assert merged.stats[0].layer_tokens == [14, 14, 10, 10]
    torch.testing.assert_close(merged.logits[0], merged.logits[1])
