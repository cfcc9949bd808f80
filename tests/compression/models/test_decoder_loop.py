"""The shared decoder loop on tiny random models (CPU, fp32): equivalence with Hugging Face's own
forward, cached decoding against recomputation, the merge steps (the layer's recomputed
attention, the plan; FastV and HoliTom against their published loops; a schedule against its
steps applied in turn) and their cache lengths, each layer run once, batching with left
padding, masks, 3D positions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from loop_inputs import BOTH, OFF, extended, greedy, hf_last_logits, make_sequence

from compression.config import MergeConfig, kept_share
from compression.flops import layer_token_counts
from compression.models import decoder_loop
from compression.models.decoder_loop import (
    LanguageModelParts,
    PromptSequence,
    attention_mask,
    decode_step,
    prefill,
    project_queries_keys,
    score_visual_tokens,
)
from compression.models.tiny import build_tiny_llava_onevision, build_tiny_qwen2_5_vl
from compression.text_merge import causal_attention_probs, plan_merge, scoring_layer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# The tiny LLaVA-OV's language model has 4 layers.
TWO_STEPS = MergeConfig.from_schedule([(1, 0.6), (3, 0.5)])
MERGES = [
    MergeConfig(layer=2, keep_ratio=0.5),
    MergeConfig(method="fastv", layer=1, keep_ratio=0.3),
    MergeConfig(method="holitom", layer=2, keep_ratio=0.4),
    TWO_STEPS,
    MergeConfig.from_schedule([(1, 0.5), (2, 0.5)], method="fastv"),
    MergeConfig.from_schedule([(2, 0.7), (3, 0.5)], method="holitom"),
]
MERGE_IDS = ["text_aware", "fastv", "holitom", "schedule", "fastv-schedule", "holitom-schedule"]


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


@pytest.mark.parametrize(
    "keep_all",
    [
        MergeConfig(layer=2, keep_ratio=1.0),
        MergeConfig(method="fastv", layer=1, keep_ratio=1.0),
        MergeConfig(method="holitom", layer=2, keep_ratio=1.0),
        MergeConfig.from_schedule([(1, 1.0), (3, 1.0)]),
    ],
    ids=["text_aware", "fastv", "holitom", "schedule"],
)
def test_merge_keeping_everything_changes_nothing(llm, parts, keep_all):
    sequences = [make_sequence(llm, 3, 10, 5, seed=4), make_sequence(llm, 2, 7, 6, seed=5)]
    merged, plain = prefill(parts, sequences, keep_all), prefill(parts, sequences, OFF)
    torch.testing.assert_close(merged.logits, plain.logits, atol=1e-6, rtol=1e-6)
    for stats_m, stats_p in zip(merged.stats, plain.stats, strict=True):
        assert stats_m.layer_tokens == stats_p.layer_tokens
        assert stats_m.kept_visual.tolist() == list(range(stats_m.visual_in))
    with_merge, without = greedy(parts, sequences, keep_all), greedy(parts, sequences, OFF)
    assert [a.token_ids for a in with_merge] == [a.token_ids for a in without]


@pytest.mark.parametrize("method", ["text_aware", "fastv", "holitom"])
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


def test_a_schedule_makes_one_cache_group_per_step(llm, parts):
    seq = make_sequence(llm, 3, 11, 5, seed=6)
    state = prefill(parts, [seq], TWO_STEPS)
    first = math.ceil(0.6 * 11)
    second = math.ceil(0.5 * first)
    full = seq.length
    lengths = [full, full - 11 + first, full - 11 + first, full - 11 + second]
    stats = state.stats[0]
    assert stats.layer_tokens == lengths
    assert stats.layer_visual_tokens == [11, first, first, second]
    assert TWO_STEPS.kept_counts(11) == [first, second]
    assert stats.visual_after_merge == second == len(stats.kept_visual)
    assert [state.cache.layers[i].keys.shape[2] for i in range(4)] == lengths
    assert state.layer_groups == [0, 1, 1, 2] and len(state.valid) == 3
    for _ in range(3):
        decode_step(parts, state, state.logits.argmax(dim=-1))
    assert [state.cache.layers[i].keys.shape[2] for i in range(4)] == [n + 3 for n in lengths]
    assert int(state.next_positions[0]) == seq.length + 3


@pytest.mark.parametrize("merge", [OFF, *MERGES], ids=["off", *MERGE_IDS])
def test_layer_counts_are_the_ones_the_flops_formula_assumes(llm, parts, merge):
    """The n_i an answer reports (and the service's and evaluator's FLOPs are computed from)
    are `compression.flops.layer_token_counts` of the same merge."""
    seq = make_sequence(llm, 3, 13, 5, seed=14)
    stats = prefill(parts, [seq], merge).stats[0]
    text = seq.length - seq.visual_count
    assert stats.layer_tokens == layer_token_counts(4, 13, text, merge)
    assert stats.layer_visual_tokens == layer_token_counts(4, 13, 0, merge)


@pytest.mark.parametrize("method", ["text_aware", "fastv", "holitom"])
def test_no_merge_when_k_is_past_the_last_layer(llm, parts, method):
    seq = make_sequence(llm, 3, 8, 4, seed=7)
    state = prefill(parts, [seq], MergeConfig(method=method, layer=4, keep_ratio=0.25))
    assert state.stats[0].layer_tokens == [seq.length] * 4
    assert state.stats[0].kept_visual is None
    torch.testing.assert_close(state.logits, prefill(parts, [seq], OFF).logits)
    # a schedule's steps past the last layer do not happen either
    one_step = MergeConfig(method=method, layer=2, keep_ratio=0.5)
    late = MergeConfig.from_schedule([(2, 0.5), (4, 0.25), (9, 0.5)], method=method)
    a, b = prefill(parts, [seq], late), prefill(parts, [seq], one_step)
    assert a.stats[0].layer_tokens == b.stats[0].layer_tokens
    assert a.stats[0].kept_visual.tolist() == b.stats[0].kept_visual.tolist()
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)


@pytest.mark.parametrize("merge", [OFF, *MERGES], ids=["off", *MERGE_IDS])
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


@pytest.mark.parametrize("merge", MERGES, ids=MERGE_IDS)
def test_cached_decoding_with_a_merge_equals_recompute(llm, parts, merge, monkeypatch):
    """Decoding after a merged prefill equals recomputing prompt + generated tokens without a
    cache, once the recompute takes the merge decisions the prefill took: on the prompt's rows
    (the generated tokens come after the decision). The recompute scores each step on its rows
    minus the generated ones at the end; everything else is the plain loop."""
    sequences = [make_sequence(llm, 3, 10, 5, seed=2), make_sequence(llm, 1, 6, 3, seed=3)]
    state = prefill(parts, sequences, merge)
    original = decoder_loop.score_visual_tokens
    generated = [[], []]
    for step in range(1, 4):
        tokens = state.logits.argmax(dim=-1)
        for b, token in enumerate(tokens.tolist()):
            generated[b].append(token)
        cached = decode_step(parts, state, tokens)

        def on_prompt_rows(layer, hidden, cos, sin, visual, text_start, config, _g=step):
            n = hidden.shape[0] - _g
            return original(layer, hidden[:n], cos[:n], sin[:n], visual, text_start, config)

        with monkeypatch.context() as patch:
            patch.setattr(decoder_loop, "score_visual_tokens", on_prompt_rows)
            for b, seq in enumerate(sequences):
                fresh = prefill(parts, [extended(llm, seq, generated[b])], merge)
                assert torch.equal(fresh.stats[0].kept_visual, state.stats[b].kept_visual)
                torch.testing.assert_close(cached[b], fresh.logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", [OFF, *MERGES], ids=["off", *MERGE_IDS])
def test_each_layer_runs_once_per_token(llm, parts, merge):
    """FastV's public lmms-eval code runs layer K - 1 twice (once for its attention map), which
    writes that layer's KV cache twice. Here every layer runs once per prefill and once per
    decoding step, and each cache holds exactly the rows its layer saw."""
    calls = [0] * parts.num_layers

    def count(i: int):
        return lambda *_: calls.__setitem__(i, calls[i] + 1)

    hooks = [layer.register_forward_pre_hook(count(i)) for i, layer in enumerate(parts.layers)]
    try:
        seq = make_sequence(llm, 2, 9, 4, seed=11)
        state = prefill(parts, [seq], merge)
        assert calls == [1] * parts.num_layers
        cached = [state.cache.layers[i].keys.shape[2] for i in range(parts.num_layers)]
        assert cached == state.stats[0].layer_tokens
        decode_step(parts, state, state.logits.argmax(dim=-1))
        assert calls == [2] * parts.num_layers
    finally:
        for hook in hooks:
            hook.remove()


def _layer_inputs(parts, seq):
    """The input of every layer in a plain (unmerged) prefill of one sequence ([L, d] each),
    and that prefill's state."""
    inputs = [None] * parts.num_layers

    def capture(i: int):
        return lambda _module, args: inputs.__setitem__(i, args[0][0])

    hooks = [layer.register_forward_pre_hook(capture(i)) for i, layer in enumerate(parts.layers)]
    try:
        off = prefill(parts, [seq], OFF)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, off


