"""Command-line options every command that reads or writes a store spells the same way."""

from __future__ import annotations

import argparse


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """--store and --catalog (None: the environment, else the defaults `storage.open_store`
    applies)."""
    add = parser.add_argument
    add(
        "--store",
        default=None,
        help="store URL (default: env TOKENREEL_STORE_URL, else ./tokenreel-data)",
    )
    add(
        "--catalog",
        default=None,
        help="catalog URL (default: env TOKENREEL_CATALOG_URL, else the store's catalog.sqlite)",
    )


def page_size(text: str) -> int:
    """A --limit: 1 to 10,000 rows."""
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be in [1, 10000], got {value}")
    return value


def page_offset(text: str) -> int:
    """An --offset: rows to skip, >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
