"""The evaluation runner: multiple-choice video QA benchmarks, swept over methods x retention.

    benchmarks -> unique videos -> token sets per (outer method, ratio), indexed once and cached
    in the store + catalog -> for each sweep row, every question asked over its token set, with
    the row's in-LLM merge -> letter extracted, scored -> report (jobs/report.py)

Sweep rows (labels as in the paper's Table S2; r = retention ratio, R = the in-LLM keep ratio;
K scaled to the model's depth by `compression.default_merge_layer`, given here for 28 layers):

| method          | outer stage (token set)          | in the LLM (MergeConfig)         | label    |
|-----------------|----------------------------------|----------------------------------|----------|
| full            | all tokens                       | none                             | 100%     |
| ours            | ours at r                        | text_aware at K = 18, keeps R    | r/(rR)   |
|                 |                                  | (or a schedule: one share a step)| r/.../.. |
| ours_no_merge   | ours at r (same sets as "ours")  | none                             | r        |
| ours_no_cluster | retention pool only at r         | none                             | r        |
| fastv           | all tokens (same sets as "full") | fastv at its K = 2, keeps r      | 100%/r   |
| holitom         | HoliTom's outer stage at r       | holitom at K = 18, keeps 50%     | r/(r/2)  |
| fastvid         | FastVID's outer stage at r       | none (FastVID has no inner stage)| r        |
| visionzip       | VisionZip-style at r             | none                             | r        |
| uniform, random | the baseline at r                | none                             | r        |

Decisions the docs leave open:

* "Ours w/o cluster" runs without the in-LLM merge, so it pairs with "Ours (w/o M)" and isolates
  what the cluster refill adds.
* K of every inner method is `compression.default_merge_layer(L, method)`: its published K of
  28 layers at the same relative depth, round(K_28 L / 28) within [1, L - 1] (ours 18, HoliTom
  18, FastV 2 on the 28-layer 7B models; 3, 3 and 1 on a 4-layer test model, which keeps a
  merge layer instead of silently skipping it). FastV runs at its OWN K (its "after layer 2",
  the setting of Table S2's FastV rows), not at ours: at K = 18 a FastV row costs 65-68% of the
  full model's FLOPs (Eq. S3, LLaVA-OV-7B, r = 1%..10%), at K = 2 9-16%.
* HoliTom is its two stages with HoliTom's own defaults: the outer `holitom` token set at r, and
  the inner `holitom` merge at its K keeping 50% (its LLaVA-OV-7B scripts: HOLITOM_k=18,
  HOLITOM_r=0.5), labelled r/(r/2) as in Table S2. `--merge-layer`, `--keep-ratio`, `--lam` and
  `--merge-schedule` set ours only; `--fastv-layer` moves FastV's K.
* A merge schedule (Fig. S1) replaces ours' single step; its label lists the share of the video's
  tokens left after each step (keep ratios compose relatively, see `MergeConfig`).
* Indexing runs in this process, one video at a time (`jobs.index.video.index_video`): decoded
  and encoded ONCE, then compressed under every outer config of the sweep (the vision tower
  dominates the cost). Token sets land in
  the store + catalog like the indexing job's, so a later run (or `tokenreel serve`) reuses them.
* A video that cannot be decoded leaves its questions out of every row (the same questions for
  all methods), counted under "failed" in the notes; an answer with no extractable letter counts
  as wrong ("unparsed" in tasks.csv).
* Questions are asked greedily, at most 16 new tokens (lmms-eval's setting for these tasks),
  `batch_size` at a time (the paper: 1).
* FLOPs: Eq. S3 per question from the n_i the model reports (`Answer.layer_visual_tokens` for the
  paper's convention, `Answer.layer_tokens` with text), averaged over the row's questions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from compression.config import PAPER_LAYERS, CompressionConfig, MergeConfig, default_merge_layer
from compression.flops import prefill_decode_flops
from compression.models import Answer, GenerationConfig, Question, VideoLLM
from compression.token_set import TokenSet
from jobs.eval.benchmarks import LETTERS, SCORED_AS_TASK_MEAN, Benchmark, MultipleChoiceItem
from jobs.eval.choices import build_prompt, extract_choice
from jobs.eval.report import ReportRow, TaskScore

if TYPE_CHECKING:  # storage pulls in pyarrow and SQLAlchemy; only the runner needs them
    from storage import Store, TokenSetLocation

SWEEP_METHODS: tuple[str, ...] = (
    "full",
    "fastv",
    "visionzip",
    "uniform",
    "random",
    "fastvid",
    "holitom",
    "ours_no_cluster",
    "ours_no_merge",
    "ours",
)
METHOD_LABELS: dict[str, str] = {
    "full": "Vanilla",
    "fastv": "FastV",
    "visionzip": "VisionZip-style",
    "uniform": "Uniform",
    "random": "Random",
    "fastvid": "FastVID",
    "holitom": "HoliTom",
    "ours_no_cluster": "Ours (w/o C)",
    "ours_no_merge": "Ours (w/o M)",
    "ours": "Ours",
}
# Outer-stage method of each sweep method (CompressionConfig.method).
_OUTER_METHOD: dict[str, str] = {
    "full": "full",
    "fastv": "full",
    "visionzip": "visionzip",
    "uniform": "uniform",
    "random": "random",
    "fastvid": "fastvid",
    "holitom": "holitom",
    "ours_no_cluster": "ours_no_cluster",
    "ours_no_merge": "ours",
    "ours": "ours",
}
HOLITOM_KEEP_RATIO = 0.5  # HoliTom's HOLITOM_r: half the visual tokens pruned (merged) at K
PAPER_RATIOS: tuple[float, ...] = (0.15, 0.10, 0.05, 0.02, 0.01)
MAX_NEW_TOKENS = 16


def percent(ratio: float) -> str:
    """0.02 -> "2%", 0.075 -> "7.5%", 0.005 -> "0.5%"."""
    return f"{100 * ratio:.6g}%"


@dataclass(frozen=True)
class SweepEntry:
    """One row of the table: which token sets, which in-LLM merge, how it is labelled."""

    method: str
    ratio: float  # r; 1.0 for "full"
    outer: CompressionConfig
    merge: MergeConfig

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]

    @property
    def retention(self) -> str:
        """The share of the video's tokens entering the LLM, then left after each merge step:
        "2%/1%", FastV's "100%/2%", a two-step schedule's "2%/1%/0.5%"."""
        shares = [1.0 if self.outer.method == "full" else self.ratio]
        if self.merge.active:
            for _, keep_ratio in self.merge.schedule:
                shares.append(shares[-1] * keep_ratio)
        return "/".join(percent(share) for share in shares)

    @property
    def key(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def build_sweep(
    methods: Sequence[str],
    ratios: Sequence[float],
    *,
    base: CompressionConfig = CompressionConfig(),
    num_layers: int = PAPER_LAYERS,
    ours: MergeConfig | None = None,
    fastv_layer: int | None = None,
) -> list[SweepEntry]:
    """Rows in Table S2's order: the full model first, then by ratio (high to low), baselines
    before ours. `base` carries tau, cluster ratio, k and seed for every outer config.

    num_layers: the LLM's depth, which scales each inner method's default K. ours: the paper's
    in-LLM merge (a text_aware `MergeConfig`, one step or a schedule; default: K scaled from 18,
    R = 0.5, lambda = 0.5). fastv_layer: FastV's K (default: 2 of 28, scaled). HoliTom's inner
    stage always runs with HoliTom's defaults (K 18 of 28, scaled; R = 0.5)."""
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown sweep methods {unknown}; choose from {SWEEP_METHODS}")
    if not ratios and any(m != "full" for m in methods):
        raise ValueError("give at least one retention ratio")
    if ours is None:
        ours = MergeConfig(layer=default_merge_layer(num_layers))
    if ours.method != "text_aware":
        raise ValueError(f"ours runs the text_aware merge, got {ours.method!r}")
    if fastv_layer is None:
        fastv_layer = default_merge_layer(num_layers, "fastv")
    holitom_layer = default_merge_layer(num_layers, "holitom")
    for name, merge in (("ours", ours), ("fastv", MergeConfig("fastv", fastv_layer))):
        layers = [layer for layer, _ in merge.schedule]
        if layers[-1] >= num_layers:
            raise ValueError(
                f"{name}'s merge layers {layers} must lie below the model's {num_layers} layers"
            )
    full_outer = CompressionConfig(**{**base.to_dict(), "method": "full", "retention_ratio": 1.0})
    entries = []
    if "full" in methods:
        entries.append(SweepEntry("full", 1.0, full_outer, MergeConfig(method="none")))
    for ratio in sorted(set(ratios), reverse=True):
        for method in SWEEP_METHODS:
            if method == "full" or method not in methods:
                continue
            if method == "fastv":
                merge = MergeConfig(method="fastv", layer=fastv_layer, keep_ratio=ratio)
                entries.append(SweepEntry(method, ratio, full_outer, merge))
                continue
            outer = CompressionConfig(
                **{**base.to_dict(), "method": _OUTER_METHOD[method], "retention_ratio": ratio}
            )
            if method == "ours":
                merge = ours
            elif method == "holitom":
                merge = MergeConfig("holitom", holitom_layer, HOLITOM_KEEP_RATIO)
            else:
                merge = MergeConfig(method="none")
            entries.append(SweepEntry(method, ratio, outer, merge))
    return entries


