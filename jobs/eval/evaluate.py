"""The evaluation runner: video QA benchmarks, swept over the rows of `jobs.eval.sweep`.

    benchmarks -> unique videos -> token sets per outer config, indexed once and cached in the
    store + catalog -> for each sweep row, every question asked over its token set, with the
    row's in-LLM merge (lmms-eval's prompts, `jobs.eval.prompts`) -> letter extracted, or the
    free-text answer judged (`jobs.eval.judge`) -> scored -> report (`jobs.eval.report`)

Resumable and incremental (`jobs.eval.run_log`): every batch of answers is appended to
``predictions.jsonl`` as soon as it is made, and every verdict to ``judgements.jsonl``. Both
start with the run's identity; a rerun with the same settings skips the (row, question) pairs
already answered (and judged) and writes the same report as an uninterrupted run; a rerun with
other settings into the same directory is refused (`RunMismatch`), never mixed. The identity
holds the model, its system turn, the frame size, each row's outer config and merge, each
benchmark's generation settings and a hash of the questions (benchmark, id, video path relative
to the benchmark folder, the exact prompt, the reference answer). It leaves out what does not
change an answer: the batch size (questions are batched the same way on every run: by
benchmark, then video, `batch_size` at a time, so a resumed run asks the same batches), the
decode time limit, the store, the judge's URL.

Decisions the docs leave open:

* Indexing runs in this process, one video at a time (`jobs.index.video.index_video`): decoded
  and encoded ONCE per frame count, then compressed under every missing outer config (the
  vision tower dominates the cost). Token sets land in the store + catalog like the indexing
  job's, so a later run (or `tokenreel serve`) reuses them. Only the token sets of questions
  still to be answered are prepared (a finished run's rerun indexes nothing).
* A video that cannot be decoded leaves its questions out of every row (the same questions for
  all methods), counted under "failed" in the notes; an answer with no extractable letter counts
  as wrong ("unparsed" in tasks.csv).
* Questions are asked greedily, with lmms-eval's length per benchmark unless `max_new_tokens`
  is set, `batch_size` at a time (the paper: 1).
* FLOPs: Eq. S3 per question from the n_i the model reports (`Answer.layer_visual_tokens` for the
  paper's convention, `Answer.layer_tokens` with text), averaged over the row's questions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compression.config import CompressionConfig
from compression.flops import prefill_decode_flops
from compression.models import Answer, Question, VideoLLM
from compression.token_set import TokenSet
from jobs.eval.benchmarks import (
    LETTERS,
    SCORED_AS_TASK_MEAN,
    Benchmark,
    Item,
    MultipleChoiceItem,
)
from jobs.eval.choices import extract_choice
from jobs.eval.judge import Judge, Judgement
from jobs.eval.prompts import generation_for, question_prompt, system_prompt
from jobs.eval.report import ReportRow, TaskScore, score_columns
from jobs.eval.run_log import RunLog
from jobs.eval.sweep import SweepEntry, check_unique_keys, describe_merge

if TYPE_CHECKING:  # storage pulls in pyarrow and SQLAlchemy; only the runner needs them
    from storage import Store, TokenSetLocation

PREDICTIONS_FILE = "predictions.jsonl"
JUDGEMENTS_FILE = "judgements.jsonl"


@dataclass
class Prediction:
    """One question answered under one sweep row.

    answer: the right letter (multiple choice) or the reference answer (open-ended).
    choice: the letter read from the response; None when none could be read, and for
        open-ended questions (their verdict is a `Judgement`).
    """

    row: str
    benchmark: str
    task: str
    question_id: str
    video: str
    answer: str
    response: str
    choice: str | None
    visual_tokens_in: int
    visual_tokens_after_merge: int
    flops: float  # Eq. S3, visual tokens only (the paper's convention)
    flops_with_text: float
    open_ended: bool = False

    @property
    def correct(self) -> bool | None:
        return None if self.open_ended else self.choice == self.answer

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.row, self.benchmark, self.question_id)

    def to_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "correct": self.correct}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Prediction:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def predictions_for(
    entry: SweepEntry,
    items: Sequence[Item],
    answers: Sequence[Answer],
    *,
    hidden: int,
    ffn: int,
) -> list[Prediction]:
    """Score the answers to `items` under `entry` (the letter of a multiple-choice answer)."""
    out = []
    for item, answer in zip(items, answers, strict=True):
        choice = None
        if isinstance(item, MultipleChoiceItem):
            index = extract_choice(answer.text, item.options)
            choice = None if index is None else LETTERS[index]
        out.append(
            Prediction(
                row=entry.key,
                benchmark=item.benchmark,
                task=item.task,
                question_id=item.question_id,
                video=str(item.video),
                answer=item.reference,
                response=answer.text,
                choice=choice,
                visual_tokens_in=answer.visual_tokens_in,
                visual_tokens_after_merge=answer.visual_tokens_after_merge,
                flops=prefill_decode_flops(answer.layer_visual_tokens, hidden, ffn),
                flops_with_text=prefill_decode_flops(answer.layer_tokens, hidden, ffn),
                open_ended=not isinstance(item, MultipleChoiceItem),
            )
        )
    return out


def summarise(
    entries: Sequence[SweepEntry],
    benchmarks: Sequence[Benchmark],
    predictions: Sequence[Prediction],
    judgements: Mapping[tuple[str, str, str], Judgement] | None = None,
) -> tuple[list[ReportRow], list[TaskScore]]:
    """Per row: the score of each benchmark (MLVU: mean over its tasks; an open-ended one: the
    judge's accuracy and mean score), FLOPs; per task too. An open-ended answer without a
    verdict is left out of its benchmark's scores."""
    judgements = judgements or {}
    by_row: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_row[p.row].append(p)
    rows, tasks = [], []
    for entry in entries:
        row_preds = by_row.get(entry.key, [])
        scores: dict[str, float | None] = {}
        for bench in benchmarks:
            bench_tasks = _task_scores(entry, bench, row_preds, judgements)
            tasks += bench_tasks
            answered = [t for t in bench_tasks if t.questions]
            n = sum(t.questions for t in answered)
            columns = score_columns(bench.display_name, bench.open_ended)
            if not answered:
                scores.update(dict.fromkeys(columns))
            elif bench.open_ended:
                accuracy, score = columns
                scores[accuracy] = 100.0 * sum(t.correct for t in answered) / n
                scores[score] = math.fsum(t.score_total or 0.0 for t in answered) / n
            elif bench.name in SCORED_AS_TASK_MEAN:
                scores[columns[0]] = sum(t.accuracy for t in answered) / len(answered)
            else:
                scores[columns[0]] = 100.0 * sum(t.correct for t in answered) / n
        rows.append(
            ReportRow(
                method=entry.method,
                label=entry.label,
                retention=entry.retention,
                ratio=entry.ratio,
                scores=scores,
                tflops=_mean([p.flops / 1e12 for p in row_preds]),
                tflops_with_text=_mean([p.flops_with_text / 1e12 for p in row_preds]),
                setting=entry.setting,
                x=entry.x,
                series=entry.series,
            )
        )
    return rows, tasks


def _task_scores(
    entry: SweepEntry,
    bench: Benchmark,
    predictions: Sequence[Prediction],
    judgements: Mapping[tuple[str, str, str], Judgement],
) -> list[TaskScore]:
    grouped: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        if p.benchmark == bench.name:
            grouped[p.task].append(p)
    scores = []
    for task, preds in sorted(grouped.items()):
        if bench.open_ended:
            verdicts = [judgements[p.key] for p in preds if p.key in judgements]
            scores.append(
                TaskScore(
                    label=entry.label,
                    setting=entry.setting or entry.retention,
                    benchmark=bench.display_name,
                    task=task,
                    questions=len(verdicts),
                    correct=sum(v.correct for v in verdicts),
                    unparsed=sum(not v.parsed for v in verdicts),
                    score_total=float(sum(v.score for v in verdicts)),
                )
            )
            continue
        scores.append(
            TaskScore(
                label=entry.label,
                setting=entry.setting or entry.retention,
                benchmark=bench.display_name,
                task=task,
                questions=len(preds),
                correct=sum(bool(p.correct) for p in preds),
                unparsed=sum(p.choice is None for p in preds),
            )
        )
    return scores


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


# -- running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """How to index and ask (the sweep itself is a list of `SweepEntry`; each row's outer
    config carries its frame count).

    frame_size: short side of decoded frames (None: the model's input size when fixed).
    max_new_tokens: one length for every benchmark; None takes lmms-eval's per benchmark.
    """

    frame_size: int | None = None
    decode_timeout_s: float = 300.0
    batch_size: int = 1
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.max_new_tokens is not None and (
            not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens!r}")


@dataclass
class EvalResult:
    rows: list[ReportRow]
    tasks: list[TaskScore]
    predictions: list[Prediction]
    failed_videos: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    judgements: dict[tuple[str, str, str], Judgement] = field(default_factory=dict)
    # what this invocation did (the rest came from the logs and the store)
    asked: int = 0
    judged: int = 0
    indexed: int = 0
    reused: int = 0


def question_batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Questions grouped by benchmark (one generation setting per batch), then by video (each
    token set is loaded once per row), `size` at a time: the same batches on every run."""
    order = {name: i for i, name in enumerate(dict.fromkeys(i.benchmark for i in items))}
    ordered = sorted(items, key=lambda i: (order[i.benchmark], str(i.video), i.question_id))
    batches: list[list[Item]] = []
    for item in ordered:
        last = batches[-1] if batches else None
        if last and len(last) < size and last[0].benchmark == item.benchmark:
            last.append(item)
        else:
            batches.append([item])
    return batches


def ask_sweep(
    llm: VideoLLM,
    entries: Sequence[SweepEntry],
    items: Sequence[Item],
    token_set_for: Callable[[Item, CompressionConfig], TokenSet],
    settings: EvalSettings,
    progress: Callable[[str], None] = lambda message: None,
    *,
    done: Container[tuple[str, str, str]] = frozenset(),
    record: Callable[[list[Prediction]], None] = lambda predictions: None,
) -> list[Prediction]:
    """Every question not in `done` (row key, benchmark, question id) under every sweep row;
    `token_set_for(item, outer_config)` gives the question's token set. Each batch's
    predictions go to `record` as soon as they exist, then `progress` hears of them."""
    system = system_prompt(llm.family)
    predictions: list[Prediction] = []
    batches = question_batches(items, settings.batch_size)
    for n, entry in enumerate(entries, start=1):
        todo = [
            [i for i in b if (entry.key, i.benchmark, i.question_id) not in done] for b in batches
        ]
        todo = [b for b in todo if b]
        total = sum(len(b) for b in todo)
        name = f"{entry.label} {entry.setting or entry.retention}"
        progress(f"[{n}/{len(entries)}] {name}: {total} questions")
        answered = 0
        for batch in todo:
            generation = generation_for(batch[0].benchmark, settings.max_new_tokens)
            questions = [
                Question(token_set_for(i, entry.outer), question_prompt(i), system) for i in batch
            ]
            answers = llm.answer(questions, entry.merge, generation)
            new = predictions_for(
                entry, batch, answers, hidden=llm.hidden_size, ffn=llm.intermediate_size
            )
            record(new)
            predictions += new
            answered += len(new)
            progress(f"[{n}/{len(entries)}] answered {answered}/{total}")
    return predictions


class BenchmarkTokenSets:
    """The token sets of the benchmark videos under each outer config of the sweep.

    `prepare` finds them in the catalog or indexes the missing ones in this process (each video
    decoded and encoded once per frame count, then compressed under every missing config,
    written to the store and recorded in the catalog like the indexing job's). Each config keeps
    its row's frame count and gets the run's resolved frame size, so a token set sampled
    differently is never reused. `get` loads one back (a small LRU keeps the sets of the
    current batch). `indexed` and `reused` count token sets.
    """

    def __init__(self, llm: VideoLLM, store: Store, settings: EvalSettings) -> None:
        from compression.models import model_frame_size

        self.llm = llm
        self.store = store
        self.settings = settings
        # Resolved as the indexing job does, so "the model's size" and that size named
        # explicitly key the same token sets.
        self.frame_size = (
            settings.frame_size if settings.frame_size else model_frame_size(llm.model_id)
        )
        self.failed: dict[str, str] = {}
        self.indexed = 0
        self.reused = 0
        self._locations: dict[tuple[str, str], TokenSetLocation] = {}
        self._loaded: OrderedDict[tuple[str, str], TokenSet] = OrderedDict()

    def prepare(
        self,
        needs: Mapping[str, Sequence[CompressionConfig]],
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        """Make the token sets of each video (uri) under its configs available."""
        for n, (uri, configs) in enumerate(needs.items(), start=1):
            sampled = list({c.stable_hash(): c for c in map(self.sampled, configs)}.values())
            missing = [c for c in sampled if not self._reuse(uri, c)]
            if missing:
                progress(f"indexing {n}/{len(needs)}: {uri} under {len(missing)} configs")
                self._index(uri, missing)

    def get(self, uri: str, config: CompressionConfig) -> TokenSet:
        from storage.token_files import read_token_set

        key = (uri, self.sampled(config).stable_hash())
        if key not in self._loaded:
            self._loaded[key] = read_token_set(
                self._locations[key],
                expected_config_hash=key[1],
                expected_model_id=self.llm.model_id,
            )
            while len(self._loaded) > self.settings.batch_size + 1:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    def sampled(self, config: CompressionConfig) -> CompressionConfig:
        """The config as stored: the run's resolved frame size filled in."""
        return dataclasses.replace(config, frame_size=self.frame_size)

    def _reuse(self, uri: str, config: CompressionConfig) -> bool:
        from storage.ids import video_id_for
        from storage.token_files import TokenSetReadError, read_token_set

        config_hash = config.stable_hash()
        if (uri, config_hash) in self._locations:
            return True
        location = self.store.catalog.locate(video_id_for(uri), self.llm.model_id, config_hash)
        if location is None:
            return False
        try:  # a catalog row is only worth reusing if its file still reads back cleanly
            read_token_set(
                location, expected_config_hash=config_hash, expected_model_id=self.llm.model_id
            )
        except TokenSetReadError:
            return False  # a lost or damaged file: index again
        self._locations[(uri, config_hash)] = location
        self.reused += 1
        return True

    def _index(self, uri: str, configs: Sequence[CompressionConfig]) -> None:
        from jobs.index.decode import DecodeError, DecodeSettings
        from jobs.index.video import index_video

        by_frames: dict[int, list[CompressionConfig]] = defaultdict(list)
        for config in configs:
            by_frames[config.frames].append(config)
        for frames, group in sorted(by_frames.items()):
            started = time.perf_counter()
            decode = DecodeSettings(
                num_frames=frames,
                frame_size=self.frame_size,
                timeout_s=self.settings.decode_timeout_s,
            )
            # One unreadable video must not end a benchmark run: it is recorded and left out.
            try:
                token_sets = index_video(self.llm, uri, decode, group)
            except (DecodeError, OSError, ValueError, RuntimeError) as exc:
                self.failed[uri] = str(exc)
                for config in group:
                    self.store.catalog.record_failed(
                        uri, self.llm.model_id, config.stable_hash(), str(exc),
                        duration_s=time.perf_counter() - started,
                    )  # fmt: skip
                return
            duration_s = time.perf_counter() - started
            locations = self.store.save(token_sets, durations_s=[duration_s] * len(token_sets))
            for config, location in zip(group, locations, strict=True):
                self._locations[(uri, config.stable_hash())] = location
            self.indexed += len(group)


def run_identity(
    llm: VideoLLM,
    entries: Sequence[SweepEntry],
    benchmarks: Sequence[Benchmark],
    settings: EvalSettings,
    frame_size: int | None,
) -> dict[str, Any]:
    """What decides a run's answers (see the module docstring)."""
    questions = hashlib.sha256()
    for bench in benchmarks:
        for item in bench.items:
            video = os.path.relpath(item.video, bench.root)
            fields = [
                item.benchmark,
                item.question_id,
                video,
                question_prompt(item),
                item.reference,
            ]
            questions.update(json.dumps(fields, ensure_ascii=True).encode() + b"\n")
    generation = {}
    for bench in benchmarks:
        config = generation_for(bench.name, settings.max_new_tokens)
        generation[bench.name] = {"max_new_tokens": config.max_new_tokens, "stop": config.stop}
    return {
        "model": llm.model_id,
        "system": system_prompt(llm.family),
        "frame_size": frame_size,
        "generation": generation,
        "rows": [entry.identity() for entry in entries],
        "questions": questions.hexdigest()[:16],
        "question_count": sum(len(b.items) for b in benchmarks),
    }


def run_evaluation(
    benchmarks: Sequence[Benchmark],
    llm: VideoLLM,
    entries: Sequence[SweepEntry],
    settings: EvalSettings,
    *,
    store: Store,
    out_dir: str | Path,
    progress: Callable[[str], None] = lambda message: None,
    judge: Judge | None = None,
    title: str | None = None,
    setting_header: str = "Retention Ratio",
    plot_x_label: str | None = None,
    notes: Sequence[str] = (),
) -> EvalResult:
    """Index what is missing into `store` (a `storage.Store`), ask every question not yet
    answered in `out_dir`'s log under every row, judge the open-ended answers not yet judged
    (with `judge`), write the report into `out_dir`. `title`, `setting_header` (the table's
    second column), `plot_x_label` and `notes` shape the report (a preset sets them)."""
    from jobs.eval.report import write_report
    from jobs.index.sources import normalize_uri

    check_unique_keys(entries)
    items = [item for bench in benchmarks for item in bench.items]
    if not items:
        raise ValueError("the benchmarks hold no question with a video to evaluate")
    if judge is None and any(b.open_ended and b.items for b in benchmarks):
        raise ValueError("open-ended benchmarks (ActivityNet-QA) need a judge to be scored")
    out = Path(out_dir)
    token_sets = BenchmarkTokenSets(llm, store, settings)
    identity = run_identity(llm, entries, benchmarks, settings, token_sets.frame_size)
    log = RunLog(out / PREDICTIONS_FILE, identity)
    predictions = {p.key: p for p in map(Prediction.from_record, log.open())}
    judge_log = None
    judgements: dict[tuple[str, str, str], Judgement] = {}
    if judge is not None:
        judge_log = RunLog(out / JUDGEMENTS_FILE, {"run": log.run, **judge.settings.identity()})
        for record in judge_log.open():
            key = (record["row"], record["benchmark"], record["question_id"])
            judgements.setdefault(key, Judgement(**{k: record[k] for k in _VERDICT_FIELDS}))
    resumed = len(predictions)

    uri_of = {item.video: normalize_uri(str(item.video)) for item in items}
    needs: dict[str, dict[str, CompressionConfig]] = defaultdict(dict)
    for entry in entries:
        for item in items:
            if (entry.key, item.benchmark, item.question_id) not in predictions:
                needs[uri_of[item.video]][entry.outer.stable_hash()] = entry.outer
    token_sets.prepare({uri: list(c.values()) for uri, c in needs.items()}, progress)
    usable = [item for item in items if uri_of[item.video] not in token_sets.failed]
    asked = ask_sweep(
        llm,
        entries,
        usable,
        lambda item, config: token_sets.get(uri_of[item.video], config),
        settings,
        progress,
        done=set(predictions),
        record=lambda new: log.append(p.to_record() for p in new),
    )
    predictions.update((p.key, p) for p in asked)

    judged = 0
    if judge is not None and judge_log is not None:
        judged = _judge_answers(judge, judge_log, items, predictions, judgements, progress)

    rows, tasks = summarise(entries, benchmarks, list(predictions.values()), judgements)
    paths = write_report(
        out,
        rows,
        [c for b in benchmarks for c in score_columns(b.display_name, b.open_ended)],
        tasks,
        title=title or f"tokenreel eval: {llm.model_id}",
        notes=[
            *notes,
            *_report_notes(benchmarks, entries, settings, token_sets, usable, judge, judgements),
        ],
        setting_header=setting_header,
        plot_x_label=plot_x_label,
        unaveraged=[b.display_name + " Score" for b in benchmarks if b.open_ended],
    )
    paths["predictions"] = log.path
    if judge_log is not None:
        paths["judgements"] = judge_log.path
    progress(
        f"{len(asked)} answers made now, {resumed} resumed from {log.path}"
        + (f"; {judged} answers judged now" if judge is not None else "")
        + f"; token sets: {token_sets.reused} reused from the store, {token_sets.indexed} indexed"
    )
    return EvalResult(
        rows,
        tasks,
        list(predictions.values()),
        dict(token_sets.failed),
        paths,
        judgements,
        asked=len(asked),
        judged=judged,
        indexed=token_sets.indexed,
        reused=token_sets.reused,
    )


_VERDICT_FIELDS = ("correct", "score", "parsed", "reply")


def _judge_answers(
    judge: Judge,
    judge_log: RunLog,
    items: Sequence[Item],
    predictions: Mapping[tuple[str, str, str], Prediction],
    judgements: dict[tuple[str, str, str], Judgement],
    progress: Callable[[str], None],
) -> int:
    """Judge every open-ended answer without a verdict; each verdict is logged as it arrives."""
    questions = {(i.benchmark, i.question_id): i.question for i in items}
    requests = [
        (key, questions[key[1:]], p.answer, p.response)
        for key, p in predictions.items()
        if p.open_ended and key not in judgements
    ]
    if not requests:
        return 0
    progress(f"judging {len(requests)} answers with {judge.settings.model}")

    def keep(key: Any, verdict: Judgement) -> None:
        judgements[key] = verdict
        row, benchmark, question_id = key
        fields = {k: getattr(verdict, k) for k in _VERDICT_FIELDS}
        judge_log.append(
            [{"row": row, "benchmark": benchmark, "question_id": question_id, **fields}]
        )

    judge.judge_many(requests, keep)
    return len(requests)


def _report_notes(
    benchmarks: Sequence[Benchmark],
    entries: Sequence[SweepEntry],
    settings: EvalSettings,
    token_sets: BenchmarkTokenSets,
    usable: Sequence[Item],
    judge: Judge | None,
    judgements: Mapping[tuple[str, str, str], Judgement],
) -> list[str]:
    merges = {e.label: e.merge for e in entries if e.merge.active and e.method != "fastv"}
    frames = sorted({e.outer.frames for e in entries})
    lengths = (
        f"at most {settings.max_new_tokens} tokens"
        if settings.max_new_tokens
        else "lmms-eval's length per benchmark"
    )
    notes = [
        f"{'/'.join(map(str, frames))} frames per video; greedy answers of {lengths}; batch "
        f"size {settings.batch_size}; prompts and system turn as lmms-eval builds them",
        "questions per benchmark: "
        + ", ".join(
            f"{b.display_name} {sum(i.benchmark == b.name for i in usable)}"
            f" (skipped records: {len(b.skipped)})"
            for b in benchmarks
        ),
        f"videos that failed to decode: {len(token_sets.failed)}",
        "FLOPs: Eq. S3 with 100 generated tokens, mean per question; TFLOPs counts visual "
        "tokens only (the paper's convention), the next column the text tokens too",
    ]
    notes += [f"in-LLM {label}: {m.method} {describe_merge(m)}" for label, m in merges.items()]
    fastv = next((e.merge for e in entries if e.method == "fastv"), None)
    if fastv is not None:
        notes.append(
            f"in-LLM FastV: the last token's attention inside layer {fastv.layer - 1} ranks the "
            f"visual tokens, pruned from K = {fastv.layer} on (keeping r of them)"
        )
    if judge is not None and any(b.open_ended for b in benchmarks):
        unparsed = sum(not j.parsed for j in judgements.values())
        notes.append(
            f"open-ended answers judged by {judge.settings.model} (lmms-eval's ActivityNet-QA "
            f"judge prompt); Accuracy = share judged 'yes', Score = mean 0-5 score; "
            f"unparsed judge replies (counted as 'no', 0): {unparsed}"
        )
    return notes
