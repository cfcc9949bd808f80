"""Video QA benchmarks, read from their published annotation layouts.

Each reader turns one benchmark directory (annotations with the videos beside them, as the
benchmark's authors or lmms-eval's Hugging Face copies publish it) into items: for the
multiple-choice benchmarks a `MultipleChoiceItem` (a question, its options as plain text and as
published, the index of the right one, the video file); for the open-ended ActivityNet-QA an
`OpenEndedItem` (a question, the reference answer, the video file), scored by a judge model
(`jobs.eval.judge`).

Layouts understood (field names as in the published files):

* MVBench: ``json/<task>.json``, records ``{video, question, candidates, answer}`` with the answer
  given as the text of one candidate; videos under ``video/`` in per-source folders.
* EgoSchema: lmms-eval's Parquet/JSON copies (``question_idx, video_idx, question, option`` with
  "A. ..." prefixes, ``answer`` as the option index) or the original release (``questions.json``
  with ``q_uid, question, option 0..4`` plus ``subset_answers.json``); videos
  ``videos/<id>.mp4``. Only questions with a public answer are kept.
* MLVU (dev): ``json/<n>_<task>.json``, records ``{video, question, candidates, answer,
  question_type}``; videos ``video/<n>_<task>/<video>``. Files of the open-ended tasks (no
  candidates: sub-scene captioning, summary) are not multiple choice and are left out.
* LongVideoBench: ``lvb_val.json`` (``candidates``) or the Parquet copy (``option0..option4``,
  "N/A" when unused), ``correct_choice`` as an index; videos ``videos/<video_path>``. Records
  without ``correct_choice`` (the test split) are left out.
* VideoMME: ``videomme/test-*.parquet`` (``videoID, question_id, duration, task_type, question,
  options`` with "A. " prefixes, ``answer`` as a letter); videos ``data/<videoID>.mp4``.
* ActivityNet-QA (open-ended): lmms-eval's copy (Parquet/JSON(L) records ``video_name, question,
  answer, question_id, type``; videos ``all_test/v_<video_name>.mp4`` (or .webm/.mkv), where
  lmms-eval's task looks for them) or the original release (``test_q.json`` with ``video_name,
  question_id, question`` plus ``test_a.json`` with ``question_id, answer, type``). The task of
  an item is its question type ("type 0" .. "type 8").

Where the file named in a record is not at the layout's place, it is looked up by its relative
path anywhere under the benchmark directory (downloads are often unpacked one level deeper).
A record whose video is missing is skipped and reported, not fatal: partial downloads are common.
Bad annotations (missing fields, an answer that is not among the options) raise
`AnnotationError`, naming the file and record.
MVBench's per-question segment bounds are not applied: the whole video is sampled, as lmms-eval
does for this benchmark.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCHMARKS: tuple[str, ...] = (
    "mvbench",
    "egoschema",
    "mlvu",
    "longvideobench",
    "videomme",
    "activitynetqa",
)
DISPLAY_NAMES: dict[str, str] = {
    "mvbench": "MVBench",
    "egoschema": "EgoSchema",
    "mlvu": "MLVU",
    "longvideobench": "LongVideoBench",
    "videomme": "VideoMME",
    "activitynetqa": "ActivityNet-QA",
}
# Answered in free text and scored by a judge model (accuracy and a 0-5 score), not by a letter.
OPEN_ENDED: frozenset[str] = frozenset({"activitynetqa"})
# MLVU's headline number (M-Avg) is the mean of its per-task accuracies; the others report the
# accuracy over all questions.
SCORED_AS_TASK_MEAN: frozenset[str] = frozenset({"mlvu"})

LETTERS = string.ascii_uppercase
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov", ".gif")


class AnnotationError(ValueError):
    """An annotation file that does not follow its benchmark's published layout."""


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice question about one video.

    options: the option texts, without letters. published_options: the options exactly as the
    annotation writes them when they carry their own letters ("A. red"; VideoMME, EgoSchema),
    which lmms-eval's prompts print verbatim; empty when the annotation has plain texts.
    """

    benchmark: str
    task: str
    question_id: str
    video: Path
    question: str
    options: tuple[str, ...]
    answer_index: int
    published_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 2 <= len(self.options) <= len(LETTERS):
            raise AnnotationError(f"{self.question_id}: needs 2..26 options, got {self.options}")
        if not 0 <= self.answer_index < len(self.options):
            raise AnnotationError(
                f"{self.question_id}: answer index {self.answer_index} is outside the "
                f"{len(self.options)} options"
            )

        if self.published_options and len(self.published_options) != len(self.options):
            raise AnnotationError(f"{self.question_id}: published options do not match options")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]

    @property
    def reference(self) -> str:
        """The right answer as the predictions record it: its letter."""
        return self.answer_letter


@dataclass(frozen=True)
class OpenEndedItem:
    """One free-text question about one video, with its reference answer."""

    benchmark: str
    task: str
    question_id: str
    video: Path
    question: str
    answer: str

    @property
    def reference(self) -> str:
        return self.answer


Item = MultipleChoiceItem | OpenEndedItem


@dataclass
class Benchmark:
    """The usable questions of one benchmark, and the records skipped (id, reason)."""

    name: str
    root: Path
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES[self.name]

    @property
    def open_ended(self) -> bool:
        return self.name in OPEN_ENDED


# -- reading annotation files ---------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one annotation file (.json list, .jsonl, or .parquet)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise AnnotationError(f"{path}: expected a JSON list of objects")
    return data


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record or record[key] is None:
        raise AnnotationError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise AnnotationError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _text_list(record: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _field(record, key, (list, tuple), where)
    if not all(isinstance(v, str) for v in values):
        raise AnnotationError(f"{where}: field {key!r} must be a list of strings")
    return tuple(values)


def strip_option_letters(options: Iterable[str]) -> tuple[str, ...]:
    """Drop "A. " / "(B) " / "C) " prefixes when every option carries its own letter in order
    (VideoMME and EgoSchema ship them so), leaving the plain option texts."""
    options = list(options)
    stripped = []
    if len(options) > len(LETTERS):
        return tuple(o.strip() for o in options)
    for letter, option in zip(LETTERS, options, strict=False):
        match = re.match(rf"\s*\(?{letter}[.):]\s*(.*)\Z", option, flags=re.DOTALL)
        if match is None:
            return tuple(o.strip() for o in options)
        stripped.append(match.group(1).strip())
    return tuple(stripped)


def _lettered_options(raw: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(plain option texts, the options as published when they carry their own letters)."""
    plain = strip_option_letters(raw)
    return plain, (raw if plain != tuple(o.strip() for o in raw) else ())