def _describe_merge(merge: MergeConfig) -> str:
    """The merge's steps in words, e.g. "K = 8 keeping 50%, then K = 16 keeping 50%"."""
    steps = ", then ".join(f"K = {k} keeping {percent(r)}" for k, r in merge.schedule)
    return steps + (f", lambda = {merge.lam:g}" if merge.method == "text_aware" else "")


@dataclass
class Prediction:
    """One question answered under one sweep row."""

    row: str
    benchmark: str
    task: str
    question_id: str
    video: str
    answer: str  # the right letter
    response: str
    choice: str | None  # the extracted letter; None when none could be read
    visual_tokens_in: int
    visual_tokens_after_merge: int
    flops: float  # Eq. S3, visual tokens only (the paper's convention)
    flops_with_text: float

    @property
    def correct(self) -> bool:
        return self.choice == self.answer


def predictions_for(
    entry: SweepEntry,
    items: Sequence[MultipleChoiceItem],
    answers: Sequence[Answer],
    *,
    hidden: int,
    ffn: int,
) -> list[Prediction]:
    """Score the answers to `items` under `entry`."""
    out = []
    for item, answer in zip(items, answers, strict=True):
        choice = extract_choice(answer.text, item.options)
        out.append(
            Prediction(
                row=entry.key,
                benchmark=item.benchmark,
                task=item.task,
                question_id=item.question_id,
                video=str(item.video),
                answer=item.answer_letter,
                response=answer.text,
                choice=None if choice is None else LETTERS[choice],
                visual_tokens_in=answer.visual_tokens_in,
                visual_tokens_after_merge=answer.visual_tokens_after_merge,
                flops=prefill_decode_flops(answer.layer_visual_tokens, hidden, ffn),
                flops_with_text=prefill_decode_flops(answer.layer_tokens, hidden, ffn),
            )
        )
    return out


