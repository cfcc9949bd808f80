"""Append-only JSON-lines logs that make an evaluation resumable.

A log's first line is its header: the identity of the run it belongs to (what decides its
records: the model, the sweep's rows, the questions, the generation settings; for the judge's
log, the judge) and that identity's hash. Every later line is one record, appended as soon as
it exists (written, flushed and fsynced a batch at a time), so a run that is killed keeps every
answer it finished.

Opening a log for a run:

* no file yet: it is created with the run's header;
* the file's header names the same run: its records are the run's progress, to be skipped;
* another run: `RunMismatch` (a ValueError) names what differs, and nothing is mixed. The
  caller picks another directory, or deletes the file to start over.

A killed writer can leave a last line without its newline: that partial record is dropped (and
cut from the file before anything is appended). A damaged line anywhere else is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LOG_FORMAT = 1


class RunMismatch(ValueError):
    """The log on disk belongs to a run with other settings."""


def identity_hash(identity: Mapping[str, Any]) -> str:
    """The same hash for equal identities on every machine and Python version."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class RunLog:
    """One run's log file (see the module docstring)."""

    def __init__(self, path: str | Path, identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back (tuples as lists)
        self.run = identity_hash(self.identity)

    def open(self) -> list[dict[str, Any]]:
        """The records already in the log (creating it when there is none)."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"tokenreel_eval_log": LOG_FORMAT, "run": self.run, "identity": self.identity}
            self._write([header])
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a killed writer's partial last line
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        lines = complete.decode("utf-8").splitlines()
        if not lines:
            raise ValueError(f"{self.path}: empty log without its header; delete it to start over")
        header = self._parse(lines[0], 1)
        if header.get("tokenreel_eval_log") != LOG_FORMAT or "run" not in header:
            raise ValueError(f"{self.path}: not a tokenreel eval log")
        if header["run"] != self.run:
            raise RunMismatch(
                f"{self.path} holds a run with other settings ({self._differences(header)}); "
                "give another output directory, or delete the file to start over"
            )
        return [self._parse(line, n) for n, line in enumerate(lines[1:], start=2)]

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add records durably (one write, flushed and fsynced)."""
        self._write(records)

    def _write(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} line {number}: damaged record ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{self.path} line {number}: expected a JSON object")
        return record

    def _differences(self, header: Mapping[str, Any]) -> str:
        theirs = header.get("identity")
        if not isinstance(theirs, dict):
            return "unknown settings"
        keys = sorted(set(theirs) | set(self.identity))
        differ = [k for k in keys if theirs.get(k) != self.identity.get(k)]
        return "differs in: " + ", ".join(differ) if differ else "another identity"