def _answer_index_from_text(answer: str, options: tuple[str, ...], where: str) -> int:
    normalised = [o.strip() for o in options]
    if answer.strip() not in normalised:
        raise AnnotationError(f"{where}: answer {answer!r} is not one of the options {options}")
    return normalised.index(answer.strip())


def _answer_index_from_letter(answer: str, options: tuple[str, ...], where: str) -> int:
    letter = answer.strip().strip("().").upper()
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        raise AnnotationError(f"{where}: answer {answer!r} is not an option letter")
    return LETTERS.index(letter)


def _answer_index_from_number(answer: Any, options: tuple[str, ...], where: str) -> int:
    try:
        index = int(str(answer).strip())
    except ValueError:
        raise AnnotationError(f"{where}: answer {answer!r} is not an option index") from None
    if not 0 <= index < len(options):
        raise AnnotationError(f"{where}: answer index {index} outside {len(options)} options")
    return index


# -- finding videos -------------------------------------------------------------------------
class VideoResolver:
    """Finds the video file a record names: first at the layout's places, then by its relative
    path anywhere under the benchmark root (one directory walk, done on first need)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def resolve(self, relative: str, *places: Path) -> Path | None:
        relative = relative.strip().lstrip("/")
        if not relative or ".." in Path(relative).parts:
            return None
        for place in places:
            for candidate in _with_suffix_variants(place / relative):
                if candidate.is_file():
                    return candidate
        return self._search(relative)

    def _search(self, relative: str) -> Path | None:
        if self._by_name is None:
            self._by_name = {}
            for path in self.root.rglob("*"):
                if path.suffix in VIDEO_SUFFIXES and path.is_file():
                    self._by_name.setdefault(path.name, []).append(path)
        for candidate in _with_suffix_variants(Path(relative)):
            rel_parts = candidate.parts
            matches = [
                p
                for p in self._by_name.get(candidate.name, [])
                if p.parts[-len(rel_parts) :] == rel_parts
            ]
            if len(matches) == 1:
                return matches[0]
        return None


def _with_suffix_variants(path: Path) -> Iterator[Path]:
    """The path as named, then with the other video suffixes (ids often come without one)."""
    yield path
    stem = path if path.suffix not in VIDEO_SUFFIXES else path.with_suffix("")
    for suffix in VIDEO_SUFFIXES:
        if stem.with_suffix(suffix) != path:
            yield stem.with_suffix(suffix)


# -- one reader per benchmark -----------------------------------------------------------------
@dataclass(frozen=True)
class _Record:
    """One annotation record with where it came from (for error messages and default ids)."""

    data: dict[str, Any]
    where: str
    group: str  # the file's stem: MVBench's task, MLVU's "<n>_<task>" folder
    position: int


@dataclass(frozen=True)
class _Parsed:
    question_id: str
    task: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    video: str  # as the record names it, relative to the layout's video folder
    published_options: tuple[str, ...] = ()


def _records_of(files: Iterable[Path]) -> Iterator[_Record]:
    for path in files:
        for i, record in enumerate(read_records(path)):
            if not isinstance(record, dict):
                raise AnnotationError(f"{path} record {i}: expected an object")
            yield _Record(record, f"{path} record {i}", path.stem, i)


def _build(
    name: str,
    root: Path,
    records: Iterable[_Record],
    parse: Callable[[_Record], _Parsed | None],
    video_places: Callable[[_Record], tuple[Path, ...]],
    limit: int | None,
) -> Benchmark:
    """Items from records; `parse` returns None for a record that is not a scorable question."""
    bench = Benchmark(name=name, root=root, items=[])
    resolver = VideoResolver(root)
    seen: set[str] = set()
    for record in records:
        if limit is not None and len(bench.items) >= limit:
            break
        parsed = parse(record)
        if parsed is None or parsed.question_id in seen:
            continue
        seen.add(parsed.question_id)
        video = resolver.resolve(parsed.video, *video_places(record))
        if video is None:
            reason = f"video {parsed.video!r} not found under {root}"
            bench.skipped.append((parsed.question_id, reason))
            continue
        bench.items.append(
            MultipleChoiceItem(
                benchmark=name,
                task=parsed.task,
                question_id=parsed.question_id,
                video=video,
                question=parsed.question,
                options=parsed.options,
                answer_index=parsed.answer_index,
                published_options=parsed.published_options,
            )
        )
    if not bench.items and not bench.skipped:
        raise AnnotationError(f"no {DISPLAY_NAMES[name]} questions found under {root}")
    return bench


def _annotation_files(root: Path, patterns: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        files.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    return files


def load_mvbench(root: Path, limit: int | None = None) -> Benchmark:
    files = _annotation_files(root, ["json/*.json"])
    if not files:
        raise AnnotationError(f"MVBench: no json/<task>.json files under {root}")

    def parse(rec: _Record) -> _Parsed:
        d, where = rec.data, rec.where
        options = _text_list(d, "candidates", where)
        return _Parsed(
            question_id=f"{rec.group}/{rec.position}",
            task=rec.group,
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_text(_field(d, "answer", str, where), options, where),
            video=_field(d, "video", str, where),
        )

    return _build("mvbench", root, _records_of(files), parse, lambda r: (root / "video",), limit)


def load_egoschema(root: Path, limit: int | None = None) -> Benchmark:
    questions = root / "questions.json"
    if questions.is_file():
        return _load_egoschema_original(root, questions, limit)
    files = _annotation_files(root, ["**/*.parquet", "**/*.jsonl"])
    if not files:
        raise AnnotationError(f"EgoSchema: no questions.json or Parquet/JSONL files under {root}")

    def parse(rec: _Record) -> _Parsed | None:
        d, where = rec.data, rec.where
        if d.get("answer") is None or str(d["answer"]).strip() == "":
            return None  # the split whose answers are hidden
        options, published = _lettered_options(_text_list(d, "option", where))
        return _Parsed(
            question_id=str(_field(d, "question_idx", (str, int), where)),
            task="egoschema",
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_number(d["answer"], options, where),
            video=_field(d, "video_idx", str, where),
            published_options=published,
        )

    return _build("egoschema", root, _records_of(files), parse, lambda r: (root / "videos",), limit)


def _load_egoschema_original(root: Path, questions: Path, limit: int | None) -> Benchmark:
    answers_file = root / "subset_answers.json"
    if not answers_file.is_file():
        raise AnnotationError(f"EgoSchema: {questions} needs subset_answers.json beside it")
    answers = json.loads(answers_file.read_text(encoding="utf-8"))
    if not isinstance(answers, dict):
        raise AnnotationError(f"{answers_file}: expected an object q_uid -> answer index")

    def parse(rec: _Record) -> _Parsed | None:
        d, where = rec.data, rec.where
        qid = _field(d, "q_uid", str, where)
        if qid not in answers:
            return None  # only the subset's answers are public
        options = tuple(_field(d, f"option {i}", str, where) for i in range(5))
        return _Parsed(
            question_id=qid,
            task="egoschema",
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_number(answers[qid], options, where),
            video=qid,
        )

    records = _records_of([questions])
    return _build("egoschema", root, records, parse, lambda r: (root / "videos",), limit)


def load_mlvu(root: Path, limit: int | None = None) -> Benchmark:
    files = _annotation_files(root, ["json/*.json"])
    if not files:
        raise AnnotationError(f"MLVU: no json/<n>_<task>.json files under {root}")

    def parse(rec: _Record) -> _Parsed | None:
        d, where = rec.data, rec.where
        if "candidates" not in d:
            return None  # an open-ended task (sub-scene captioning, summary)
        options = _text_list(d, "candidates", where)
        return _Parsed(
            question_id=f"{rec.group}/{rec.position}",
            task=str(d.get("question_type") or re.sub(r"^\d+_", "", rec.group)),
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_text(_field(d, "answer", str, where), options, where),
            video=_field(d, "video", str, where),
        )

    places = lambda r: (root / "video" / r.group, root / "video")  # noqa: E731
    return _build("mlvu", root, _records_of(files), parse, places, limit)


def load_longvideobench(root: Path, limit: int | None = None) -> Benchmark:
    files = _annotation_files(root, ["lvb_val.json"]) or _annotation_files(
        root, ["**/validation-*.parquet"]
    )
    if not files:
        raise AnnotationError(f"LongVideoBench: no lvb_val.json or validation Parquet under {root}")

    def parse(rec: _Record) -> _Parsed | None:
        d, where = rec.data, rec.where
        if d.get("correct_choice") is None:
            return None  # the test split ships without answers
        if "candidates" in d:
            options = _text_list(d, "candidates", where)
        else:  # the Parquet copy: option0..option4, "N/A" where a question has fewer
            options = tuple(
                d[f"option{i}"]
                for i in range(5)
                if isinstance(d.get(f"option{i}"), str) and d[f"option{i}"] != "N/A"
            )
        return _Parsed(
            question_id=str(_field(d, "id", (str, int), where)),
            task=str(d.get("question_category") or "all"),
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_number(d["correct_choice"], options, where),
            video=_field(d, "video_path", str, where),
        )

    records = _records_of(files)
    return _build("longvideobench", root, records, parse, lambda r: (root / "videos",), limit)


def load_videomme(root: Path, limit: int | None = None) -> Benchmark:
    files = _annotation_files(root, ["videomme/*.parquet"]) or _annotation_files(
        root, ["**/*.parquet"]
    )
    if not files:
        raise AnnotationError(f"VideoMME: no videomme/test-*.parquet under {root}")

    def parse(rec: _Record) -> _Parsed:
        d, where = rec.data, rec.where
        options, published = _lettered_options(_text_list(d, "options", where))
        return _Parsed(
            question_id=str(_field(d, "question_id", (str, int), where)),
            task=str(d.get("duration") or "all"),
            question=_field(d, "question", str, where),
            options=options,
            answer_index=_answer_index_from_letter(_field(d, "answer", str, where), options, where),
            video=_field(d, "videoID", str, where),
            published_options=published,
        )

    return _build("videomme", root, _records_of(files), parse, lambda r: (root / "data",), limit)


# ActivityNet-QA's videos: where lmms-eval's task looks ("all_test/v_<name>" with one of these
# suffixes), else by name anywhere under the benchmark folder.
_AQA_VIDEO_FOLDER = "all_test"


def load_activitynetqa(root: Path, limit: int | None = None) -> Benchmark:
    questions, answers = root / "test_q.json", root / "test_a.json"
    if questions.is_file():
        if not answers.is_file():
            raise AnnotationError(f"ActivityNet-QA: {questions} needs test_a.json beside it")
        by_id = {}
        for rec in _records_of([answers]):
            qid = str(_field(rec.data, "question_id", (str, int), rec.where))
            by_id[qid] = rec.data
        records: Iterable[_Record] = (
            replace(rec, data={**rec.data, **by_id.get(str(rec.data.get("question_id")), {})})
            for rec in _records_of([questions])
        )
    else:
        files = _annotation_files(root, ["**/*.parquet", "**/*.jsonl", "*.json"])
        # the test split, as lmms-eval's task reads it, when the copy holds other splits too
        files = [f for f in files if "test" in f.name] or files
        if not files:
            raise AnnotationError(
                f"ActivityNet-QA: no test_q.json/test_a.json or Parquet/JSON records under {root}"
            )
        records = _records_of(files)
    bench = Benchmark(name="activitynetqa", root=root, items=[])
    resolver = VideoResolver(root)
    seen: set[str] = set()
    for rec in records:
        if limit is not None and len(bench.items) >= limit:
            break
        d, where = rec.data, rec.where
        qid = str(_field(d, "question_id", (str, int), where))
        if qid in seen:
            continue
        seen.add(qid)
        name = str(_field(d, "video_name", (str, int), where))
        folder = root / _AQA_VIDEO_FOLDER
        video = resolver.resolve(f"v_{name}", folder) or resolver.resolve(name, folder)
        if video is None:
            bench.skipped.append((qid, f"video 'v_{name}' not found under {root}"))
            continue
        answer = _field(d, "answer", (str, int), where)
        kind = d.get("type")
        bench.items.append(
            OpenEndedItem(
                benchmark="activitynetqa",
                task="all" if kind is None else f"type {kind}",
                question_id=qid,
                video=video,
                question=_field(d, "question", str, where),
                answer=str(answer),
            )
        )
    if not bench.items and not bench.skipped:
        raise AnnotationError(f"no ActivityNet-QA questions found under {root}")
    return bench


LOADERS: dict[str, Callable[[Path, int | None], Benchmark]] = {
    "mvbench": load_mvbench,
    "egoschema": load_egoschema,
    "mlvu": load_mlvu,
    "longvideobench": load_longvideobench,
    "videomme": load_videomme,
    "activitynetqa": load_activitynetqa,
}


def load_benchmark(name: str, root: str | Path, limit: int | None = None) -> Benchmark:
    """Read one benchmark directory; `limit` keeps the first questions (a quick smoke run)."""
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; one of {BENCHMARKS}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{DISPLAY_NAMES[name]} directory {root} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return LOADERS[name](root, limit)


def discover_benchmarks(data_root: str | Path) -> dict[str, Path]:
    """The benchmark directories under `data_root`, found by their names (case-insensitive,
    '-' and '_' ignored: ``Video-MME``, ``LongVideoBench``, ``ActivityNet-QA``, ``mvbench`` ...)."""
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise FileNotFoundError(f"benchmark data directory {data_root} does not exist")
    found: dict[str, Path] = {}
    for child in sorted(data_root.iterdir()):
        key = re.sub(r"[-_\s]", "", child.name.lower())
        if child.is_dir() and key in LOADERS:
            found[key] = child
    return found