@pytest.mark.parametrize("method", ["text_aware", "fastv", "holitom"])
def test_a_schedule_equals_its_steps_applied_in_turn(llm, parts, method):
    """What "applying the steps in turn" means, for a schedule [(K1, R1), (K2, R2)]:

    1. layers 0..K1-1 run on the prompt (a plain prefill; its layer inputs are captured);
    2. step 1 is applied by hand with the public functions: scores at the input of layer
       `scoring_layer(K1)`, then `plan_merge` of the visual rows at the input of layer K1,
       keeping ceil(R1 |V|) tokens;
    3. the merged sequence (the hidden states at the input of layer K1 as its embeddings, the
       kept rows' original positions, the merged sizes) is a FRESH PROMPT for the model made of
       layers K1..L-1 alone, with the one-step merge (K2 - K1, R2).

    The schedule's prefill must give the same logits, the same kept tokens (step 2's choice
    composed with step 1's), the same tokens per layer and the same KV caches (layers < K1: the
    plain prefill's; layers >= K1: the fresh prompt's)."""
    lm = parts.language_model
    k1, r1, k2, r2 = 1, 0.6, 3, 0.5
    schedule = MergeConfig.from_schedule([(k1, r1), (k2, r2)], method=method, lam=0.3)
    seq = make_sequence(llm, 3, 11, 5, seed=12)
    inputs, off = _layer_inputs(parts, seq)

    s = scoring_layer(schedule, k1)
    with torch.no_grad():
        cos, sin = lm.rotary_emb(inputs[s][None], seq.positions[None])
        scores = score_visual_tokens(
            parts.layers[s], inputs[s], cos[0], sin[0], seq.visual, seq.text_start, schedule
        )
    keep = kept_share(r1, seq.visual_count)
    plan = plan_merge(scores, inputs[k1][seq.visual], seq.visual_sizes, keep, schedule)
    start, stop = seq.visual.start, seq.visual.stop
    rows = torch.cat([torch.arange(start), start + plan.kept, torch.arange(stop, seq.length)])
    embeds = inputs[k1][rows].clone()
    embeds[start : start + keep] = plan.tokens
    fresh = PromptSequence(
        embeds,
        seq.positions[rows],
        slice(start, start + keep),
        seq.text_start - (seq.visual_count - keep),
        plan.sizes,
    )
    upper_lm = SimpleNamespace(
        config=lm.config,
        layers=lm.layers[k1:],
        norm=lm.norm,
        rotary_emb=lm.rotary_emb,
        embed_tokens=lm.embed_tokens,
    )
    second = prefill(
        LanguageModelParts(upper_lm, parts.lm_head), [fresh], MergeConfig(method, k2 - k1, r2, 0.3)
    )
    whole = prefill(parts, [seq], schedule)

    torch.testing.assert_close(whole.logits, second.logits, atol=1e-5, rtol=1e-5)
    assert whole.stats[0].kept_visual.tolist() == plan.kept[second.stats[0].kept_visual].tolist()
    assert whole.stats[0].layer_tokens == [seq.length] * k1 + second.stats[0].layer_tokens
    for i in range(parts.num_layers):
        reference = off.cache.layers[i] if i < k1 else second.cache.layers[i]
        for name in ("keys", "values"):
            got, want = getattr(whole.cache.layers[i], name), getattr(reference, name)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- against the published FastV and HoliTom loops --------------------------------------------
