"""The evaluation runner: sweep rows and labels, scoring, and a whole run on a tiny benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.config import CompressionConfig
from compression.video_llm import Answer
from jobs.benchmarks import Benchmark, MultipleChoiceItem
from jobs.evaluate import (
    SWEEP_METHODS,
    build_sweep,
    default_merge_layer,
    percent,
    predictions_for,
    summarise,
)


def test_sweep_rows_labels_and_shared_token_sets() -> None:
    entries = build_sweep(
        SWEEP_METHODS, [0.02, 0.1], base=CompressionConfig(tau=0.6), merge_layer=3
    )
    labels = [(e.label, e.retention) for e in entries]
    assert labels[0] == ("Vanilla", "100%")
    assert labels[1:8] == [
        ("FastV", "100%/10%"),
        ("VisionZip-style", "10%"),
        ("Uniform", "10%"),
        ("Random", "10%"),
        ("Ours (w/o C)", "10%"),
        ("Ours (w/o M)", "10%"),
        ("Ours", "10%/5%"),
    ]
    assert labels[-1] == ("Ours", "2%/1%") and len(entries) == 15
    by_key = {e.key: e for e in entries}
    # FastV: all tokens in (the full model's token sets), 2% of them left after layer K.
    fastv = by_key["fastv@0.02"]
    assert fastv.outer == by_key["full@1"].outer and fastv.merge.keep_ratio == 0.02
    assert (fastv.merge.method, fastv.merge.layer) == ("fastv", 3)
    # Ours and Ours (w/o M) ask over the same token sets; only the in-LLM merge differs.
    assert by_key["ours@0.02"].outer == by_key["ours_no_merge@0.02"].outer
    assert by_key["ours@0.02"].outer.tau == 0.6
    assert by_key["ours@0.02"].merge.method == "text_aware"
    assert by_key["ours_no_merge@0.02"].merge.method == "none"
    assert by_key["ours_no_cluster@0.02"].outer.method == "ours_no_cluster"
    with pytest.raises(ValueError, match="unknown sweep methods"):
        build_sweep(["holitom"], [0.02])


def test_percent_and_merge_layer_scaling() -> None:
    assert [percent(r) for r in (0.15, 0.075, 0.02, 0.005)] == ["15%", "7.5%", "2%", "0.5%"]
    assert default_merge_layer(28) == 18
    assert default_merge_layer(4) == 3
    assert default_merge_layer(2) == 1


def _answer(text: str, visual_in: int, layer_visual: list[int], layer_all: list[int]) -> Answer:
    return Answer(
        text=text,
        token_ids=[],
        finish_reason="stop",
        prompt_tokens=layer_all[0],
        visual_tokens_in=visual_in,
        visual_tokens_after_merge=layer_visual[-1],
        layer_tokens=layer_all,
        layer_visual_tokens=layer_visual,
        prefill_seconds=0.0,
        decode_seconds=0.0,
    )


def test_scores_per_benchmark_mlvu_as_task_mean_and_flops() -> None:
    def item(bench: str, task: str, qid: str, answer: int) -> MultipleChoiceItem:
        return MultipleChoiceItem(bench, task, qid, Path("v.mp4"), "q?",
                                  ("red", "green", "blue"), answer)  # fmt: skip

    mvbench = [item("mvbench", "t", f"m{i}", 0) for i in range(4)]
    mlvu = [item("mlvu", "count", "c1", 1), item("mlvu", "order", "o1", 2),
            item("mlvu", "order", "o2", 2), item("mlvu", "order", "o3", 2)]  # fmt: skip
    benches = [Benchmark("mvbench", Path("."), mvbench),
               Benchmark("mlvu", Path("."), mlvu)]  # fmt: skip
    [entry] = build_sweep(["ours"], [0.5], merge_layer=1)
    texts = ["A", "B", "(A)", "nonsense", "B", "C", "blue", "A"]
    answers = [_answer(t, 10, [10, 5], [20, 15]) for t in texts]
    preds = predictions_for(entry, mvbench + mlvu, answers, hidden=8, ffn=16)
    assert [p.choice for p in preds] == ["A", "B", "A", None, "B", "C", "C", "A"]
    [row], tasks = summarise([entry], benches, preds)
    # MVBench: 2 of 4 right. MLVU: count 1/1, order 2/3 -> task mean (100 + 66.7) / 2.
    assert row.scores["MVBench"] == pytest.approx(50.0)
    assert row.scores["MLVU"] == pytest.approx((100.0 + 200.0 / 3) / 2)
    assert [(t.task, t.questions, t.correct, t.unparsed) for t in tasks] == [
        ("t", 4, 2, 1), ("count", 1, 1, 0), ("order", 3, 2, 0)
    ]  # fmt: skip
    d, m, r = 8, 16, 100

    def layer(n: int) -> int:  # Eq. S3 for one layer, written out independently
        return 4*n*d*d + 2*n*n*d + 2*n*d*m + r*(4*d*d + 2*d*m + 2*d*n + d*(r + 1))  # fmt: skip

    assert row.tflops == pytest.approx((layer(10) + layer(5)) / 1e12)
    assert row.tflops_with_text == pytest.approx((layer(20) + layer(15)) / 1e12)
