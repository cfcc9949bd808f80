"""`tokenreel runs`: the most recent indexing runs, their counts and settings.

A run that has not finished shows the live counts of the videos it touched; one stopped by an
error or Ctrl-C shows `interrupted` (what `jobs.index` records), and so does one whose driver was
killed outright (its heartbeat went stale, `storage.catalog`). `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json

from storage.command_options import add_store_options, page_offset, page_size
from storage.run_states import run_row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add_store_options(parser)
    add("--limit", type=page_size, default=20, help="runs to list, newest first")
    add("--offset", type=page_offset, default=0, help="runs to skip (paging)")
    add("--json", action="store_true", help="print JSON with every setting (for scripts)")


def run(args: argparse.Namespace) -> int:
    from storage.store import open_store

    catalog = open_store(args.store, args.catalog).catalog
    runs = [run_row(r) for r in catalog.list_runs(limit=args.limit, offset=args.offset)]
    if args.json:
        print(json.dumps({"runs": runs}, indent=2))
        return 0
    if not runs:
        print("no indexing runs recorded")
        return 0
    header = ("RUN", "STARTED", "STATE", "INDEXED", "FAILED", "MODEL", "SOURCE")
    lines = [header]
    for row in runs:
        counts = row["counts"]
        lines.append(
            (
                row["run_id"][:12],
                row["started_at"][:19].replace("T", " "),
                row["state"],
                str(counts.get("indexed", 0)),
                str(counts.get("failed", 0)),
                str(row["settings"].get("model", "-")),
                str(row["settings"].get("source", "-")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0
