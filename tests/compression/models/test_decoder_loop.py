"""The shared decoder loop on tiny random models (CPU, fp32): equivalence with Hugging Face's own
forward, cached decoding against recomputation, the merge at layer K (the layer's recomputed
attention, the plan) and its cache lengths, batching with left padding, masks, 3D positions."""

from __future__ import annotations

import math

import pytest
import torch
from loop_inputs import BOTH, OFF, extended, greedy, hf_last_logits, make_sequence

from compression.config import MergeConfig
from compression.models.decoder_loop import (
    LanguageModelParts,
    PromptSequence,
    attention_mask,
    decode_step,
    plan_layer_merge,
    prefill,
    project_queries_keys,
)
from compression.models.tiny import build_tiny_llava_onevision, build_tiny_qwen2_5_vl
from compression.text_merge import causal_attention_probs

pytestmark = pytest.mark.usefixtures("single_torch_thread")


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


# -- against the decoder layer itself ---------------------------------------------------------
@pytest.fixture(scope="module")
def eager_llm():
    model, _ = build_tiny_llava_onevision(attn_implementation="eager")
    return model.model.language_model


def test_recomputed_attention_equals_layer_attention_weights(eager_llm):
    torch.manual_seed(0)
    embeds = torch.randn(1, 11, eager_llm.config.hidden_size)
    with torch.no_grad():
        out = eager_llm(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        layer_k = 2
        hidden = out.hidden_states[layer_k][0]
        cos, sin = eager_llm.rotary_emb(hidden[None], torch.arange(11)[None])
        rows = torch.arange(6, 11)
        q, k = project_queries_keys(eager_llm.layers[layer_k], hidden, cos[0], sin[0], rows)
        probs = causal_attention_probs(q, k, rows, eager_llm.layers[layer_k].self_attn.scaling)
    torch.testing.assert_close(probs, out.attentions[layer_k][0, :, 6:11], atol=1e-6, rtol=1e-5)


def test_plan_merge_keep_all_changes_nothing_and_counts(eager_llm):
    torch.manual_seed(1)
    hidden = torch.randn(12, eager_llm.config.hidden_size)
    cos, sin = eager_llm.rotary_emb(hidden[None], torch.arange(12)[None])
    layer = eager_llm.layers[2]
    sizes = torch.tensor([1, 2, 1, 1, 3, 1, 1], dtype=torch.int32)
    visual = slice(2, 9)
    with torch.no_grad():
        plan = plan_layer_merge(
            layer, hidden, cos[0], sin[0], visual, 9, sizes, MergeConfig(keep_ratio=1.0)
        )
        assert plan.kept.tolist() == list(range(7))
        torch.testing.assert_close(plan.tokens, hidden[visual], rtol=0, atol=0)
        for method in ("text_aware", "fastv"):
            config = MergeConfig(method=method, keep_ratio=0.4)
            plan = plan_layer_merge(layer, hidden, cos[0], sin[0], visual, 9, sizes, config)
            assert len(plan.kept) == math.ceil(0.4 * 7)
            assert plan.kept.tolist() == sorted(plan.kept.tolist())
            total = int(plan.sizes.sum())
            assert total == (
                int(sizes.sum()) if method == "text_aware" else int(sizes[plan.kept].sum())
            )
    with pytest.raises(ValueError):
        plan_layer_merge(layer, hidden, cos[0], sin[0], visual, 8, sizes, MergeConfig())
