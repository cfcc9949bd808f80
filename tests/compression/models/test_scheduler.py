"""Continuous batching and per-video prefix reuse on both tiny families (CPU, fp32): greedy
answers under any interleaving of joins and leaves equal the answer alone; a reused prefix gives
the full prefill's logits; the padded cache's masks after joins and leaves; failures stay with
their question; the prefix cache's LRU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression import CompressionConfig, MergeConfig, compress_video
from compression.models import (
    TINY_LLAVA_OV,
    TINY_QWEN2_5_VL,
    GenerationConfig,
    JoinRequest,
    Question,
    load_video_llm,
)
from compression.models.decoder_loop import decode_step, prefill, resume_layer
from compression.models.prefix_cache import PrefixCache
from compression.models.scheduler import concat_states, select_rows

pytestmark = pytest.mark.usefixtures("single_torch_thread")
# The tiny language models have 4 layers.
MERGES = {
    "none": MergeConfig(method="none"),
    "text_aware": MergeConfig(layer=2, keep_ratio=0.5),
    "fastv": MergeConfig(method="fastv", layer=2, keep_ratio=0.3),
    "holitom": MergeConfig(method="holitom", layer=3, keep_ratio=0.4),
    "schedule": MergeConfig.from_schedule([(1, 0.6), (3, 0.5)]),
}


@pytest.fixture(scope="module", params=[TINY_LLAVA_OV, TINY_QWEN2_5_VL])
def llm(request):
    return load_video_llm(request.param, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def token_sets(llm):
    rng = np.random.default_rng(0)
    sets = []
    for i, frames in enumerate((4, 6)):
        video = rng.integers(0, 255, (frames, 56, 56, 3), dtype=np.uint8)
        encoded = llm.encode(video, [0.5 * t for t in range(frames)])
        token_set = compress_video(encoded, CompressionConfig(retention_ratio=0.5))
        sets.append(token_set.with_metadata(model_id=llm.model_id, video_id=f"v{i}"))
    return sets


def requests(token_sets) -> list[JoinRequest]:
    """Questions over two videos with different merges, system prompts and answer lengths."""
    specs = [
        (0, "what moves?", None, "text_aware", 7),
        (1, "colour of the sky", "be brief", "none", 3),
        (0, "how many people are there in the room", None, "fastv", 9),
        (1, "why?", None, "schedule", 5),
        (0, "what moves?", "be brief", "holitom", 2),
        (1, "and then", None, "text_aware", 1),
    ]
    return [
        JoinRequest(
            key=i,
            question=Question(token_sets[v], text, system),
            merge=MERGES[merge],
            generation=GenerationConfig(max_new_tokens=tokens),
        )
        for i, (v, text, system, merge, tokens) in enumerate(specs)
    ]


def alone(llm, request: JoinRequest) -> tuple[list[int], str]:
    (answer,) = llm.answer([request.question], request.merge, request.generation)
    return answer.token_ids, answer.text


def drive(batch, schedule: dict[int, list[JoinRequest]]) -> dict:
    """Join `schedule[step]` before decoding step `step`; run until every question finished.
    Returns {key: (token ids, streamed text, answer)}."""
    pieces: dict = {}
    answers: dict = {}
    step = 0
    while batch or any(s >= step for s in schedule):
        events = batch.join(schedule.get(step, [])) + batch.step()
        for event in events:
            assert event.error is None, event.error
            pieces[event.key] = pieces.get(event.key, "") + event.piece
            if event.answer is not None:
                answers[event.key] = event.answer
        step += 1
    return {k: (a.token_ids, pieces[k], a) for k, a in answers.items()}


@pytest.mark.parametrize(
    "schedule",
    [
        {0: [0, 1, 2, 3, 4, 5]},  # all at once
        {0: [0], 1: [1, 2], 3: [3], 4: [4, 5]},  # joins at different steps, leaves in between
        {0: [2], 2: [5], 5: [0, 4], 6: [1, 3]},  # a join while the batch runs near empty
    ],
    ids=["together", "staggered", "late"],
)
def test_greedy_answers_under_any_interleaving_equal_the_answer_alone(
    llm, token_sets, schedule
) -> None:
    reqs = requests(token_sets)
    batch = llm.continuous_batch()
    results = drive(batch, {step: [reqs[i] for i in keys] for step, keys in schedule.items()})
    assert sorted(results) == [r.key for r in reqs]
    for request in reqs:
        token_ids, streamed, answer = results[request.key]
        assert (token_ids, answer.text) == alone(llm, request), request
        assert streamed == answer.text  # the pieces concatenate to the answer
    assert len(batch) == 0


def test_a_cancelled_question_leaves_and_the_others_answer_as_alone(llm, token_sets) -> None:
    reqs = requests(token_sets)
    batch = llm.continuous_batch()
    batch.join(reqs[:3])
    batch.step()
    batch.cancel({2})
    assert 2 not in batch.keys
    results = drive(batch, {0: [reqs[3]]})
    for request in (reqs[0], reqs[1], reqs[3]):
        if request.key in results:  # reqs[1] (3 tokens) may have finished before the cancel
            assert results[request.key][0] == alone(llm, request)[0]


def test_a_failing_question_fails_alone(llm, token_sets) -> None:
    reqs = requests(token_sets)
    foreign = token_sets[0].with_metadata(model_id="another-model")
    bad = JoinRequest("bad", Question(foreign, "q?"), MERGES["text_aware"], GenerationConfig())
    batch = llm.continuous_batch()
    events = batch.join([reqs[0], bad, reqs[1]])
    errors = {e.key: e.error for e in events if e.error is not None}
    assert set(errors) == {"bad"} and "another-model" in str(errors["bad"])
    results = drive(batch, {})
    assert results[0][0] == alone(llm, reqs[0])[0]


# -- the padded cache's masks after joins and leaves -------------------------------------------
def test_joined_state_masks_mark_exactly_each_rows_real_keys(llm, token_sets) -> None:
    parts = llm.language_model_parts()
    reqs = requests(token_sets)
    short = [llm.prompt_sequence(reqs[5].question)]
    long = [llm.prompt_sequence(reqs[2].question), llm.prompt_sequence(reqs[1].question)]
    a = prefill(parts, short, reqs[5].merge)
    b = prefill(parts, long, MERGES["none"])
    lengths_a = [int(v.sum()) for v in a.valid[a.layer_groups[-1]]]
    lengths_b = [int(v.sum()) for v in b.valid[b.layer_groups[-1]]]
    joined = concat_states(a, b)
    for i, layer in enumerate(joined.cache.layers):
        valid = joined.valid[joined.layer_groups[i]]
        assert valid.shape == (3, layer.keys.shape[2])
        assert bool(valid[:, -1].all())  # right-aligned: every row's last key is real
        # padding keys (masked) are exactly the left columns added by the join
        padded = ~valid
        assert bool((layer.keys.abs().sum(dim=(1, 3))[padded] == 0).all())
    last = joined.valid[joined.layer_groups[-1]]
    assert [int(v.sum()) for v in last] == lengths_a + lengths_b
    # the longest row leaves: the columns that only it used go with it
    kept = select_rows(joined, [0, 2])
    widths = [int(v.sum()) for v in kept.valid[kept.layer_groups[-1]]]
    assert kept.cache.layers[-1].keys.shape[2] == max(widths)
    assert bool(kept.valid[kept.layer_groups[-1]].any(dim=0).all())


# -- per-video prefix reuse ---------------------------------------------------------------------
@pytest.mark.parametrize("merge", list(MERGES.values()), ids=list(MERGES))
def test_a_reused_prefix_gives_the_full_prefills_logits(llm, token_sets, merge) -> None:
    parts = llm.language_model_parts()
    first = [Question(token_sets[0], "what moves?", "sys"), Question(token_sets[1], "a")]
    later = [Question(token_sets[0], "and the colour?", "sys"), Question(token_sets[1], "b c d")]
    captured = prefill(parts, [llm.prompt_sequence(q) for q in first], merge, capture=True)
    prefixes = captured.prefixes
    assert [p.resume for p in prefixes] == [resume_layer(parts.num_layers, merge)] * 2
    sequences = [llm.prompt_sequence(q) for q in later]
    full = prefill(parts, sequences, merge)
    reused = prefill(parts, sequences, merge, prefixes=prefixes)
    torch.testing.assert_close(reused.logits, full.logits, atol=1e-5, rtol=1e-5)
    assert [s.cached_prompt_tokens for s in reused.stats] == [s.text_start for s in sequences]
    assert [s.layer_tokens for s in reused.stats] == [s.layer_tokens for s in full.stats]
    tokens = full.logits.argmax(dim=-1)
    for _ in range(3):  # the cached layers decode alike too
        expected = decode_step(parts, full, tokens)
        got = decode_step(parts, reused, tokens)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        tokens = expected.argmax(dim=-1)


def test_a_repeated_question_reuses_the_videos_prefix(llm, token_sets) -> None:
    reqs = requests(token_sets)
    batch = llm.continuous_batch(prefix_cache_bytes=10**8)
    first = drive(batch, {0: [reqs[0]]})[0][2]
    again = JoinRequest("again", reqs[0].question, reqs[0].merge, reqs[0].generation)
    other = JoinRequest(
        "other", Question(token_sets[0], "who?"), reqs[0].merge, GenerationConfig(max_new_tokens=4)
    )
    results = drive(batch, {0: [again], 2: [other, reqs[1]]})
    assert first.cached_prompt_tokens == 0
    assert results["again"][2].cached_prompt_tokens > 0
    assert results["other"][2].cached_prompt_tokens == results["again"][2].cached_prompt_tokens
    assert results["again"][0] == first.token_ids == alone(llm, reqs[0])[0]
    assert results["other"][0] == alone(llm, other)[0]
    queries, hits = batch.prefix_cache_stats()
    assert hits == 2 and queries == 4  # reqs[1] has another video and merge: a miss


def test_prefix_cache_is_a_byte_bounded_lru_keyed_by_the_token_set(llm, token_sets) -> None:
    parts = llm.language_model_parts()
    questions = [Question(ts, "q") for ts in token_sets]
    merge = MERGES["text_aware"]
    state = prefill(parts, [llm.prompt_sequence(q) for q in questions], merge, capture=True)
    a, b = state.prefixes
    resume = a.resume
    cache = PrefixCache(capacity_bytes=a.nbytes + b.nbytes - 1)
    cache.put(token_sets[0], "k", resume, a)
    cache.put(token_sets[1], "k", resume, b)  # over capacity: the least recent (a) goes
    assert cache.get(token_sets[0], "k", resume) is None
    assert cache.get(token_sets[1], "k", resume) is b
    assert cache.get(token_sets[1], "other system prompt", resume) is None
    assert cache.get(token_sets[1], "k", resume + 1) is None
    assert cache.stats().bytes == b.nbytes and cache.stats().hits == 1
    # an equal but different token set object never hits (identity, checked by a weak ref)
    copy = token_sets[1].with_metadata(video_id="copy")
    assert cache.get(copy, "k", resume) is None
    PrefixCache(capacity_bytes=0).put(token_sets[0], "k", resume, a)  # too big: not kept
