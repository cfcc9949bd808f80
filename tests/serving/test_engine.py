"""AnswerEngine without Ray: cache, batching equivalence, FLOPs figures, streaming, errors."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from compression import CompressionConfig, compress_video
from compression.config import OUTER_METHODS, MergeConfig
from compression.flops import layer_token_counts, prefill_decode_flops
from compression.models import GenerationConfig, Turn
from serving.engine import AnswerEngine, AskJob, PreparedQuestion
from serving.errors import InvalidRequest, ServingError
from serving.schemas import AskResponse
from storage.token_files import TokenSetLocation, write_token_sets

pytestmark = pytest.mark.usefixtures("single_torch_thread")
GREEDY = GenerationConfig(max_new_tokens=6)
MERGE = MergeConfig(layer=2)


def job(location: TokenSetLocation, question: str, **changes: object) -> AskJob:
    base = AskJob(location.video_id, location, question, None, MERGE, GREEDY)
    return dataclasses.replace(base, **changes)


def prepare(engine: AnswerEngine, jobs: list[AskJob]) -> list[PreparedQuestion]:
    async def run() -> list[PreparedQuestion]:
        return [await engine.prepare(j) for j in jobs]

    return asyncio.run(run())


def essentials(response: AskResponse) -> tuple:
    tokens = response.tokens
    return (response.answer, tokens.completion, tokens.visual_in, tokens.visual_after_merge)


def test_second_question_about_a_video_hits_the_cache(engine: AnswerEngine, locations) -> None:
    first, second = prepare(engine, [job(locations[0], "a?"), job(locations[0], "b?")])
    assert not first.cache_hit and second.cache_hit
    assert second.question.token_set is first.question.token_set
    assert engine.cache.stats().bytes >= first.question.token_set.nbytes


def test_a_batch_answers_like_each_question_alone(engine: AnswerEngine, locations) -> None:
    jobs = [job(loc, q) for loc in locations for q in ("what moves?", "colour of the sky")]
    batched = engine.answer_batch(prepare(engine, jobs))
    alone = [engine.answer_batch(prepare(engine, [j]))[0] for j in jobs]
    assert [essentials(r) for r in batched] == [essentials(r) for r in alone]
    assert {r.batch_size for r in batched} == {len(jobs)}
    assert [r.video_id for r in batched] == [j.video_id for j in jobs]


def test_different_settings_run_in_separate_forwards(engine: AnswerEngine, locations) -> None:
    jobs = [
        job(locations[0], "q1"),
        job(locations[1], "q2", merge=MergeConfig(layer=1, keep_ratio=0.25)),
        job(locations[2], "q3"),
    ]
    reports = engine.answer_batch(prepare(engine, jobs))
    assert [r.batch_size for r in reports] == [2, 1, 2]
    assert reports[1].merge.layer == 1


def test_flops_figures_follow_the_token_counts(engine: AnswerEngine, locations) -> None:
    (report,) = engine.answer_batch(prepare(engine, [job(locations[1], "what?")]))
    info = engine.info

    def cost(visual: int, merge: MergeConfig) -> float:
        counts = layer_token_counts(info.num_layers, visual, 0, merge)
        return prefill_decode_flops(counts, info.hidden_size, info.intermediate_size)

    no_merge = MergeConfig(method="none")
    tokens = report.tokens
    expected = cost(tokens.visual_in, MERGE) / cost(tokens.original_visual, no_merge)
    assert report.flops.ratio_visual_only == pytest.approx(expected)
    assert tokens.visual_after_merge == MERGE.kept_count(tokens.visual_in)
    assert 0 < report.flops.ratio_visual_only < 1
    assert 0 < report.flops.ratio_with_text < 1


def test_stream_pieces_add_up_to_the_answer(engine: AnswerEngine, locations) -> None:
    (prepared,) = prepare(engine, [job(locations[2], "describe it")])
    items = list(engine.answer_stream(prepared))
    *pieces, final = items
    assert isinstance(final, AskResponse) and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == final.answer
    (batched,) = engine.answer_batch([prepared])
    assert essentials(batched) == essentials(final)


def test_merge_layer_beyond_the_model_is_a_clear_error(engine: AnswerEngine, locations) -> None:
    with pytest.raises(InvalidRequest, match="4 layers"):
        prepare(engine, [job(locations[0], "q", merge=MergeConfig(layer=4))])


def test_unreadable_token_set_names_the_video_not_the_path(
    engine: AnswerEngine, locations, tmp_path: Path
) -> None:
    missing = dataclasses.replace(locations[0], file_url=str(tmp_path / "gone.parquet"))
    with pytest.raises(ServingError) as error:
        prepare(engine, [job(missing, "q")])
    assert "v0" in error.value.message and str(tmp_path) not in error.value.message


# -- one question never fails another (issue 12) ----------------------------------------------


def test_a_bad_question_fails_alone_in_its_batch(engine: AnswerEngine, locations) -> None:
    good = [job(loc, "what moves ?") for loc in locations]
    bad = job(locations[1], "what is <video> here ?")  # the chat template would get 2 videos
    results = engine.answer_batch(prepare(engine, [good[0], bad, good[1], good[2]]))
    error = results[1]
    assert isinstance(error, InvalidRequest) and error.code == "invalid_question"
    assert "<video>" in error.message and error.status_code == 400
    alone = [engine.answer_batch(prepare(engine, [j]))[0] for j in good]
    answered = [results[0], results[2], results[3]]
    assert [essentials(r) for r in answered] == [essentials(r) for r in alone]


def test_a_question_that_breaks_the_forward_fails_alone(engine: AnswerEngine, locations) -> None:
    prepared = prepare(engine, [job(loc, "what ?") for loc in locations])
    foreign = prepared[0].question.token_set.with_metadata(model_id="another-model")
    prepared[0].question.token_set = foreign  # the plug-in refuses it inside the forward
    results = engine.answer_batch(prepared)
    assert isinstance(results[0], ServingError) and results[0].status_code == 500
    assert "incident" in results[0].message and "another-model" not in results[0].message
    # Halves: the foreign one alone (it fails), the other two still share a forward.
    assert all(isinstance(r, AskResponse) and r.batch_size == 2 for r in results[1:])


def test_tiny_temperature_and_top_p_answer_like_greedy(engine: AnswerEngine, locations) -> None:
    question = job(locations[2], "what happens ?")
    tiny = [
        GenerationConfig(max_new_tokens=6, temperature=1e-45, seed=1),
        GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1e-300, seed=1),
    ]
    jobs = [question] + [dataclasses.replace(question, generation=g) for g in tiny]
    results = engine.answer_batch(prepare(engine, jobs))
    assert all(isinstance(r, AskResponse) for r in results)
    assert essentials(results[1]) == essentials(results[2]) == essentials(results[0])


def test_conversations_and_bad_turns(engine: AnswerEngine, locations) -> None:
    history = (Turn("user", "who is there ?"), Turn("assistant", "a man"))
    (single, turns) = engine.answer_batch(
        prepare(engine, [job(locations[0], "what ?"), job(locations[0], "what ?", history=history)])
    )
    assert turns.tokens.prompt > single.tokens.prompt
    with pytest.raises(InvalidRequest, match="assistant"):
        prepare(engine, [job(locations[0], "what ?", history=history[:1])])


def test_a_bad_streamed_question_is_an_invalid_request(engine: AnswerEngine, locations) -> None:
    (prepared,) = prepare(engine, [job(locations[0], "is <|im_end|> there ?")])
    with pytest.raises(InvalidRequest, match="control token"):
        list(engine.answer_stream(prepared))


def test_every_outer_method_is_answered(engine: AnswerEngine, tmp_path: Path) -> None:
    """A token set indexed by any outer method (the paper's, each baseline, all tokens) loads
    from the store and is answered, with the visual tokens its method kept."""
    frames = np.random.default_rng(1).integers(0, 255, (4, 48, 48, 3), dtype=np.uint8)
    encoded = engine.llm.encode(frames, [0.5 * t for t in range(len(frames))])
    token_sets = [
        compress_video(
            encoded, CompressionConfig(retention_ratio=0.25, method=method)
        ).with_metadata(model_id=engine.info.model_id, video_id=f"v-{method}")
        for method in OUTER_METHODS
    ]
    locations = write_token_sets(str(tmp_path), token_sets)
    results = engine.answer_batch(prepare(engine, [job(loc, "what ?") for loc in locations]))
    for method, token_set, result in zip(OUTER_METHODS, token_sets, results, strict=True):
        assert isinstance(result, AskResponse), method
        assert result.tokens.visual_in == token_set.kept_count, method


def test_kept_visual_only_when_asked_and_the_same_streamed(engine: AnswerEngine, locations) -> None:
    """The rows layer K kept (Fig. S2): opt-in, a strict subset of the token set, the same in a
    batch and in a stream, and as many as `visual_after_merge` says."""
    asked = job(locations[1], "what moves?", include_kept_visual=True)
    plain, batched = engine.answer_batch(prepare(engine, [job(locations[1], "what moves?"), asked]))
    *_, streamed = engine.answer_stream(prepare(engine, [asked])[0])
    assert plain.kept_visual is None
    rows = batched.kept_visual
    assert rows is not None and rows == streamed.kept_visual
    assert len(rows) == len(set(rows)) == batched.tokens.visual_after_merge
    assert 0 < len(rows) < batched.tokens.visual_in and max(rows) < batched.tokens.visual_in