def summarise(
    entries: Sequence[SweepEntry],
    benchmarks: Sequence[Benchmark],
    predictions: Sequence[Prediction],
) -> tuple[list[ReportRow], list[TaskScore]]:
    """Per row: the score of each benchmark (MLVU: mean over its tasks), FLOPs; per task too."""
    by_row: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_row[p.row].append(p)
    rows, tasks = [], []
    for entry in entries:
        row_preds = by_row.get(entry.key, [])
        scores: dict[str, float | None] = {}
        for bench in benchmarks:
            bench_tasks = _task_scores(entry, bench, row_preds)
            tasks += bench_tasks
            answered = [t for t in bench_tasks if t.questions]
            if not answered:
                scores[bench.display_name] = None
            elif bench.name in SCORED_AS_TASK_MEAN:
                scores[bench.display_name] = sum(t.accuracy for t in answered) / len(answered)
            else:
                n = sum(t.questions for t in answered)
                scores[bench.display_name] = 100.0 * sum(t.correct for t in answered) / n
        rows.append(
            ReportRow(
                method=entry.method,
                label=entry.label,
                retention=entry.retention,
                ratio=entry.ratio,
                scores=scores,
                tflops=_mean([p.flops / 1e12 for p in row_preds]),
                tflops_with_text=_mean([p.flops_with_text / 1e12 for p in row_preds]),
            )
        )
    return rows, tasks


