"""The evaluation runner: sweep rows and labels, scoring, and a whole run on a tiny benchmark
(the runner's logs and resumption: test_resume.py; presets: test_presets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.config import CompressionConfig, MergeConfig, default_merge_layer, scaled_layer
from compression.models import Answer
from jobs.eval.benchmarks import Benchmark, MultipleChoiceItem
from jobs.eval.evaluate import predictions_for, summarise
from jobs.eval.sweep import SWEEP_METHODS, build_sweep, percent


def test_sweep_rows_labels_and_shared_token_sets() -> None:
    entries = build_sweep(SWEEP_METHODS, [0.02, 0.1], base=CompressionConfig(tau=0.6))
    labels = [(e.label, e.retention) for e in entries]
    assert labels[0] == ("Vanilla", "100%")
    assert labels[1:10] == [
        ("FastV", "100%/10%"),
        ("VisionZip-style", "10%"),
        ("Uniform", "10%"),
        ("Random", "10%"),
        ("FastVID", "10%"),
        ("HoliTom", "10%/5%"),
        ("Ours (w/o C)", "10%"),
        ("Ours (w/o M)", "10%"),
        ("Ours", "10%/5%"),
    ]
    assert labels[-1] == ("Ours", "2%/1%") and len(entries) == 19
    by_key = {e.key: e for e in entries}
    # FastV: all tokens in (the full model's token sets), 2% of them left after ITS layer K = 2.
    fastv = by_key["fastv@0.02"]
    assert fastv.outer == by_key["full@1"].outer and fastv.merge.keep_ratio == 0.02
    assert (fastv.merge.method, fastv.merge.layer) == ("fastv", 2)
    # Ours and Ours (w/o M) ask over the same token sets; only the in-LLM merge differs.
    assert by_key["ours@0.02"].outer == by_key["ours_no_merge@0.02"].outer
    assert by_key["ours@0.02"].outer.tau == 0.6
    assert by_key["ours@0.02"].merge == MergeConfig(layer=18, keep_ratio=0.5, lam=0.5)
    assert by_key["ours_no_merge@0.02"].merge.method == "none"
    assert by_key["ours_no_cluster@0.02"].outer.method == "ours_no_cluster"
    # HoliTom: its outer stage and its inner merge with its own defaults; FastVID: outer only.
    holitom = by_key["holitom@0.02"]
    assert (holitom.outer.method, holitom.outer.retention_ratio) == ("holitom", 0.02)
    assert holitom.merge == MergeConfig("holitom", 18, 0.5)
    assert by_key["fastvid@0.02"].outer.method == "fastvid"
    assert by_key["fastvid@0.02"].merge.method == "none"
    with pytest.raises(ValueError, match="unknown sweep methods"):
        build_sweep(["tome"], [0.02])


def test_sweep_scales_each_k_to_the_model_and_takes_a_schedule() -> None:
    entries = build_sweep(["fastv", "holitom", "ours"], [0.1], num_layers=4)
    assert [(e.merge.method, e.merge.layer) for e in entries] == [
        ("fastv", 1),
        ("holitom", 3),
        ("text_aware", 3),
    ]
    schedule = MergeConfig.from_schedule([(8, 0.5), (16, 0.5)], lam=0.25)
    [fastv, holitom, ours] = build_sweep(
        ["fastv", "holitom", "ours"], [0.1], ours=schedule, fastv_layer=3
    )
    assert ours.merge == schedule and ours.retention == "10%/5%/2.5%"
    assert fastv.merge.layer == 3 and holitom.merge.layer == 18  # HoliTom keeps its defaults
    with pytest.raises(ValueError, match="below the model's 4 layers"):
        build_sweep(["ours"], [0.1], num_layers=4, ours=schedule)
    with pytest.raises(ValueError, match="below the model's 4 layers"):
        build_sweep(["fastv"], [0.1], num_layers=4, fastv_layer=4)
    with pytest.raises(ValueError, match="text_aware"):
        build_sweep(["ours"], [0.1], ours=MergeConfig(method="fastv"))


def test_merge_schedule_option() -> None:
    import argparse

    from jobs.eval.command import _ours, _schedule

    assert _schedule("8:0.5, 16:0.25") == [(8, 0.5), (16, 0.25)]
    for bad in ("8", "8:x", "16:0.5,8:0.5", "8:0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _schedule(bad)
    args = argparse.Namespace(
        merge_schedule=[(8, 0.5), (16, 0.25)], merge_layer=None, keep_ratio=None, lam=0.5
    )
    assert _ours(args, 28) == MergeConfig.from_schedule([(8, 0.5), (16, 0.25)])
    with pytest.raises(ValueError, match="not both"):
        _ours(argparse.Namespace(**{**vars(args), "keep_ratio": 0.3}), 28)
    one = argparse.Namespace(merge_schedule=None, merge_layer=None, keep_ratio=None, lam=0.5)
    assert _ours(one, 28) == MergeConfig(layer=18, keep_ratio=0.5)
    with pytest.raises(ValueError, match="merge-layer"):
        _ours(argparse.Namespace(**{**vars(one), "merge_layer": 28}), 28)


def test_percent_and_merge_layer_scaling() -> None:
    assert [percent(r) for r in (0.15, 0.075, 0.02, 0.005)] == ["15%", "7.5%", "2%", "0.5%"]
    assert default_merge_layer(28) == 18
    assert default_merge_layer(4) == 3
    assert default_merge_layer(2) == 1
    # any K of 28 layers, by the same rule
    assert [scaled_layer(k, 28) for k in (2, 7, 14, 18, 21)] == [2, 7, 14, 18, 21]
    assert [scaled_layer(k, 4) for k in (2, 7, 14, 18, 21)] == [1, 1, 2, 3, 3]
    assert scaled_layer(18, 4) == default_merge_layer(4)
    with pytest.raises(ValueError):
        scaled_layer(28, 28)


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
        prefill_s=0.0,
        decode_s=0.0,
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
    [entry] = build_sweep(["ours"], [0.5], ours=MergeConfig(layer=1))
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


# -- a whole run on a tiny synthetic benchmark ----------------------------------------------------
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
FRAMES = 8  # tiny LLaVA-OV: 3 x 3 tokens per frame, so N = 72 per video


def _videomme_benchmark(root: Path) -> Path:
    """VideoMME's published layout: videomme/test-*.parquet, videos in data/<videoID>.mp4.
    Each video is one solid colour; its questions ask for that colour (two for the first video,
    so a batch of two holds questions about one video or about two)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from video_files import make_corrupt_video

    from tokenreel.sample_videos import write_video

    (root / "data").mkdir(parents=True)
    rows = []
    options = ["A. red", "B. green", "C. blue", "D. black"]
    for n, (name, rgb) in enumerate(COLOURS.items()):
        write_video(root / "data" / f"{name}.mp4", np.full((FRAMES, 64, 64, 3), rgb, np.uint8))
        questions = ["What colour fills the video?", "Which colour is shown?"][: 2 - min(n, 1)]
        for k, question in enumerate(questions):
            rows.append({"videoID": name, "question_id": f"{n:03d}-{k}", "duration": "short",
                         "task_type": "Attribute Perception", "question": question,
                         "options": options, "answer": "ABC"[n]})  # fmt: skip
    make_corrupt_video(root / "data" / "broken.mp4")
    rows.append({"videoID": "broken", "question_id": "999-0", "duration": "long",
                 "task_type": "Attribute Perception", "question": "Which colour?",
                 "options": options, "answer": "D"})  # fmt: skip
    (root / "videomme").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_llm():
    from compression.models import load_video_llm

    return load_video_llm("tiny-llava-ov")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llm):
    """One sweep over the tiny benchmark, shared by the tests below (asking is the slow part)."""
    from jobs.eval.benchmarks import load_benchmark
    from jobs.eval.evaluate import EvalSettings, run_evaluation
    from storage import open_store

    root = tmp_path_factory.mktemp("eval")
    bench = load_benchmark("videomme", _videomme_benchmark(root / "data" / "Video-MME"))
    entries = build_sweep(
        METHODS, [0.5, 0.25], num_layers=tiny_llm.num_layers, base=CompressionConfig(frames=FRAMES)
    )
    settings = EvalSettings(batch_size=2, max_new_tokens=4)
    store = open_store(str(root / "store"))
    result = run_evaluation(
        [bench], tiny_llm, entries, settings, store=store, out_dir=root / "report"
    )
    return root, bench, entries, settings, store, result


