"""`tokenreel videos [VIDEO]`: what the catalog holds, for people (a table) and scripts (`--json`).

Without VIDEO: one line per video and token-set key (model, config), most recently updated first,
filtered by `--status` and `--search` (a substring of the id or source URI), paged with
`--limit`/`--offset`. With VIDEO (an id): every status row of that video, with its reason,
attempts, run and token-set file. Tokens in (before compression) come from the video's preview
(`storage.previews`): "-" for videos indexed before previews existed.

Exit status: 0; 1 when VIDEO is unknown; 2 on invalid arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from storage.catalog import VideoRecord, VideoStatus
from storage.command_options import add_store_options, page_offset, page_size

STATUSES = [s.value for s in VideoStatus]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("video", metavar="VIDEO", nargs="?", default=None, help="a video id to inspect")
    add_store_options(parser)
    add(
        "--status",
        choices=STATUSES,
        default=None,
        help="only videos with this status (default: all)",
    )
    add("--search", default=None, help="substring of the video id or source URI (default: none)")
    add("--limit", type=page_size, default=50, help="videos to list")
    add("--offset", type=page_offset, default=0, help="videos to skip (paging)")
    add("--json", action="store_true", help="print JSON (one object; for scripts)")


def run(args: argparse.Namespace) -> int:
    from storage.previews import read_preview_facts
    from storage.store import open_store

    store = open_store(args.store, args.catalog)
    catalog = store.catalog
    if args.video is not None:
        found = catalog.list_videos(search=args.video, limit=10_000)
        records = [r for r in found if r.video_id == args.video]
        if not records:
            print(f"tokenreel videos: video {args.video!r} not found", file=sys.stderr)
            return 1
        total = len(records)
    else:
        records = catalog.list_videos(
            args.status, args.search, limit=args.limit, offset=args.offset
        )
        total = catalog.count_videos(args.status, args.search)
    rows = []
    for record in records:
        facts = None
        if record.location is not None:
            facts = read_preview_facts(
                store.store_url, record.video_id, record.model_id, record.config_hash
            )
        rows.append(video_row(record, None if facts is None else facts.tokens_in))
    if args.json:
        print(json.dumps({"total": total, "offset": args.offset, "videos": rows}, indent=2))
    elif args.video is not None:
        for row in rows:
            print(
                "\n".join(
                    f"{key:>16}: {'-' if value is None else value}" for key, value in row.items()
                )
            )
            print()
    else:
        print(format_table(rows))
        shown = f"{args.offset + 1}-{args.offset + len(rows)}" if rows else "none"
        print(f"{shown} of {total} (--limit/--offset to page)")
    return 0


def video_row(record: VideoRecord, tokens_in: int | None) -> dict[str, Any]:
    """One video under one key, as plain JSON values."""
    location = record.location
    return {
        "video_id": record.video_id,
        "status": record.status.value,
        "reason": record.error,
        "tokens_in": tokens_in,
        "tokens_kept": location.kept_count if location else None,
        "bytes": location.length if location else None,
        "model_id": record.model_id,
        "config_hash": record.config_hash,
        "attempts": record.attempts,
        "run_id": record.run_id,
        "uri": record.uri,
        "token_file": location.file_url if location else None,
        "indexed_at": _time(record.indexed_at),
        "updated_at": _time(record.updated_at),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("VIDEO", "STATUS", "TOKENS IN -> KEPT", "BYTES", "UPDATED", "REASON")
    lines = [header]
    for row in rows:
        tokens = "-"
        if row["tokens_kept"] is not None:
            tokens_in = "?" if row["tokens_in"] is None else str(row["tokens_in"])
            tokens = f"{tokens_in} -> {row['tokens_kept']}"
        lines.append(
            (
                row["video_id"],
                row["status"],
                tokens,
                human_bytes(row["bytes"]),
                (row["updated_at"] or "")[:19].replace("T", " "),
                _clip(row["reason"] or ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    ).rstrip()


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()