def _task_scores(
    entry: SweepEntry, bench: Benchmark, predictions: Sequence[Prediction]
) -> list[TaskScore]:
    grouped: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        if p.benchmark == bench.name:
            grouped[p.task].append(p)
    return [
        TaskScore(
            label=entry.label,
            retention=entry.retention,
            benchmark=bench.display_name,
            task=task,
            questions=len(preds),
            correct=sum(p.correct for p in preds),
            unparsed=sum(p.choice is None for p in preds),
        )
        for task, preds in sorted(grouped.items())
    ]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


# -- running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """How to sample, index and ask (the sweep itself is a list of `SweepEntry`)."""

    frames: int = 32
    frame_size: int | None = None
    decode_timeout_s: float = 300.0
    batch_size: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


@dataclass
class EvalResult:
    rows: list[ReportRow]
    tasks: list[TaskScore]
    predictions: list[Prediction]
    failed_videos: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


def _batches(items: Sequence[MultipleChoiceItem], size: int) -> list[list[MultipleChoiceItem]]:
    """Questions grouped by video (each token set is loaded once per row), `size` at a time."""
    ordered = sorted(items, key=lambda i: str(i.video))
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def ask_sweep(
    llm: VideoLLM,
    entries: Sequence[SweepEntry],
    items: Sequence[MultipleChoiceItem],
    token_set_for: Callable[[MultipleChoiceItem, CompressionConfig], TokenSet],
    settings: EvalSettings,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Prediction]:
    """Every question under every sweep row; `token_set_for(item, outer_config)` gives the
    question's token set."""
    generation = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=0.0)
    predictions: list[Prediction] = []
    for n, entry in enumerate(entries, start=1):
        progress(f"[{n}/{len(entries)}] {entry.label} {entry.retention}: {len(items)} questions")
        for batch in _batches(items, settings.batch_size):
            questions = [
                Question(token_set_for(i, entry.outer), build_prompt(i.question, i.options))
                for i in batch
            ]
            answers = llm.answer(questions, entry.merge, generation)
            predictions += predictions_for(
                entry, batch, answers, hidden=llm.hidden_size, ffn=llm.intermediate_size
            )
    return predictions


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """One JSON object per line: what was asked, answered, read and scored."""
    with path.open("w", encoding="utf-8") as f:
        for p in predictions:
            record = {**p.__dict__, "correct": p.correct}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