METHODS = ["full", "fastv", "holitom", "fastvid", "ours_no_merge", "ours"]


@pytest.mark.slow
def test_sweep_on_a_tiny_benchmark_writes_the_report(tiny_run, tiny_llm) -> None:
    import csv
    import json

    from jobs.eval.evaluate import BenchmarkTokenSets
    from jobs.eval.sweep import unique_configs

    root, bench, entries, settings, store, result = tiny_run
    assert len(bench.items) == 5

    # The corrupt video failed to decode; its question is left out of every row.
    assert list(result.failed_videos) == [str(root / "data" / "Video-MME" / "data" / "broken.mp4")]
    assert len(result.predictions) == len(entries) * 4

    # Each row asked over the token sets and merge its label says.
    n = FRAMES * 9
    expected = {  # row -> (visual tokens entering the LLM, left after layer K)
        "full@1": (n, n),
        "fastv@0.5": (n, n // 2),
        "fastv@0.25": (n, n // 4),
        # HoliTom's temporal merge leaves one token per cell of a still video (9 < its budget,
        # and HoliTom keeps fewer than M then); its inner merge keeps ceil(9 / 2) at K
        "holitom@0.5": (9, 5),
        "holitom@0.25": (9, 5),
        "fastvid@0.25": (n // 4, n // 4),
        "ours_no_merge@0.5": (n // 2, n // 2),
        "ours@0.5": (n // 2, n // 4),
        "ours@0.25": (n // 4, n // 8),
    }
    seen = {(p.row, p.visual_tokens_in, p.visual_tokens_after_merge) for p in result.predictions}
    for row, (entering, after) in expected.items():
        assert (row, entering, after) in seen

    # Report files and their structure (Table S2's columns; one line per sweep row).
    with result.paths["csv"].open(newline="") as f:
        cells = list(csv.reader(f))
    assert cells[0] == ["Method", "Retention Ratio", "VideoMME", "Avg.", "%", "TFLOPs",
                        "TFLOPs (w/ text)"]  # fmt: skip
    assert [c[:2] for c in cells[1:]] == [[e.label, e.retention] for e in entries]
    # The full model is 100% of itself (undefined when a random tiny model scores 0).
    assert cells[1][4] == ("-" if cells[1][3] == "0.0" else "100.0")
    flops = {e.key: float(c[5]) for e, c in zip(entries, cells[1:], strict=True)}
    assert flops["ours@0.25"] < flops["ours_no_merge@0.25"] < flops["full@1"]
    assert flops["fastv@0.25"] < flops["full@1"]
    assert flops["holitom@0.5"] < flops["fastvid@0.5"] < flops["full@1"]
    markdown = result.paths["markdown"].read_text()
    assert "| Ours | 25%/12.5% |" in markdown and "| FastV | 100%/50% |" in markdown
    assert "| HoliTom | 25%/12.5% |" in markdown and "| FastVID | 25% |" in markdown
    assert "pruned from K = 1 on" in markdown  # FastV at its own K, scaled to 4 layers
    assert result.paths["plot"].stat().st_size > 0
    header, *lines = result.paths["predictions"].read_text().splitlines()
    assert json.loads(header)["identity"]["model"] == tiny_llm.model_id
    assert len(lines) == len(result.predictions) == result.asked
    assert {"row", "response", "choice", "correct"} <= set(json.loads(lines[0]))
    configs = unique_configs(entries)
    assert (result.indexed, result.reused) == (3 * len(configs), 0)  # 3 readable videos

    # A second run finds every token set in the store instead of indexing again.
    again = BenchmarkTokenSets(tiny_llm, store, settings)
    uris = sorted({str(i.video) for i in bench.items} - set(result.failed_videos))
    again.prepare(dict.fromkeys(uris, configs))
    assert (again.reused, again.indexed) == (len(uris) * len(configs), 0)


@pytest.mark.slow
def test_eval_command_reuses_the_store(tiny_run, capsys) -> None:
    from tokenreel.cli import main

    root, *_ = tiny_run
    out = root / "cli-report"
    argv = ["eval", str(root / "data"), "--methods", "ours", "--ratios", "0.5", "--limit", "2",
            "--frames", str(FRAMES), "--max-new-tokens", "2", "--model", "tiny-llava-ov",
            "--store", str(root / "store"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert printed[0].split("\t")[:3] == ["Method", "Retention Ratio", "VideoMME"]
    assert printed[1].split("\t")[:2] == ["Ours", "50%/25%"]
    notes = (out / "report.md").read_text()
    assert "VideoMME 2 (skipped records: 0)" in notes
    # both questions are about red.mp4, whose token set the sweep above indexed
    assert "token sets: 1 reused from the store, 0 indexed" in captured.err

    # a Fig. S1 layer schedule for ours, through the CLI
    scheduled = root / "cli-schedule"
    argv[argv.index("--out") + 1] = str(scheduled)
    assert main([*argv, "--merge-schedule", "1:0.5,3:0.5"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[:2] == ["Ours", "50%/25%/12.5%"]
    assert (
        "Ours: text_aware K = 1 keeping 50%, then K = 3 keeping 50%"
        in (scheduled / "report.md").read_text()
    )
    assert main([*argv, "--merge-schedule", "1:0.5,4:0.5"]) == 2  # past the 4 layers
    with pytest.raises(SystemExit):  # not increasing: refused while parsing
        main([*argv, "--merge-schedule", "3:0.5,1:0.5"])

    assert main(["eval", str(root / "data"), "--benchmark", "nope=/x"]) == 2
    assert main(["eval", str(root / "store")]) == 2  # no benchmark folder in there


class Stop(Exception):
    """Stands for the process being killed."""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_report(tiny_run, tiny_llm) -> None:
    from jobs.eval.evaluate import EvalSettings, run_evaluation
    from jobs.eval.run_log import RunMismatch

    root, bench, _, _, store, _ = tiny_run
    entries = build_sweep(
        ["full", "ours"], [0.5], num_layers=tiny_llm.num_layers, base=CompressionConfig(frames=8)
    )
    settings = EvalSettings(batch_size=1, max_new_tokens=3)

    def run(out: Path, progress=lambda message: None):
        return run_evaluation(
            [bench], tiny_llm, entries, settings, store=store, out_dir=out, progress=progress
        )

    whole = run(root / "whole")
    assert whole.asked == 2 * 4

    def killed_after_three(message: str) -> None:
        if "answered 3/" in message:
            raise Stop

    out = root / "resumed"
    with pytest.raises(Stop):
        run(out, killed_after_three)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1 + 3
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"row": "ours@0.5", "bench')  # and killed in the middle of the next write

    resumed = run(out)
    assert (resumed.asked, len(resumed.predictions)) == (2 * 4 - 3, 2 * 4)
    for name in ("report.csv", "tasks.csv", "report.md"):
        assert (out / name).read_text() == (root / "whole" / name).read_text()

    def answers(result):
        return sorted((p.row, p.question_id, p.response, p.choice) for p in result.predictions)

    assert answers(resumed) == answers(whole)

    # Run again: nothing left to ask or to index, the same report.
    again = run(out)
    assert (again.asked, again.indexed, again.reused) == (0, 0, 0)
    assert (out / "report.csv").read_text() == (root / "whole" / "report.csv").read_text()

    # Other settings into the same directory: refused, nothing written.
    before = (out / "predictions.jsonl").read_bytes()
    with pytest.raises(RunMismatch, match="differs in: rows"):
        run_evaluation([bench], tiny_llm, entries[:1], settings, store=store, out_dir=out)
    with pytest.raises(RunMismatch, match="differs in: generation"):
        run_evaluation(
            [bench], tiny_llm, entries, EvalSettings(max_new_tokens=2), store=store, out_dir=out
        )
    assert (out / "predictions.jsonl").read_bytes() == before


@pytest.mark.slow
def test_eval_command_runs_a_preset(tiny_run, capsys) -> None:
    from tokenreel.cli import main

    root, *_ = tiny_run
    assert main(["eval", "--list-presets"]) == 0
    listing = capsys.readouterr().out
    assert "table-s8" in listing and "Table S8: lambda" in listing

    out = root / "preset-s8"
    argv = ["eval", str(root / "data"), "--preset", "table-s8", "--limit", "1", "--frames",
            str(FRAMES), "--max-new-tokens", "2", "--model", "tiny-llava-ov", "--store",
            str(root / "store"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    table = [line.split("\t") for line in captured.out.splitlines()]
    assert table[0][:3] == ["Method", "λ", "VideoMME"]
    assert [row[:2] for row in table[1:7]] == [
        ["Vanilla", "-"], ["Ours", "0"], ["Ours", "0.25"], ["Ours", "0.5"], ["Ours", "0.75"],
        ["Ours", "1"]
    ]  # fmt: skip
    # one question (about red.mp4): the full set is the sweep's above, ours at 2% is new
    assert "token sets: 1 reused from the store, 1 indexed" in captured.err
    report = (out / "report.md").read_text()
    assert report.startswith("# Table S8: lambda") and "preset table-s8:" in report
    assert "K given on 28 layers, scaled to this model's 4" in report

    assert main([*argv, "--lam", "0.3"]) == 2
    assert "--lam do not combine with --preset" in capsys.readouterr().err
    assert main([*argv[:2], "--preset", "table-s9"]) == 2
    assert main([*argv, "--benchmarks", "mvbench"]) == 2  # no MVBench folder under DATA