def _published_step(llm, seq: PromptSequence, k: int, keep: int, holitom: bool):
    """FastV's / HoliTom's in-LLM step as their code runs it (FastV `fastv_forward`, HoliTom
    `Qwen2Model_holitom.forward`), on Hugging Face's eager attention maps: the last token's
    attention inside layer K - 1, mean over heads, top `keep` visual tokens; HoliTom then
    averages each dropped token, in order, into its most similar kept token (targets chosen
    first); layers K.. run on the kept rows at their original positions. Returns the logits
    and the kept visual rows."""
    lm = llm.model.language_model
    with torch.no_grad():
        out = lm(
            inputs_embeds=seq.embeds[None],
            position_ids=seq.positions[None],
            output_attentions=True,
            output_hidden_states=True,
        )
        start, stop = seq.visual.start, seq.visual.stop
        ranking = out.attentions[k - 1][0].mean(dim=0)[-1, start:stop]
        top = ranking.topk(keep).indices
        hidden = out.hidden_states[k][0].clone()  # the input of layer K
        if holitom:
            dropped = [i for i in range(stop - start) if i not in top.tolist()]
            top_states = hidden[start + top]
            similar = [
                torch.nn.functional.cosine_similarity(hidden[start + i][None], top_states)
                for i in dropped
            ]
            for i, sims in zip(dropped, similar, strict=True):
                j = start + int(top[int(sims.argmax())])
                hidden[j] = (hidden[j] + hidden[start + i]) / 2
        kept = top.sort().values
        rows = torch.cat([torch.arange(start), start + kept, torch.arange(stop, seq.length)])
        h = hidden[rows][None]
        position_embeddings = lm.rotary_emb(h, seq.positions[rows][None])
        causal = torch.full((len(rows),) * 2, torch.finfo(h.dtype).min).triu(1)[None, None]
        for layer in lm.layers[k:]:
            h = layer(h, attention_mask=causal, position_embeddings=position_embeddings)
        logits = llm.lm_head(lm.norm(h[0, -1])).float()
    return logits, kept


