"""The evaluator's append-only logs: a header naming the run, records appended durably, a
killed writer's partial line dropped, another run's log refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.eval.run_log import RunLog, RunMismatch, identity_hash

IDENTITY = {"model": "m", "rows": [{"key": "ours@0.02"}], "questions": "abc"}


def test_records_survive_reopening(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "out" / "p.jsonl", IDENTITY)
    assert log.open() == []
    log.append([{"n": 1}, {"n": 2}])
    log.append([])
    log.append([{"n": 3, "text": "é"}])
    again = RunLog(log.path, dict(reversed(IDENTITY.items())))  # key order does not matter
    assert again.run == log.run == identity_hash(IDENTITY)
    assert again.open() == [{"n": 1}, {"n": 2}, {"n": 3, "text": "é"}]
    header = json.loads(log.path.read_text(encoding="utf-8").splitlines()[0])
    assert header == {"tokenreel_eval_log": 1, "run": log.run, "identity": IDENTITY}


def test_another_run_is_refused_naming_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    RunLog(path, IDENTITY).open()
    before = path.read_bytes()
    with pytest.raises(RunMismatch, match="differs in: model, questions"):
        RunLog(path, {**IDENTITY, "model": "other", "questions": "def"}).open()
    assert path.read_bytes() == before


def test_a_killed_writers_partial_line_is_dropped(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "p.jsonl", IDENTITY)
    log.open()
    log.append([{"n": 1}])
    with log.path.open("a", encoding="utf-8") as f:
        f.write('{"n": 2, "respo')  # killed mid-write
    assert log.open() == [{"n": 1}]
    log.append([{"n": 2}])
    assert log.open() == [{"n": 1}, {"n": 2}]


def test_damaged_or_foreign_files_are_errors(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "p.jsonl", IDENTITY)
    log.open()
    log.append([{"n": 1}])
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], "{broken", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="line 2: damaged record"):
        log.open()
    log.path.write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="not a tokenreel eval log"):
        log.open()
    log.path.write_text("")
    with pytest.raises(ValueError, match="without its header"):
        log.open()