class BenchmarkTokenSets:
    """The token sets of the benchmark videos under each outer config of the sweep.

    `prepare` finds them in the catalog or indexes the missing ones in this process (each video
    decoded and encoded once, then compressed under every missing config, written to the store
    in one file and recorded in the catalog like the indexing job's). Every outer config is
    keyed with the run's sampling (frames, frame size), so a token set sampled differently is
    never reused. `get` loads one back (a small LRU keeps the sets of the current batch).
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
        uris: Sequence[str],
        configs: Sequence[CompressionConfig],
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        configs = [self._sampled(c) for c in configs]
        for n, uri in enumerate(uris, start=1):
            missing = [c for c in configs if not self._reuse(uri, c)]
            if missing:
                progress(f"indexing {n}/{len(uris)}: {uri} under {len(missing)} configs")
                self._index(uri, missing)

    def get(self, uri: str, config: CompressionConfig) -> TokenSet:
        from storage.token_files import read_token_set

        key = (uri, self._sampled(config).stable_hash())
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

    def _reuse(self, uri: str, config: CompressionConfig) -> bool:
        from storage.ids import video_id_for
        from storage.token_files import TokenSetReadError, read_token_set

        config_hash = config.stable_hash()
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

    def _sampled(self, config: CompressionConfig) -> CompressionConfig:
        return dataclasses.replace(config, frames=self.settings.frames, frame_size=self.frame_size)

    def _index(self, uri: str, configs: Sequence[CompressionConfig]) -> None:
        from jobs.index.decode import DecodeError, DecodeSettings
        from jobs.index.video import index_video

        started = time.perf_counter()
        decode = DecodeSettings(
            num_frames=self.settings.frames,
            frame_size=self.frame_size,
            timeout_s=self.settings.decode_timeout_s,
        )
        # One unreadable video must not end a benchmark run: it is recorded and left out.
        try:
            token_sets = index_video(self.llm, uri, decode, configs)
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            self.failed[uri] = str(exc)
            for config in configs:
                self.store.catalog.record_failed(
                    uri, self.llm.model_id, config.stable_hash(), str(exc),
                    duration_s=time.perf_counter() - started,
                )  # fmt: skip
            return
        duration_s = time.perf_counter() - started
        locations = self.store.save(token_sets, durations_s=[duration_s] * len(token_sets))
        for config, location in zip(configs, locations, strict=True):
            self._locations[(uri, config.stable_hash())] = location
        self.indexed += len(configs)


def unique_configs(entries: Sequence[SweepEntry]) -> list[CompressionConfig]:
    """The outer configs of the sweep, each once (full and FastV, ours and w/o M share)."""
    return list({e.outer.stable_hash(): e.outer for e in entries}.values())


def run_evaluation(
    benchmarks: Sequence[Benchmark],
    llm: VideoLLM,
    entries: Sequence[SweepEntry],
    settings: EvalSettings,
    *,
    store: Store,
    out_dir: str | Path,
    progress: Callable[[str], None] = lambda message: None,
) -> EvalResult:
    """Index what is missing into `store` (a `storage.Store`), ask every question under every
    row, write the report into `out_dir`."""
    from jobs.eval.report import write_report
    from jobs.index.sources import normalize_uri

    items = [item for bench in benchmarks for item in bench.items]
    if not items:
        raise ValueError("the benchmarks hold no question with a video to evaluate")
    uri_of = {item.video: normalize_uri(str(item.video)) for item in items}
    token_sets = BenchmarkTokenSets(llm, store, settings)
    token_sets.prepare(list(dict.fromkeys(uri_of.values())), unique_configs(entries), progress)
    usable = [item for item in items if uri_of[item.video] not in token_sets.failed]
    predictions = ask_sweep(
        llm,
        entries,
        usable,
        lambda item, config: token_sets.get(uri_of[item.video], config),
        settings,
        progress,
    )
    rows, tasks = summarise(entries, benchmarks, predictions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.jsonl", predictions)
    paths = write_report(
        out,
        rows,
        [b.display_name for b in benchmarks],
        tasks,
        title=f"tokenreel eval: {llm.model_id}",
        notes=_report_notes(benchmarks, entries, settings, token_sets, usable),
    )
    paths["predictions"] = out / "predictions.jsonl"
    return EvalResult(rows, tasks, predictions, dict(token_sets.failed), paths)


def _report_notes(
    benchmarks: Sequence[Benchmark],
    entries: Sequence[SweepEntry],
    settings: EvalSettings,
    token_sets: BenchmarkTokenSets,
    usable: Sequence[MultipleChoiceItem],
) -> list[str]:
    merges = {e.label: e.merge for e in entries if e.merge.active and e.method != "fastv"}
    notes = [
        f"{settings.frames} frames per video; greedy answers of at most "
        f"{settings.max_new_tokens} tokens; batch size {settings.batch_size}",
        "questions per benchmark: "
        + ", ".join(
            f"{b.display_name} {sum(i.benchmark == b.name for i in usable)}"
            f" (skipped records: {len(b.skipped)})"
            for b in benchmarks
        ),
        f"token sets: {token_sets.reused} reused from the store, {token_sets.indexed} indexed; "
        f"videos that failed to decode: {len(token_sets.failed)}",
        "FLOPs: Eq. S3 with 100 generated tokens, mean per question; TFLOPs counts visual "
        "tokens only (the paper's convention), the next column the text tokens too",
    ]
    notes += [f"in-LLM {label}: {m.method} {_describe_merge(m)}" for label, m in merges.items()]
    fastv = next((e.merge for e in entries if e.method == "fastv"), None)
    if fastv is not None:
        notes.append(
            f"in-LLM FastV: the last token's attention inside layer {fastv.layer - 1} ranks the "
            f"visual tokens, pruned from K = {fastv.layer} on (keeping r of them)"
        )
    return notes
