"""Annotation readers: each benchmark's published layout, written here in miniature."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.eval.benchmarks import (
    AnnotationError,
    discover_benchmarks,
    load_benchmark,
    strip_option_letters,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def _json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mvbench_layout_answer_text_and_nested_video_folders(tmp_path: Path) -> None:
    video = _touch(tmp_path / "video" / "clevrer" / "video_validation" / "v1.mp4")
    _json(
        tmp_path / "json" / "moving_direction.json",
        [
            {"video": "v1.mp4", "question": "Dir?", "candidates": ["up", "down"], "answer": "down"},
            {"video": "gone.mp4", "question": "Where?", "candidates": ["a", "b"], "answer": "a"},
        ],
    )
    bench = load_benchmark("mvbench", tmp_path)
    assert len(bench.items) == 1
    item = bench.items[0]
    assert (item.task, item.options, item.answer_index, item.answer_letter) == (
        "moving_direction",
        ("up", "down"),
        1,
        "B",
    )
    assert item.video == video
    assert [qid for qid, _ in bench.skipped] == ["moving_direction/1"]


def test_mvbench_answer_not_among_candidates_is_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "video" / "v.mp4")
    _json(
        tmp_path / "json" / "t.json",
        [{"video": "v.mp4", "question": "q", "candidates": ["a", "b"], "answer": "c"}],
    )
    with pytest.raises(AnnotationError, match="not one of the options"):
        load_benchmark("mvbench", tmp_path)


def test_egoschema_lmms_eval_parquet_strips_letters_and_skips_hidden_answers(
    tmp_path: Path,
) -> None:
    _touch(tmp_path / "videos" / "vid1.mp4")
    _touch(tmp_path / "videos" / "vid2.mp4")
    options = ["A. runs", "B. walks", "C. sits", "D. eats", "E. sleeps"]
    _parquet(
        tmp_path / "Subset" / "test-00000-of-00001.parquet",
        [
            {"question_idx": "q1", "question": "What?", "video_idx": "vid1", "option": options,
             "answer": "2"},
            {"question_idx": "q2", "question": "What?", "video_idx": "vid2", "option": options,
             "answer": ""},
        ],
    )  # fmt: skip
    bench = load_benchmark("egoschema", tmp_path)
    assert [i.question_id for i in bench.items] == ["q1"]
    assert bench.items[0].options == ("runs", "walks", "sits", "eats", "sleeps")
    assert bench.items[0].answer_letter == "C"


def test_egoschema_original_release_uses_subset_answers(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "u1.mp4")
    _touch(tmp_path / "videos" / "u2.mp4")
    record = {f"option {i}": f"opt{i}" for i in range(5)}
    _json(
        tmp_path / "questions.json",
        [{"q_uid": "u1", "question": "q", **record}, {"q_uid": "u2", "question": "q", **record}],
    )
    _json(tmp_path / "subset_answers.json", {"u2": 4})
    bench = load_benchmark("egoschema", tmp_path)
    assert [(i.question_id, i.answer_index) for i in bench.items] == [("u2", 4)]


def test_mlvu_tasks_from_question_type_and_open_ended_files_left_out(tmp_path: Path) -> None:
    _touch(tmp_path / "video" / "4_count" / "c.mp4")
    _json(
        tmp_path / "json" / "4_count.json",
        [{"video": "c.mp4", "question": "How many?", "candidates": ["1", "2", "3"],
          "answer": "3", "question_type": "count"}],
    )  # fmt: skip
    _json(tmp_path / "json" / "9_summary.json", [{"video": "c.mp4", "question": "Sum up."}])
    bench = load_benchmark("mlvu", tmp_path)
    assert [(i.task, i.answer_index) for i in bench.items] == [("count", 2)]


def test_longvideobench_json_and_parquet_copies(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "abc.mp4")
    _json(
        tmp_path / "lvb_val.json",
        [
            {"id": "x1", "video_path": "abc.mp4", "question": "q", "candidates": ["a", "b", "c"],
             "correct_choice": 1, "question_category": "T3E"},
        ],
    )  # fmt: skip
    from_json = load_benchmark("longvideobench", tmp_path)
    assert [(i.task, i.options, i.answer_index) for i in from_json.items] == [
        ("T3E", ("a", "b", "c"), 1)
    ]

    (tmp_path / "lvb_val.json").unlink()
    row = {"id": "x1", "video_path": "abc.mp4", "question": "q", "option0": "a", "option1": "b",
           "option2": "c", "option3": "N/A", "option4": "N/A", "correct_choice": 1,
           "question_category": "T3E"}  # fmt: skip
    _parquet(tmp_path / "validation-00000-of-00001.parquet", [row])
    from_parquet = load_benchmark("longvideobench", tmp_path)
    assert from_parquet.items == from_json.items


def test_videomme_parquet_letter_answers_and_suffix_variants(tmp_path: Path) -> None:
    video = _touch(tmp_path / "data" / "yt123.MP4")
    _parquet(
        tmp_path / "videomme" / "test-00000-of-00001.parquet",
        [{"videoID": "yt123", "question_id": "001-1", "duration": "short", "task_type": "OCR",
          "question": "Which?", "options": ["A. red", "B. green", "C. blue", "D. black"],
          "answer": "C"}],
    )  # fmt: skip
    bench = load_benchmark("videomme", tmp_path)
    item = bench.items[0]
    assert (item.task, item.options[2], item.answer_index, item.video) == (
        "short",
        "blue",
        2,
        video,
    )


def test_limit_missing_fields_and_unknown_names(tmp_path: Path) -> None:
    _touch(tmp_path / "video" / "v.mp4")
    rows = [{"video": "v.mp4", "question": f"q{i}", "candidates": ["a", "b"], "answer": "a"}
            for i in range(5)]  # fmt: skip
    _json(tmp_path / "json" / "t.json", rows)
    assert len(load_benchmark("mvbench", tmp_path, limit=2).items) == 2
    _json(tmp_path / "json" / "t.json", [{"video": "v.mp4", "candidates": ["a", "b"]}])
    with pytest.raises(AnnotationError, match="missing field 'question'"):
        load_benchmark("mvbench", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_benchmark("mvbench", tmp_path / "absent")


def test_strip_option_letters_only_when_every_option_is_lettered() -> None:
    assert strip_option_letters(["A. x", "(B) y", "C) z"]) == ("x", "y", "z")
    # "A dog" is an option text, not a lettered option: nothing is stripped.
    assert strip_option_letters(["A dog", "B. cat"]) == ("A dog", "B. cat")


def test_discover_benchmarks_by_folder_name(tmp_path: Path) -> None:
    for name in ("Video-MME", "MVBench", "LongVideoBench", "ActivityNet-QA", "unrelated"):
        (tmp_path / name).mkdir()
    assert sorted(discover_benchmarks(tmp_path)) == [
        "activitynetqa",
        "longvideobench",
        "mvbench",
        "videomme",
    ]


def test_lettered_options_are_kept_as_published(tmp_path: Path) -> None:
    _touch(tmp_path / "data" / "v.mp4")
    options = ["A. red", "B. green", "C. blue", "D. black"]
    _parquet(
        tmp_path / "videomme" / "test-00000-of-00001.parquet",
        [{"videoID": "v", "question_id": "1", "duration": "short", "question": "Which?",
          "options": options, "answer": "B"}],
    )  # fmt: skip
    [item] = load_benchmark("videomme", tmp_path).items
    assert item.published_options == tuple(options) and item.options[1] == "green"


def test_activitynetqa_lmms_eval_layout(tmp_path: Path) -> None:
    video = _touch(tmp_path / "all_test" / "v_abc-12.webm")
    _parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet",
        [
            {"video_name": "abc-12", "question_id": "v_abc-12_0", "question": "is it day",
             "answer": "yes", "type": 3},
            {"video_name": "gone", "question_id": "v_gone_0", "question": "what", "answer": "x",
             "type": 0},
        ],
    )  # fmt: skip
    bench = load_benchmark("activitynetqa", tmp_path)
    assert bench.open_ended and bench.display_name == "ActivityNet-QA"
    [item] = bench.items
    assert (item.question_id, item.task, item.question, item.answer, item.video) == (
        "v_abc-12_0", "type 3", "is it day", "yes", video
    )  # fmt: skip
    assert [qid for qid, _ in bench.skipped] == ["v_gone_0"]


def test_activitynetqa_original_release(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "v_k1.mp4")
    _json(tmp_path / "test_q.json", [{"video_name": "k1", "question_id": "k1_0",
                                      "question": "what is shown"}])  # fmt: skip
    _json(tmp_path / "test_a.json", [{"question_id": "k1_0", "answer": "a dog", "type": 5}])
    [item] = load_benchmark("activitynetqa", tmp_path).items
    assert (item.answer, item.task) == ("a dog", "type 5")
    (tmp_path / "test_a.json").unlink()
    with pytest.raises(AnnotationError, match=r"needs test_a\.json"):
        load_benchmark("activitynetqa", tmp_path)