@pytest.mark.parametrize("llm", ["eager"], indirect=True)
@pytest.mark.parametrize("method", ["fastv", "holitom"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_fastv_and_holitom_match_their_published_loops(llm, parts, method, k):
    seq = make_sequence(llm, 3, 12, 5, seed=13)
    merge = MergeConfig(method=method, layer=k, keep_ratio=0.4)
    expected, kept = _published_step(llm, seq, k, merge.kept_count(12), method == "holitom")
    state = prefill(parts, [seq], merge)
    assert state.stats[0].kept_visual.tolist() == kept.tolist()
    torch.testing.assert_close(state.logits[0], expected, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("merge", MERGES[:4], ids=MERGE_IDS[:4])
def test_three_d_positions_equal_hf_and_merge(merge):
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
    merged = prefill(parts, [seq, seq], merge)
    visual = [8] * 4
    for layer, kept in zip(merge.schedule, merge.kept_counts(8), strict=True):
        visual[layer[0] :] = [kept] * (4 - layer[0])
    assert merged.stats[0].layer_tokens == [6 + n for n in visual]
    assert merged.stats[0].layer_visual_tokens == visual
    torch.testing.assert_close(merged.logits[0], merged.logits[1])
    kept = merged.stats[0].kept_visual
    assert kept is not None and torch.equal(kept, merged.stats[1].kept_visual)
    # each kept token kept its own (t, h, w) position: the decoding position follows the prompt
    assert int(merged.next_positions[0]) == 8


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
        for method in ("text_aware", "fastv", "holitom"):
            config = MergeConfig(method=method)
            scores = score_visual_tokens(layer, hidden, cos[0], sin[0], visual, 9, config)
            plan = plan_merge(scores, hidden[visual], sizes, 7, config)
            assert plan.kept.tolist() == list(range(7))
            torch.testing.assert_close(plan.tokens, hidden[visual], rtol=0, atol=0)
            plan = plan_merge(scores, hidden[visual], sizes, math.ceil(0.4 * 7), config)
            assert len(plan.kept) == 3
            assert plan.kept.tolist() == sorted(plan.kept.tolist())
            total = int(plan.sizes.sum())
            assert total == (int(sizes[plan.kept].sum()) if method == "fastv" else int(sizes.sum()))
    with pytest.raises(ValueError):
        score_visual_tokens(layer, hidden, cos[0], sin[0], visual, 8, MergeConfig())
